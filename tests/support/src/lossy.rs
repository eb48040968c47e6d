//! A TCP proxy that makes a path slow and unreliable the way a bad network looks to
//! TCP's users, for tests where the kernel has no `netem`.
//!
//! The model. A TCP stream cannot lose bytes: a lost segment is retransmitted, so
//! what the application sees is a delay, and, on a path bad enough, a connection
//! that dies. So, per connection and per direction:
//! - every chunk read is written out `delay` after it was read (a fixed one-way
//!   latency; the pipe keeps reading meanwhile, so throughput is not limited by it);
//! - with probability `stall_probability` a chunk is "lost" and waits `stall` more
//!   (a retransmission timeout), and, like TCP, everything after it waits behind it
//!   (head-of-line blocking);
//! - every connection is reset (RST both ways) at random instants, `reset_rate`
//!   times per second on average (exponentially distributed gaps): what a client
//!   sees when a middlebox or a peer gives up on a path that lost too much.
//!
//! Chunks are whatever one read returned (at most 16 KiB). At most 64 chunks per
//! direction are in flight; beyond that the proxy stops reading, so the sender's
//! window fills as it would behind a slow link. The decisions come from a seeded
//! generator (`Lossy::seed`): the same seed gives the same sequence of decisions,
//! though not the same timing.
//!
//! It listens on any address it is given: on the host end of a veth link
//! ([`crate::netns::Link::host_addr`]) it carries traffic between two network
//! namespaces. The plain cuttable proxy is [`crate::proxy::CutProxy`].
//!
//! Boundary: plain TCP; knows nothing of what flows through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction before the proxy stops reading.
const IN_FLIGHT: usize = 64;

/// How a [`LossyProxy`] degrades the path (see the module's comment for the model).
#[derive(Debug, Clone, Copy)]
pub struct Lossy {
    /// One-way latency added to every chunk, each direction.
    pub delay: Duration,
    /// Probability that a chunk is held `stall` longer (with what follows it).
    pub stall_probability: f64,
    /// How long a "lost" chunk is held: a retransmission timeout.
    pub stall: Duration,
    /// Resets per connection per second, on average (0: never).
    pub reset_rate: f64,
    /// Seed of the generator that makes the decisions.
    pub seed: u64,
}

impl Default for Lossy {
    /// A clean path: no delay, no stalls, no resets.
    fn default() -> Self {
        Lossy {
            delay: Duration::ZERO,
            stall_probability: 0.0,
            stall: Duration::from_millis(200),
            reset_rate: 0.0,
            seed: 0,
        }
    }
}

/// What a proxy did, for a test to show the path really was bad.
#[derive(Debug, Default)]
pub struct LossyStats {
    pub connections: AtomicU64,
    pub chunks: AtomicU64,
    pub stalls: AtomicU64,
    pub resets: AtomicU64,
}

impl std::fmt::Display for LossyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} connections, {} chunks, {} stalled, {} reset",
            n(&self.connections),
            n(&self.chunks),
            n(&self.stalls),
            n(&self.resets)
        )
    }
}

/// A proxy to one upstream address with a [`Lossy`] path; stops (and drops what it
/// carries) when dropped.
pub struct LossyProxy {
    pub addr: SocketAddr,
    stats: Arc<LossyStats>,
    accept: JoinHandle<()>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl LossyProxy {
    /// Listens on `listen` (port 0: a free one) and forwards each connection to
    /// `upstream` through a `lossy` path.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, lossy: Lossy) -> LossyProxy {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("a proxy listener on {listen}: {e}"));
        let addr = listener.local_addr().expect("the proxy's address");
        let stats = Arc::new(LossyStats::default());
        let counted = stats.clone();
        let accept = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(lossy.seed);
            // Connections are tracked here so that dropping the proxy ends them.
            let mut carried = tokio::task::JoinSet::new();
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    Some(_) = carried.join_next(), if !carried.is_empty() => continue,
                };
                counted.connections.fetch_add(1, Ordering::Relaxed);
                let seed = rng.random();
                carried.spawn(carry(client, upstream, lossy, seed, counted.clone()));
            }
        });
        LossyProxy {
            addr,
            stats,
            accept,
        }
    }

    /// The proxy as an `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> &LossyStats {
        &self.stats
    }
}

