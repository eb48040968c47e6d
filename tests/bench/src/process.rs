//! The server processes under test: start one with a temporary data directory, read
//! its memory and CPU from /proc, stop it with SIGTERM and start it again the same
//! way. Knows nothing of what the process serves: a peer says how to start it and
//! when it is ready.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How to start a server, kept so it can be started again the same way.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Its stdout is read (to learn when it is ready) and its stderr shown; otherwise
    /// both are discarded.
    pub talks: bool,
    /// Added to the error when the program cannot be started.
    pub missing_hint: &'static str,
}

/// A running server process with its temporary data directory, removed on drop.
pub struct Process {
    child: Child,
    launch: Launch,
    dir: PathBuf,
}

impl Process {
    /// Starts `launch`, which owns `dir` from now on.
    pub fn start(launch: Launch, dir: PathBuf) -> Result<Process> {
        let child = spawn(&launch)?;
        Ok(Process { child, launch, dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's stdout, once (when it `talks`).
    pub fn take_stdout(&mut self) -> Result<ChildStdout> {
        self.child.stdout.take().ok_or_else(|| anyhow!("no stdout"))
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of /proc/PID/stat (1-based).
        let total = ticks(11) + ticks(12);
        Duration::from_millis(total * 1000 / clock_ticks())
    }

    /// CPU time on a CPU so far, in nanoseconds: the sum over the process's threads
    /// now alive of the scheduler's run time (`/proc/PID/task/*/schedstat`). Finer
    /// than [`Process::cpu`]'s 10 ms ticks, for costs of a fraction of a millisecond;
    /// a thread that exits between two readings takes its time with it.
    pub fn cpu_fine(&self) -> Duration {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()));
        let ns: u64 = tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(ns)
    }

    /// Stops the server with SIGTERM (as a deploy does) and waits for it to exit.
    pub async fn terminate(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Starts the stopped server again: same program, arguments and data directory.
    pub fn start_again(&mut self) -> Result<()> {
        self.child = spawn(&self.launch)?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(launch: &Launch) -> Result<Child> {
    let (stdout, stderr) = if launch.talks {
        (Stdio::piped(), Stdio::inherit())
    } else {
        (Stdio::null(), Stdio::null())
    };
    Command::new(&launch.program)
        .args(&launch.args)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} ({})",
                launch.program.display(),
                launch.missing_hint
            )
        })
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A new, empty directory for one server's data.
pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "configwatch-bench-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `N` free addresses on 127.0.0.1, on different ports: each is held until all are
/// found (a port freed at once may be handed out again by the next bind).
pub fn free_ports<const N: usize>() -> Result<[SocketAddr; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut out = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (slot, listener) in out.iter_mut().zip(&held) {
        *slot = listener.local_addr()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_picked_together_differ() -> Result<()> {
        for _ in 0..20 {
            let [a, b, c] = free_ports()?;
            assert!(a.port() != b.port() && b.port() != c.port() && a.port() != c.port());
            assert!(a.ip().is_loopback());
        }
        Ok(())
    }
}
