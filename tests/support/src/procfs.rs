//! What a process (a server under test) uses, read from `/proc` (Linux).
//!
//! Boundary: reads `/proc/PID/status`, `/proc/PID/stat`, the process's descriptors
//! and the kernel's TCP socket tables only.

use std::time::Duration;

/// The process's resident memory in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// CPU time the process used so far (user + system).
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (in parentheses): state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Samples the process's resident memory every `every` until it stops growing (by
/// more than 2 MiB between samples) or `within` passes; returns the peak seen.
pub async fn settled_rss(pid: u32, every: Duration, within: Duration) -> u64 {
    let mut peak = rss(pid);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        tokio::time::sleep(every).await;
        let now = rss(pid);
        let grew = now > peak + (2 << 20);
        peak = peak.max(now);
        if !grew || tokio::time::Instant::now() > deadline {
            return peak;
        }
    }
}

/// The TCP ports the process listens on (IPv4 and IPv6), sorted.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    // The process's sockets, by inode.
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st field 3 (0A: LISTEN),
            // inode field 9.
            if fields.len() > 9
                && fields[3] == "0A"
                && inodes.iter().any(|i| i == fields[9])
                && let Some(port) = fields[1].rsplit(':').next()
            {
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}