/// Carries one connection until both sides have closed it, either fails, or its
/// reset comes (then both sides get an RST).
async fn carry(
    mut client: TcpStream,
    upstream: SocketAddr,
    lossy: Lossy,
    seed: u64,
    stats: Arc<LossyStats>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rng = StdRng::seed_from_u64(seed);
    let reset_in = next_reset(&mut rng, lossy.reset_rate);
    let (up_seed, down_seed) = (rng.random(), rng.random());
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pipe(client_read, server_write, lossy, up_seed, &stats);
        let down = pipe(server_read, client_write, lossy, down_seed, &stats);
        let reset = async {
            match reset_in {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(up, down, reset);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                carried = &mut up, if !up_done => match carried {
                    Some(()) => up_done = true,
                    None => break End::Failed,
                },
                carried = &mut down, if !down_done => match carried {
                    Some(()) => down_done = true,
                    None => break End::Failed,
                },
                _ = &mut reset => break End::Reset,
            }
            if up_done && down_done {
                break End::Closed;
            }
        }
    };
    if end == End::Reset {
        stats.resets.fetch_add(1, Ordering::Relaxed);
    }
    if end != End::Closed {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// How a carried connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both sides closed it.
    Closed,
    /// A read or write failed (a side went away).
    Failed,
    /// The model's reset.
    Reset,
}

/// When the next reset comes: exponentially distributed with `rate` per second.
fn next_reset(rng: &mut StdRng, rate: f64) -> Option<Duration> {
    if rate <= 0.0 {
        return None;
    }
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    Some(Duration::from_secs_f64(-u.ln() / rate))
}

/// One direction: reads chunks, stamps each with when it may leave (never before
/// the one ahead of it), and writes them at that time. Ends when the reader closes
/// (the close is passed on as a FIN) or either side fails (`None`).
async fn pipe(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    lossy: Lossy,
    seed: u64,
    stats: &LossyStats,
) -> Option<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last = Instant::now();
        loop {
            let mut buf = vec![0; CHUNK];
            let n = from.read(&mut buf).await.ok()?;
            if n == 0 {
                return Some(());
            }
            buf.truncate(n);
            let mut due = Instant::now() + lossy.delay;
            if lossy.stall_probability > 0.0 && rng.random_bool(lossy.stall_probability.min(1.0)) {
                due += lossy.stall;
                stats.stalls.fetch_add(1, Ordering::Relaxed);
            }
            stats.chunks.fetch_add(1, Ordering::Relaxed);
            last = last.max(due);
            tx.send((last, buf)).await.ok()?;
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await.ok()?;
        }
        to.shutdown().await.ok()
    };
    tokio::pin!(read, write);
    // The writer drains what was read before the reader ended (the channel closes
    // when it does); a failed write ends the direction at once.
    let mut read_ended = None;
    loop {
        tokio::select! {
            ended = &mut read, if read_ended.is_none() => read_ended = Some(ended),
            written = &mut write => return written.and(read_ended.flatten()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        started.elapsed()
    }

    #[tokio::test]
    async fn each_direction_is_delayed_and_a_lost_chunk_waits_a_retransmission_timeout() {
        let upstream = echo().await;
        let delay = Duration::from_millis(40);
        let clean = Lossy {
            delay,
            ..Lossy::default()
        };
        let proxy = LossyProxy::start("127.0.0.1:0".parse().unwrap(), upstream, clean).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let rtt = round_trip(&mut stream).await;
        assert!(rtt >= 2 * delay, "a round trip took {rtt:?}");

        let lossy = Lossy {
            delay,
            stall_probability: 1.0,
            stall: Duration::from_millis(150),
            ..Lossy::default()
        };
        let proxy = LossyProxy::start("127.0.0.1:0".parse().unwrap(), upstream, lossy).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let rtt = round_trip(&mut stream).await;
        assert!(
            rtt >= 2 * (delay + lossy.stall),
            "a round trip took {rtt:?}"
        );
        assert_eq!(proxy.stats().stalls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn connections_are_reset_at_random_and_new_ones_are_still_taken() {
        let upstream = echo().await;
        let lossy = Lossy {
            reset_rate: 20.0,
            seed: 7,
            ..Lossy::default()
        };
        let proxy = LossyProxy::start("127.0.0.1:0".parse().unwrap(), upstream, lossy).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = [0; 16];
        // The reset comes within a few expected gaps (50 ms each); a reset reads as
        // an error (or, read after it, as a closed stream), never as a hang.
        let ended = tokio::time::timeout(crate::PATIENCE, stream.read(&mut buf)).await;
        match ended {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("the connection was not reset: {other:?}"),
        }
        assert_eq!(proxy.stats().resets.load(Ordering::Relaxed), 1);
        // The proxy still takes connections (each with its own reset to come).
        let _again = TcpStream::connect(proxy.addr).await.unwrap();
        crate::wait_for(
            crate::PATIENCE,
            || "a second connection".into(),
            || proxy.stats().connections.load(Ordering::Relaxed) == 2,
        )
        .await;
    }
}
