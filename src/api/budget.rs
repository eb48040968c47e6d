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
    state: Arc<Mutex<MeterState>>,
    stop_timer: CancellationToken,
}

/// Shared with the drain timer, which drops what is left of the reply.
struct MeterState {
    /// What the HTTP/2 layer has not taken yet.
    rest: Bytes,
    hold: Option<Held>,
    expired: bool,
}

impl<B> Metered<B> {
    /// Wraps `inner`, taking the reservation out of `hold`.
    pub fn new(inner: B, hold: ReplyHold) -> Self {
        let held = hold.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let drain = held.as_ref().map(|h| h.drain);
        let state = Arc::new(Mutex::new(MeterState {
            rest: Bytes::new(),
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
                            s.rest = Bytes::new();
                        }
                    }
                }
            });
        }
        Metered {
            inner,
            state,
            stop_timer,
        }
    }

    fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.hold = None;
        s.rest = Bytes::new();
        drop(s);
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
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.expired {
                    return Poll::Ready(Some(Err(Status::deadline_exceeded(
                        "the reply was not read in time",
                    ))));
                }
                if !s.rest.is_empty() {
                    let n = s.rest.len().min(PIECE);
                    let piece = s.rest.split_to(n);
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).rest = data;
                    }
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
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !s.expired && s.rest.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A body of one data frame and no trailers.
    fn body(len: usize) -> http_body_util::Full<Bytes> {
        http_body_util::Full::new(Bytes::from(vec![7u8; len]))
    }

    struct Plain(http_body_util::Full<Bytes>);

    impl http_body::Body for Plain {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Pin::new(&mut self.0)
                .poll_frame(cx)
                .map_err(|never| match never {})
        }
    }

    #[tokio::test]
    async fn a_reply_is_handed_on_in_pieces_and_gives_its_room_back_when_done() -> Result<(), Status>
    {
        let budget = ReplyBudget::new(1 << 20, Duration::from_secs(30));
        let conn = ConnectionReplies::new(256 << 10);
        let hold = budget.reserve(200_000, Some(&conn)).await?;
        hold.shrink_to(100_000);
        assert_eq!(conn.bytes.available_permits(), (256 << 10) - 100_000);
        let mut metered = Metered::new(Plain(body(100_000)), hold);
        let mut pieces = 0;
        let mut total = 0;
        while let Some(frame) = metered.frame().await {
            let data = frame?
                .into_data()
                .map_err(|_| Status::internal("trailers"))?;
            assert!(data.len() <= PIECE);
            pieces += 1;
            total += data.len();
        }
        assert_eq!((total, pieces), (100_000, 7));
        assert_eq!(conn.bytes.available_permits(), 256 << 10);
        assert_eq!(budget.total.available_permits(), 1 << 20);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_not_read_in_time_is_dropped_and_its_room_given_back() -> Result<(), Status> {
        let budget = ReplyBudget::new(1 << 20, Duration::from_secs(30));
        let conn = ConnectionReplies::new(256 << 10);
        let hold = budget.reserve(100_000, Some(&conn)).await?;
        let mut metered = Metered::new(Plain(body(100_000)), hold);
        // The client takes one piece, then nothing.
        let first = metered.frame().await;
        assert!(first.is_some_and(|f| f.is_ok()));
        // A second reply on the connection must wait while the first holds its room.
        let waiting = budget.reserve(200_000, Some(&conn));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        let second = tokio::time::timeout(Duration::from_secs(1), &mut waiting).await;
        assert!(second.is_ok_and(|r| r.is_ok()), "room given back");
        // And the bytes with it, without the client polling.
        assert!(metered.state.lock().is_ok_and(|s| s.rest.is_empty()));
        let next = metered.frame().await;
        assert!(next.is_some_and(|f| f.is_err_and(|s| s.code() == tonic::Code::DeadlineExceeded)));
        Ok(())
    }

    #[tokio::test]
    async fn the_server_wide_budget_refuses_after_a_wait() -> Result<(), Status> {
        tokio::time::pause();
        let budget = ReplyBudget::new(100_000, Duration::from_secs(30));
        let _held = budget.reserve(100_000, None).await?;
        let refused = budget.reserve(10, None).await;
        assert!(refused.is_err_and(|s| s.code() == tonic::Code::ResourceExhausted));
        Ok(())
    }
}
