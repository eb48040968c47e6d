//! A budget of reply bytes in flight: what Get replies a client has not read yet
//! may hold of the server's memory, per connection and in total.
//!
//! Without it, a reply nobody reads stays whole in the HTTP/2 layer's send buffer:
//! 100 unread Gets of a large tenant on one connection held gigabytes. Now a Get
//! reserves its encoded size before it answers (waiting while its own connection
//! is over budget; refused with RESOURCE_EXHAUSTED when the server as a whole is),
//! the reply is handed to the HTTP/2 layer in 16 KiB pieces as the client's flow
//! control allows (so only a piece waits there, not the reply), and the reservation
//! ends when the last piece is handed on. A reply not drained within the drain
//! time is dropped, its stream reset and its bytes given back.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Largest piece of a reply handed to the HTTP/2 layer at once.
const PIECE: usize = 16 * 1024;

/// How long a Get waits for the server-wide budget before it is refused.
const TOTAL_WAIT: Duration = Duration::from_secs(5);

/// One connection's share of the budget (in the connection's request extensions).
#[derive(Clone, Debug)]
pub struct ConnectionReplies {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

impl ConnectionReplies {
    pub fn new(bytes: usize) -> Self {
        let capacity = bytes.max(1);
        ConnectionReplies {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }
}

/// The server-wide budget.
#[derive(Clone, Debug)]
pub struct ReplyBudget {
    total: Arc<Semaphore>,
    total_bytes: usize,
    drain: Duration,
}

/// A reservation for one reply, carried from the handler to the body in the
/// response's extensions.
#[derive(Clone)]
pub struct ReplyHold(Arc<Mutex<Option<Held>>>);

struct Held {
    _own: Option<OwnedSemaphorePermit>,
    _total: OwnedSemaphorePermit,
    drain: Duration,
}

impl ReplyBudget {
    pub fn new(total_bytes: usize, drain: Duration) -> Self {
        let total_bytes = total_bytes.max(1);
        ReplyBudget {
            total: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
            drain,
        }
    }

    /// Reserves up to `bytes` for a reply on `connection` (none: only the total),
    /// before the reply is built, so a call that waits holds nothing yet. A
    /// reservation larger than a whole budget takes all of it (and goes alone).
    pub async fn reserve(
        &self,
        bytes: usize,
        connection: Option<&ConnectionReplies>,
    ) -> Result<ReplyHold, Status> {
        let own = match connection {
            Some(c) => Some(
                c.bytes
                    .clone()
                    .acquire_many_owned(clamp(bytes, c.capacity))
                    .await
                    .map_err(|_| Status::unavailable("the server is shutting down"))?,
            ),
            None => None,
        };
        let n = clamp(bytes, self.total_bytes);
        let total = tokio::time::timeout(TOTAL_WAIT, self.total.clone().acquire_many_owned(n))
            .await
            .map_err(|_| {
                Status::resource_exhausted(
                    "the server holds too many replies that clients have not read; retry with backoff",
                )
            })?
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        Ok(ReplyHold(Arc::new(Mutex::new(Some(Held {
            _own: own,
            _total: total,
            drain: self.drain,
        })))))
    }
}

impl ReplyHold {
    /// Gives back what the reply, now built at `bytes`, does not need.
    pub fn shrink_to(&self, bytes: usize) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.as_mut() {
            for permit in [h._own.as_mut(), Some(&mut h._total)].into_iter().flatten() {
                let extra = permit.num_permits().saturating_sub(bytes.max(1));
                drop(permit.split(extra));
            }
        }
    }
}

fn clamp(bytes: usize, most: usize) -> u32 {
    u32::try_from(bytes.clamp(1, most.max(1))).unwrap_or(u32::MAX)
}

/// A reply body handed on in pieces, holding its reservation until the last piece
/// is handed on (or the drain time is over, which resets the stream).
pub struct Metered<B> {
    inner: B,
    rest: Bytes,
    state: Arc<Mutex<MeterState>>,
    stop_timer: CancellationToken,
}

struct MeterState {
    hold: Option<Held>,
    expired: bool,
}

impl<B> Metered<B> {
    /// Wraps `inner`, taking the reservation out of `hold`.
    pub fn new(inner: B, hold: ReplyHold) -> Self {
        let held = hold.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let drain = held.as_ref().map(|h| h.drain);
        let state = Arc::new(Mutex::new(MeterState {
            hold: held,
            expired: false,
        }));
        let stop_timer = CancellationToken::new();
        if let Some(drain) = drain {
            let (state, stop) = (state.clone(), stop_timer.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(drain) => {
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        if s.hold.take().is_some() {
                            s.expired = true;
                        }
                    }
                }
            });
        }
        Metered {
            inner,
            rest: Bytes::new(),
            state,
            stop_timer,
        }
    }

    fn release(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).hold = None;
        self.stop_timer.cancel();
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B> http_body::Body for Metered<B>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.state.lock().unwrap_or_else(|p| p.into_inner()).expired {
                self.rest = Bytes::new();
                return Poll::Ready(Some(Err(Status::deadline_exceeded(
                    "the reply was not read in time",
                ))));
            }
            if !self.rest.is_empty() {
                let n = self.rest.len().min(PIECE);
                let piece = self.rest.split_to(n);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.rest = data,
                    Err(other) => {
                        // Trailers: every byte of the reply was handed on.
                        self.release();
                        return Poll::Ready(Some(Ok(other)));
                    }
                },
                Poll::Ready(None) => {
                    self.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }
}
