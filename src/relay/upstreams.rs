//! The upstream servers a relay may use, and its connections to them.
//!
//! Every scope's upstream Watch is a stream on a shared HTTP/2 connection, never a
//! connection of its own: a relay serving 10,000 scopes holds a few connections
//! per upstream (a new one after every [`STREAMS_PER_CONNECTION`] streams, under
//! the server's default of 1,024 concurrent streams per connection). Connections
//! are pinged, so one whose peer vanished (a partition, a killed host) is found
//! dead within [`KEEPALIVE_INTERVAL`] plus [`KEEPALIVE_TIMEOUT`] and its streams
//! fail over.
//!
//! Boundary: addresses, connections and which upstream is preferred. What runs on
//! them is `feed`, `forward` and `probe`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Upstream Watch streams per connection before another connection is opened.
pub const STREAMS_PER_CONNECTION: usize = 500;
/// Time to open a connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a connection is pinged, and how long the answer may take.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upstream URL was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream {url:?} is not a URL this relay can use: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--upstream names no server")]
    None,
}

struct Pooled {
    channel: Channel,
    users: Arc<AtomicUsize>,
}

struct Upstream {
    url: String,
    endpoint: Endpoint,
    pool: Mutex<Vec<Pooled>>,
}

/// A connection lent to one stream; dropping it gives its place back.
pub struct Lease {
    pub channel: Channel,
    users: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.users.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream servers, in the order given, and the one in use.
pub struct Upstreams {
    list: Vec<Upstream>,
    preferred: AtomicUsize,
}

impl Upstreams {
    /// Checks the URLs (`http://host:port`; a list may also come as one
    /// comma-separated value). No connection is opened yet.
    pub fn new(urls: &[String]) -> Result<Upstreams, UpstreamError> {
        let mut list = Vec::new();
        for url in urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let bad = |reason: &str| UpstreamError::BadUrl {
                url: url.to_owned(),
                reason: reason.to_owned(),
            };
            if url.starts_with("https://") {
                return Err(bad(
                    "TLS to the upstream is not supported; reach it over http:// on a private network, or through a TLS-terminating proxy beside the relay",
                ));
            }
            if !url.starts_with("http://") {
                return Err(bad("it must start with http://"));
            }
            let endpoint = Endpoint::from_shared(url.to_owned())
                .map_err(|e| bad(&e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            list.push(Upstream {
                url: url.to_owned(),
                endpoint,
                pool: Mutex::new(Vec::new()),
            });
        }
        if list.is_empty() {
            return Err(UpstreamError::None);
        }
        Ok(Upstreams {
            list,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The URL of upstream `i` (modulo the list), for logs and errors.
    pub fn url(&self, i: usize) -> &str {
        &self.list[i % self.list.len()].url
    }

    /// The upstream new work starts on: the last one that answered.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.list.len()
    }

    /// Upstream `i` answered: new work starts there.
    pub fn prefer(&self, i: usize) {
        self.preferred.store(i % self.list.len(), Ordering::Relaxed);
    }

    /// A connection to upstream `i` for one long stream: the first one with room,
    /// or a new one.
    pub fn lease(&self, i: usize) -> Lease {
        let upstream = &self.list[i % self.list.len()];
        let mut pool = upstream
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = pool
            .iter()
            .find(|p| p.users.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION);
        let (channel, users) = match found {
            Some(p) => (p.channel.clone(), p.users.clone()),
            None => {
                let pooled = Pooled {
                    channel: upstream.endpoint.connect_lazy(),
                    users: Arc::new(AtomicUsize::new(0)),
                };
                let out = (pooled.channel.clone(), pooled.users.clone());
                pool.push(pooled);
                out
            }
        };
        users.fetch_add(1, Ordering::Relaxed);
        Lease { channel, users }
    }

    /// A connection to upstream `i` for a short call.
    pub fn channel(&self, i: usize) -> Channel {
        self.lease(i).channel.clone()
    }

    /// Connections open (or being opened) now, over every upstream.
    pub fn connections(&self) -> usize {
        self.list
            .iter()
            .map(|u| u.pool.lock().map(|p| p.len()).unwrap_or(0))
            .sum()
    }
}
