//! `configwatch health`: one HTTP/1.1 GET of a running server's `/healthz` (or
//! `/readyz` with `--ready`) on its admin listener, for a container's health check
//! (`HEALTHCHECK`, an ECS task's `healthCheck`), where no curl may exist.
//!
//! Exit 0 on a 200, 1 on anything else with one line on stderr saying what came back
//! (a status and the first line of its body, a refused connection, no answer in
//! time), 64 when `--admin` is not an address. Boundary: knows the admin routes'
//! paths and HTTP; nothing of what the server checks to answer them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Failure, HealthArgs};

/// How long a check may take unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer's body read (for the first line of a refusal).
const BODY_LIMIT: usize = 64 * 1024;
/// The most of that first line repeated on stderr.
const REASON_CHARS: usize = 200;

/// Checks the server and returns `Ok` when it answered 200.
pub async fn run_health(args: HealthArgs) -> Result<(), Failure> {
    let addr = target(&args.admin)?;
    let timeout: Duration = args.timeout.into();
    if timeout.is_zero() {
        return Err(Failure::usage("--timeout must be more than 0"));
    }
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let url = format!("http://{addr}{path}");
    match tokio::time::timeout(timeout, get(addr, path)).await {
        Err(_) => Err(Failure::error(format!(
            "{url}: no answer within {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Err(e)) => Err(Failure::error(format!("{url}: {e}"))),
        Ok(Ok((200, _))) => Ok(()),
        Ok(Ok((status, body))) => {
            let reason: String = body
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(REASON_CHARS)
                .collect();
            Err(Failure::error(format!("{url}: {status} {reason}")))
        }
    }
}

/// The address to connect to: `--admin` parsed, an unspecified host replaced by the
/// loopback address of its family (a server listening on 0.0.0.0 answers there).
fn target(admin: &str) -> Result<SocketAddr, Failure> {
    let value = admin.trim();
    if value.is_empty() {
        return Err(Failure::usage(
            "--admin is empty (the server's admin listener is off): nothing to check",
        ));
    }
    let mut addr: SocketAddr = value.parse().map_err(|_| {
        Failure::usage(format!(
            "--admin '{value}' is not an address such as 127.0.0.1:9090"
        ))
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// The status and body (at most [`BODY_LIMIT`] bytes, as text) of `GET path`.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven until the answer has been read; this task ends with
    // it (the server closes, or the process exits).
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no HTTP answer: {e}"))?;
    let status = answer.status().as_u16();
    let body = Limited::new(answer.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_host_is_reached_on_loopback() {
        let a = |s: &str| target(s).map_err(|f| f.message);
        assert_eq!(a("0.0.0.0:9090"), Ok("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(a("[::]:9090"), Ok("[::1]:9090".parse().unwrap()));
        assert_eq!(a("10.1.2.3:9090"), Ok("10.1.2.3:9090".parse().unwrap()));
    }

    #[test]
    fn an_empty_or_bad_address_is_bad_usage() {
        for bad in ["", " ", "localhost", "127.0.0.1"] {
            let failure = target(bad).unwrap_err();
            assert_eq!(failure.code, crate::cli::EXIT_USAGE, "{bad:?}");
        }
    }
}
