//! The admin HTTP listener, beside the gRPC port: `/healthz` (the process runs),
//! `/readyz` (the server's readiness, the same function gRPC health follows) and
//! `/metrics` (the Prometheus text format). Plain HTTP/1.1 on hyper, bounded: a few
//! connections at once (a new one beyond closes the oldest), small requests, a deadline per
//! connection, and no keep-alive.
//!
//! Takes an already-bound listener and a shutdown token, and later the readiness
//! and the metrics registry of the started server; knows nothing of what the
//! metrics count or what readiness reads.

pub mod family;
pub mod fresh;
mod routes;
pub mod scalar;
mod slots;
pub mod sources;
mod text;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Readiness;
use slots::Slots;

/// The admin address unless configured (an empty value turns the listener off).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Admin connections open at once; a new one beyond closes the oldest (`slots`).
const MAX_CONNECTIONS: usize = 16;
/// Time a connection has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes a connection's read buffer may hold (hyper's minimum): bounds the request.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Pause after a failed accept (such as descriptor exhaustion) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the routes answer from. The listener opens before the server has reached
/// its stores (with `--backend aws` it waits for the table to answer), so that
/// `/healthz` answers while it waits; until [`Admin::started`] is given what the
/// started server reads, `/readyz` and `/metrics` say it is starting.
#[derive(Default)]
pub struct Admin {
    started: OnceLock<Started>,
}

/// What a started server's admin routes read.
pub struct Started {
    pub readiness: Readiness,
    pub registry: Registry,
}

impl Admin {
    /// Answers `/readyz` and `/metrics` from `started` from now on (the first call
    /// only; a server starts once).
    pub fn started(&self, started: Started) {
        let _ = self.started.set(started);
    }

    fn get(&self) -> Option<&Started> {
        self.started.get()
    }
}

/// Serves the admin routes on `listener` until `stop`.
pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let slots = Slots::new(MAX_CONNECTIONS);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener cannot accept");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
            () = stop.cancelled() => return,
        };
        let slot = slots.take(&stop);
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(routes::answer(&admin, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
                () = slot.token.cancelled() => {}
            }
        });
    }
}
