//! A budget of reply bytes in flight: what Get (and History) replies a client has not read yet
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
//!
//! Watch messages count against the connection's budget the same way
//! ([`MeteredStream`]): a connection whose client reads nothing holds at most its
//! budget of Watch messages, however many Watches it opens.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What a Watch reply may hold of its connection's budget (in the response's
/// extensions, from the handler to the body).
#[derive(Clone, Debug)]
pub struct StreamBudget {
    connection: ConnectionReplies,
    /// Room a message is given before it is built: about the largest message.
    room: u32,
    /// Set while the Watch waits for room (its client is not reading).
    waiting: Arc<AtomicBool>,
}

impl StreamBudget {
    /// A Watch on `connection` whose messages are about `largest` bytes at most.
    pub fn new(connection: &ConnectionReplies, largest: usize) -> Self {
        StreamBudget {
            connection: connection.clone(),
            room: clamp(largest, connection.capacity),
            waiting: Arc::default(),
        }
    }

    /// Whether the Watch is waiting for room now (read when it ends).
    pub fn waiting(&self) -> Arc<AtomicBool> {
        self.waiting.clone()
    }
}

/// A streaming reply (a Watch) whose messages count against its connection's
/// budget until the HTTP/2 layer takes them.
///
/// Before the inner body is asked for its next message, room for one message is
/// taken from the connection's budget; while there is none (the client leaves
/// its replies unread), the stream is not asked, so its changes keep coalescing
/// where they are. Once the message is built, the room beyond its size is given
/// back, and the rest as its pieces are handed on. The connection's budget only:
/// a Watch never waits on what other clients hold. No drain time: a Watch is
/// long-lived, and HTTP/2 keepalive finds dead peers.
pub struct MeteredStream<B> {
    inner: B,
    budget: tokio_util::sync::PollSemaphore,
    room: u32,
    capacity: usize,
    /// Room held for the message being handed on (or about to be built).
    held: Option<OwnedSemaphorePermit>,
    /// What the HTTP/2 layer has not taken yet.
    rest: Bytes,
    waiting: Arc<AtomicBool>,
}

impl<B> MeteredStream<B> {
    pub fn new(inner: B, budget: StreamBudget) -> Self {
        MeteredStream {
            inner,
            budget: tokio_util::sync::PollSemaphore::new(budget.connection.bytes.clone()),
            room: budget.room,
            capacity: budget.connection.capacity,
            held: None,
            rest: Bytes::new(),
            waiting: budget.waiting,
        }
    }

    /// Hands on the next piece of the message and gives back the room of what has
    /// left (the room held never exceeds the bytes still to go).
    fn piece(&mut self) -> Bytes {
        // The last piece is taken whole: an emptied `rest` would still share the
        // encoder's buffer, and keep it from being reused while the Watch idles.
        let piece = if self.rest.len() <= PIECE {
            std::mem::take(&mut self.rest)
        } else {
            self.rest.split_to(PIECE)
        };
        if let Some(held) = self.held.as_mut() {
            let extra = held.num_permits().saturating_sub(self.rest.len());
            if extra >= held.num_permits() {
                self.held = None;
            } else if extra > 0 {
                drop(held.split(extra));
            }
        }
        piece
    }
}

