//! The server's own accept loop: bounds what sockets can cost (the connection cap,
//! the handshake timeout, backoff when the process runs out of descriptors) and
//! hands each connection that has sent the HTTP/2 preface to tonic as a [`Conn`].
//! Knows sockets and the connection limits; nothing of gRPC services.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ConnectionLimits;
use crate::api::ConnInfo;
use crate::api::budget::ConnectionReplies;

/// Idle time after which TCP probes a peer that may have vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The HTTP/2 client preface, which every gRPC connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Time without a resource error after which an episode of them is over.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

/// Longest pause between accept attempts while the process is out of descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until `stop`, and hands each to the server once it has sent
/// the HTTP/2 preface.
///
/// - A socket that has not sent the preface within the handshake timeout is
///   closed. At most [`ConnectionLimits::max_handshakes`] sockets wait for theirs:
///   a new socket beyond that closes the one waiting longest, so a flood of silent
///   sockets cannot keep a client that speaks at once from getting in.
/// - Beyond `max_connections` established connections, a new one is closed as soon
///   as its preface arrives, so the clients already connected stay served.
/// - Accept errors that mean the process or the kernel is out of something
///   (descriptors, buffers, memory) pause accepting, with a backoff up to
///   `MAX_ACCEPT_BACKOFF`, and are logged once per episode.
pub async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    ready: mpsc::Sender<Conn>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let max_handshakes = limits.max_handshakes();
    let mut handshaking: std::collections::VecDeque<CancellationToken> =
        std::collections::VecDeque::with_capacity(max_handshakes);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut backoff = configwatch_client::Retry::new(configwatch_client::Backoff::doubling(
        Duration::from_millis(5),
        MAX_ACCEPT_BACKOFF,
    ));
    // The current episode of resource errors: how many, and when the last was.
    let mut errors: u64 = 0;
    let mut last_error = tokio::time::Instant::now();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_exhaustion(&e) => {
                if errors == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot accept connections: out of resources (raise the open-file limit, or lower --max-connections); pausing accepts"
                    );
                }
                errors += 1;
                last_error = tokio::time::Instant::now();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.failed()) => {}
                }
                continue;
            }
            // The peer went away before the accept (ECONNABORTED and the like).
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        // An episode ends after a quiet period: at the limit, accepts succeed and
        // fail in turn, and that is one episode, not one per error.
        if errors > 0 && last_error.elapsed() >= EPISODE_QUIET {
            tracing::info!(errors, "accepting connections again");
            errors = 0;
        }
        backoff.succeeded();
        // Without TCP_NODELAY, every message larger than a segment waits ~40 ms for
        // a delayed ACK. Keepalive finds peers that vanished without a FIN.
        let _ = socket.set_nodelay(true);
        let _ = socket2::SockRef::from(&socket)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        // Tokens of finished handshakes stay in the queue until pushed out;
        // cancelling those does nothing. Every handshake still waiting is among the
        // last `max_handshakes` queued.
        if handshaking.len() == max_handshakes
            && let Some(oldest) = handshaking.pop_front()
        {
            oldest.cancel();
        }
        let evicted = stop.child_token();
        handshaking.push_back(evicted.clone());
        tokio::spawn(handshake(
            socket,
            peer,
            limits.clone(),
            slots.clone(),
            refused.clone(),
            ready.clone(),
            evicted,
        ));
    }
}

/// Waits for a socket's HTTP/2 preface and hands it to the server, or closes it.
async fn handshake(
    mut socket: TcpStream,
    peer: std::net::SocketAddr,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    ready: mpsc::Sender<Conn>,
    evicted: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let timeout = limits.handshake_timeout;
    let mut got = [0u8; PREFACE.len()];
    let read = tokio::select! {
        () = evicted.cancelled() => return,
        read = tokio::time::timeout(timeout, socket.read_exact(&mut got)) => read,
    };
    match read {
        Ok(Ok(_)) if &got == PREFACE => {}
        Ok(Ok(_)) => {
            tracing::debug!(%peer, "closed: not an HTTP/2 connection");
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "closed: no HTTP/2 preface in time");
            return;
        }
    }
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        if refused.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                max = limits.max_connections,
                %peer,
                "connection limit reached: closing new connections until some end (see --max-connections)"
            );
        }
        return;
    };
    // One line when refusing ends, once a tenth of the connections are free again.
    if slots.available_permits() > limits.max_connections / 10 {
        let was_refusing = refused.swap(0, Relaxed);
        if was_refusing > 0 {
            tracing::info!(refused = was_refusing, "below the connection limit again");
        }
    }
    let conn = Conn {
        socket,
        replay: 0,
        peer,
        ends_at: limits
            .max_age
            .map(|max| max.ends_at(tokio::time::Instant::now())),
        replies: ConnectionReplies::new(limits.reply_bytes_per_connection),
        _slot: slot,
    };
    let _ = ready.send(conn).await;
}

/// Accept errors after which accepting again at once would fail the same way.
fn is_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
        || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// An accepted connection that has sent the HTTP/2 preface. It hands the preface
/// (already read) to the server before the rest of the socket, and holds a slot of
/// the connection limit until the server drops it.
pub struct Conn {
    socket: TcpStream,
    /// Bytes of [`PREFACE`] already handed on.
    replay: usize,
    peer: std::net::SocketAddr,
    replies: ConnectionReplies,
    /// When its Watch streams end (maximum age and grace), if there is a maximum age.
    ends_at: Option<tokio::time::Instant>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            tcp: TcpConnectInfo {
                local_addr: self.socket.local_addr().ok(),
                remote_addr: Some(self.peer),
            },
            replies: self.replies.clone(),
            ends_at: self.ends_at,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.replay < PREFACE.len() {
            let rest = &PREFACE[self.replay..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replay += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}
