//! Plain HTTP/1.1 requests: GET for the server's admin listener (`/healthz`,
//! `/readyz`, `/metrics`), and any method with headers and a body for emulators
//! reached without an SDK (moto's S3 and its state). One request per connection, the
//! whole answer read until the server closes it. Knows HTTP framing only as far as
//! the status line and the blank line before the body; nothing of what the routes
//! mean.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take in all.
const DEADLINE: Duration = Duration::from_secs(10);

/// An answer: its status code and its body as text.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr`; panics (failing the test) when there is no HTTP answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http_request(addr, "GET", path, &[], "").await
}

/// `method path` on `addr` with `headers` (name, value) and `body`; panics (failing
/// the test) when there is no HTTP answer.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    let request = try_request(addr, method, path, headers, body);
    match tokio::time::timeout(DEADLINE, request).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("{method} http://{addr}{path}: {e}"),
        Err(_) => panic!("{method} http://{addr}{path}: no answer within {DEADLINE:?}"),
    }
}

async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpAnswer, String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    socket
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(HttpAnswer {
        status,
        body: body.to_owned(),
    })
}
