//! Waiting for something to happen: a condition polled against a deadline. A test
//! never sleeps a fixed time to wait for something (a sleep that IS the scenario,
//! "stay idle for 3 s", is another matter and stays in the test).
//!
//! Boundary: generic over the condition; knows nothing of servers or clients.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// The deadline passed before the condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

/// Checks `check` every 20 ms until it gives a value, for at most `within` (it is
/// checked at least once, and once more at the deadline).
pub async fn poll<T, F, Fut>(within: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut(within));
        }
        tokio::time::sleep(POLL.min(deadline - Instant::now())).await;
    }
}

/// [`poll`], panicking with `what()` when `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: impl Fn() -> String, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(within, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e} waiting for {}", what()),
    }
}

/// Waits until `cond` holds; panics with `what()` after `within`.
pub async fn wait_for(within: Duration, what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    eventually(within, what, || std::future::ready(cond().then_some(()))).await
}
