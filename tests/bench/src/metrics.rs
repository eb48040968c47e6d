//! Reads a server's Prometheus metrics: one plain HTTP/1.0 GET (no chunked body) of `/metrics` on its
//! admin listener, and the value of a sample by name. Knows the text format, not
//! what any metric means.

use std::net::SocketAddr;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

/// The metrics text a server's admin listener serves now.
pub async fn scrape(admin: SocketAddr) -> Result<String> {
    // A blocking exchange of a few kilobytes, off the runtime's workers.
    tokio::task::spawn_blocking(move || scrape_blocking(admin)).await?
}

fn scrape_blocking(admin: SocketAddr) -> Result<String> {
    let mut conn = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n");
    conn.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    let reply = String::from_utf8(reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP reply from {admin}"))?;
    if head.split(' ').nth(1) != Some("200") {
        bail!("/metrics on {admin}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// The sum of the samples named exactly `name` (any labels), if there is one.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_by_exact_name() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total{mode=\"full\"} 2\n\
                    a_total{mode=\"diff\"} 3\na_total_more 9\nb 1.5\n";
        assert_eq!(sample(text, "a_total"), Some(5.0));
        assert_eq!(sample(text, "b"), Some(1.5));
        assert_eq!(sample(text, "a"), None);
        assert_eq!(sample(text, "c"), None);
    }
}