impl<B> http_body::Body for MeteredStream<B>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.piece()))));
        }
        if this.held.is_none() {
            match this.budget.poll_acquire_many(cx, this.room) {
                Poll::Ready(permit) => {
                    this.waiting.store(false, Ordering::Relaxed);
                    this.held = permit; // None: closed, never (go unmetered)
                }
                Poll::Pending => {
                    this.waiting.store(true, Ordering::Relaxed);
                    return Poll::Pending;
                }
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    // A message larger than the room taken: take what more there
                    // is without waiting (it is built already), up to the whole
                    // budget.
                    if let Some(held) = this.held.as_mut() {
                        let want = data.len().min(this.capacity);
                        let more = want.saturating_sub(held.num_permits());
                        if more > 0
                            && let Ok(more) = u32::try_from(more)
                            && let Ok(permit) =
                                this.budget.clone_inner().try_acquire_many_owned(more)
                        {
                            held.merge(permit);
                        }
                    }
                    this.rest = data;
                    Poll::Ready(Some(Ok(Frame::data(this.piece()))))
                }
                Err(trailers) => {
                    this.held = None;
                    Poll::Ready(Some(Ok(trailers)))
                }
            },
            other => {
                // Nothing to send yet (or the end): the room waits for no one.
                this.held = None;
                other
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
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

    type Frames = http_body_util::StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Status>>,
    >;

    /// A Watch-like body: one data frame per message of `sizes`, then nothing
    /// more (pending, as an idle Watch is); `built` counts the messages taken.
    fn messages(sizes: &[usize], built: &Arc<std::sync::atomic::AtomicUsize>) -> Frames {
        use futures_util::StreamExt as _;
        let built = built.clone();
        let frames: Vec<_> = sizes
            .iter()
            .map(|&n| Ok(Frame::data(Bytes::from(vec![1u8; n]))))
            .collect();
        http_body_util::StreamBody::new(
            futures_util::stream::iter(frames)
                .inspect(move |_| {
                    built.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .chain(futures_util::stream::pending())
                .boxed(),
        )
    }

    async fn data(body: &mut MeteredStream<Frames>) -> Result<Bytes, Status> {
        let frame = tokio::time::timeout(Duration::from_secs(1), body.frame())
            .await
            .map_err(|_| Status::internal("no frame"))?
            .ok_or_else(|| Status::internal("ended"))??;
        frame.into_data().map_err(|_| Status::internal("trailers"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_message_holds_its_room_until_its_pieces_are_handed_on() -> Result<(), Status> {
        let conn = ConnectionReplies::new(256 << 10);
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut body = MeteredStream::new(
            messages(&[40_000, 100], &built),
            StreamBudget::new(&conn, 64 << 10),
        );
        let free = || conn.bytes.available_permits();
        // The first piece out: the message's other bytes are held, not the room.
        let mut left = 40_000;
        while left > 0 {
            let piece = data(&mut body).await?;
            assert_eq!(piece.len(), left.min(PIECE));
            left -= piece.len();
            assert_eq!(free(), (256 << 10) - left);
        }
        assert_eq!(data(&mut body).await?.len(), 100);
        assert_eq!(free(), 256 << 10);
        // Idle: no message, no room held.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), body.frame())
                .await
                .is_err()
        );
        assert_eq!(free(), 256 << 10);
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 2);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_connection_budget_keeps_the_next_watch_message_unbuilt() -> Result<(), Status> {
        let conn = ConnectionReplies::new(100_000);
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let budget = StreamBudget::new(&conn, 50_000);
        let waiting = budget.waiting();
        let mut body = MeteredStream::new(messages(&[30_000], &built), budget);
        // Unread replies on the connection hold 60,000 of its 100,000 bytes.
        let unread = conn.bytes.clone().acquire_many_owned(60_000).await;
        let unread = unread.map_err(|_| Status::internal("closed"))?;
        assert!(
            tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .is_err()
        );
        assert_eq!(
            built.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not built"
        );
        assert!(waiting.load(Ordering::Relaxed), "the Watch says it waits");
        drop(unread);
        assert_eq!(data(&mut body).await?.len(), PIECE);
        assert!(!waiting.load(Ordering::Relaxed));
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(conn.bytes.available_permits(), 100_000 - (30_000 - PIECE));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_message_larger_than_the_budget_still_goes_alone() -> Result<(), Status> {
        let conn = ConnectionReplies::new(50_000);
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut big = MeteredStream::new(
            messages(&[200_000], &built),
            StreamBudget::new(&conn, 1 << 20),
        );
        let mut other =
            MeteredStream::new(messages(&[10], &built), StreamBudget::new(&conn, 1 << 20));
        let mut left = 200_000 - data(&mut big).await?.len();
        // It holds the whole budget: another Watch on the connection waits.
        assert_eq!(conn.bytes.available_permits(), 0);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), other.frame())
                .await
                .is_err()
        );
        while left > 0 {
            left -= data(&mut big).await?.len();
        }
        assert_eq!(data(&mut other).await?.len(), 10);
        assert_eq!(conn.bytes.available_permits(), 50_000);
        Ok(())
    }
}
