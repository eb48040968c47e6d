//! The writes a test makes at the origin (rounds of random puts and deletes over a
//! small set of keys, from the host namespace straight to the origin's address) and
//! the origin's state read back after each round: what every cache must converge to.
//!
//! Boundary: a gRPC client of the origin; knows nothing of relays or of the clients
//! under test.

use std::collections::BTreeMap;
use std::path::Path;

use configwatch::proto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::common;
use super::tiers::{self, Tier};

/// The origin's state: key -> (version, value), live keys only.
pub type State = BTreeMap<String, (u64, Value)>;

/// Keys the writes pick from.
const KEYS: u32 = 20;

/// A writer of the test's tenant at the origin.
pub struct Writer {
    client: common::Client,
    rng: StdRng,
}

impl Writer {
    pub async fn connect(origin: &Tier, bin: &Path) -> Writer {
        let token = tiers::token(bin, origin.dir.path(), "writer").await;
        Writer {
            client: common::connect(origin.server.addr, Some(&token)).await,
            rng: StdRng::seed_from_u64(14),
        }
    }

    /// `count` random writes (about one in five a delete of a live key), then the
    /// origin's state.
    pub async fn round(&mut self, round: u32, count: u32) -> State {
        for i in 0..count {
            let key = format!("{}k{:02}", super::PREFIX, self.rng.random_range(0..KEYS));
            if self.rng.random_bool(0.2) {
                let deleted = self
                    .client
                    .delete(proto::DeleteRequest {
                        key: key.clone(),
                        ..Default::default()
                    })
                    .await;
                match deleted {
                    Ok(_) => continue,
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => panic!("delete {key}: {s:?}"),
                }
            }
            let value = json!({ "round": round, "write": i });
            common::put(&mut self.client, &key, &value.to_string()).await;
        }
        self.state().await
    }

    /// Every live key under the prefix, as the origin holds it now.
    pub async fn state(&mut self) -> State {
        let reply = self
            .client
            .get(proto::GetRequest {
                prefixes: vec![super::PREFIX.into()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("get: {s:?}"))
            .into_inner();
        assert!(reply.next_page_token.is_empty(), "the state fits one page");
        reply
            .entries
            .into_iter()
            .map(|e| {
                let value = serde_json::from_str(&e.value).expect("a JSON value");
                (e.key, (e.version, value))
            })
            .collect()
    }
}
