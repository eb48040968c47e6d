//! What a server tells its watchers about being cut off from its sources: a Watch
//! of the test's own (from the host namespace, straight to the server's address)
//! that keeps the `disconnected_since` of the last message it got.
//!
//! Boundary: a gRPC Watch and its messages' cut-off field; knows nothing of how
//! the server got cut off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use configwatch_test_support::poll;

use super::common;

/// A Watch on one server, read in the background.
pub struct CutOff {
    name: String,
    /// `None` until the first message; then the last message's field.
    last: Arc<Mutex<Option<Option<SystemTime>>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for CutOff {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl CutOff {
    /// Watches `prefix` on the server at `addr` with `token`.
    pub async fn watch(name: &str, addr: SocketAddr, token: &str, prefix: &str) -> CutOff {
        let mut client = common::connect(addr, Some(token)).await;
        let mut stream = common::watch(&mut client, common::watch_prefixes(&[prefix])).await;
        let last = Arc::new(Mutex::new(None));
        let seen = last.clone();
        let reader = tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(message)) = stream.message().await {
                *seen.lock().unwrap() = Some(message.disconnected_since.map(time));
            }
        });
        CutOff {
            name: name.to_owned(),
            last,
            reader,
        }
    }

    /// The last message's `disconnected_since`, once a message came.
    fn last(&self) -> Option<Option<SystemTime>> {
        *self.last.lock().unwrap()
    }

    /// Since when the server says it is cut off, as of its last message (`None`
    /// while it says it is current, or before its first message).
    pub fn says(&self) -> Option<SystemTime> {
        self.last().flatten()
    }

    /// Waits until the server says it is cut off; since when.
    pub async fn until_cut_off(&self, within: Duration) -> SystemTime {
        poll(within, || std::future::ready(self.says()))
            .await
            .unwrap_or_else(|e| panic!("{}: never said it was cut off: {e}", self.name))
    }

    /// Waits until the server says it is current again.
    pub async fn until_current(&self, within: Duration) {
        poll(within, || {
            std::future::ready((self.last() == Some(None)).then_some(()))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: still says it is cut off (since {:?}): {e}",
                self.name,
                self.last()
            )
        });
    }
}

/// A protobuf timestamp as a system time.
fn time(t: prost_types::Timestamp) -> SystemTime {
    let ms = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}
