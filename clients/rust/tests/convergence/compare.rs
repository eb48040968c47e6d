//! What is compared: the writer's truth, each client's view of it, and the recorder of
//! a client's change events.

use super::*;

use configwatch_test_support::PATIENCE;

/// What a cache holds for a key: its version and value (`None` for a secret).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) version: u64,
    pub(crate) value: Option<Value>,
}

/// The last change event of a key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LastEvent {
    pub(crate) delete: bool,
    pub(crate) version: u64,
    /// `None` for deletes and secrets.
    pub(crate) value: Option<Value>,
}

/// One entry of the server's state (`Get` returns secrets' values too).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TruthEntry {
    pub(crate) version: u64,
    pub(crate) value: Value,
    pub(crate) secret: bool,
}

pub(crate) type Truth = BTreeMap<String, TruthEntry>;

/// A client's cache, events and connection, in one shape for both languages.
pub(crate) struct ClientView {
    pub(crate) connected: bool,
    pub(crate) failed: bool,
    /// When the last message (change or progress) arrived.
    pub(crate) last_message: Option<SystemTime>,
    pub(crate) status: String,
    pub(crate) cache: BTreeMap<String, Seen>,
    pub(crate) last: BTreeMap<String, LastEvent>,
    pub(crate) violations: Vec<String>,
}

impl ClientView {
    /// Why this client does not (yet) hold the server's state; empty when it does.
    pub(crate) fn mismatches<'a>(
        &self,
        truth: &Truth,
        prefixes: &[String],
        written: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if !self.connected {
            out.push("not connected".to_owned());
        }
        let expected: BTreeMap<&String, Seen> = truth
            .iter()
            .filter(|(k, _)| watched(prefixes, k))
            .map(|(k, t)| {
                let value = (!t.secret).then(|| t.value.clone());
                (
                    k,
                    Seen {
                        version: t.version,
                        value,
                    },
                )
            })
            .collect();
        let keys: BTreeSet<&String> = expected.keys().copied().chain(self.cache.keys()).collect();
        for k in keys {
            let (held, want) = (self.cache.get(k), expected.get(k));
            if held != want {
                out.push(format!("{k}: cache {held:?}, server {want:?}"));
            }
        }
        for (k, want) in &expected {
            let ok = self
                .last
                .get(*k)
                .is_some_and(|l| !l.delete && l.version == want.version && l.value == want.value);
            if !ok {
                out.push(format!(
                    "{k}: last change event {:?}, server {want:?}",
                    self.last.get(*k)
                ));
            }
        }
        for k in written.filter(|k| watched(prefixes, k) && !expected.contains_key(k)) {
            if let Some(l) = self.last.get(k)
                && !l.delete
            {
                out.push(format!(
                    "{k}: last change event {l:?}, but the key does not exist"
                ));
            }
        }
        out
    }

    pub(crate) fn describe(&self) -> String {
        if self.violations.is_empty() {
            format!("the watch stopped: {}", self.status)
        } else {
            format!(
                "inconsistent change events ({}):\n  {}",
                self.status,
                self.violations.join("\n  ")
            )
        }
    }
}

/// Checks each change against the ones before it for its key.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) last: BTreeMap<String, LastEvent>,
    pub(crate) violations: Vec<String>,
    pub(crate) changes: u64,
    /// Changes by how they reached the cache (full state, diff, resumed, live).
    pub(crate) causes: BTreeMap<String, u64>,
    pub(crate) ended: Option<String>,
}

impl Recorder {
    pub(crate) fn record(&mut self, c: &Change) {
        self.changes += 1;
        *self.causes.entry(format!("{:?}", c.cause)).or_default() += 1;
        let before = self.last.get(&c.key);
        let live = before.filter(|l| !l.delete).map(|l| l.version);
        let delete = c.kind == ChangeKind::Delete;
        let mut problems = Vec::new();
        if c.previous_version != live {
            problems.push(format!(
                "previous_version {:?}, but the version last seen live is {live:?}",
                c.previous_version
            ));
        }
        if let Some(b) = before {
            if !delete && c.version <= b.version {
                problems.push(format!(
                    "a set at version {} after version {}",
                    c.version, b.version
                ));
            }
            if delete && c.version < b.version {
                problems.push(format!(
                    "a delete at version {} after version {}",
                    c.version, b.version
                ));
            }
        }
        // A stream coalesces a re-create and its delete into one delete, so only an
        // uncoalesced delete must follow a live version.
        if delete && live.is_none() && c.coalesced == 0 {
            problems.push("a delete of a key that was not live".into());
        }
        for p in problems {
            if self.violations.len() < 50 {
                self.violations
                    .push(format!("{} ({:?}): {p}", c.key, c.cause));
            }
        }
        let value = c.raw_value().map(parse_or_marker);
        self.last.insert(
            c.key.clone(),
            LastEvent {
                delete,
                version: c.version,
                value,
            },
        );
    }
}

pub(crate) fn parse_or_marker(raw: &str) -> Value {
    serde_json::from_str(raw)
        .unwrap_or_else(|e| json!({ "<not JSON>": raw, "error": e.to_string() }))
}

/// Waits until every watcher holds each of `keys`.
pub(crate) async fn hold(keys: &[String], rust: &[RustClient], ts: &mut [TsClient]) {
    let missing = RefCell::new(Vec::new());
    let ts = tokio::sync::Mutex::new(ts);
    let held = poll(PATIENCE, || async {
        let mut without = Vec::new();
        for c in rust {
            let cache = c.view().cache;
            if !keys.iter().all(|k| cache.contains_key(k)) {
                without.push(c.name.clone());
            }
        }
        for c in ts.lock().await.iter_mut() {
            let cache = c.dump().await.unwrap().view.cache;
            if !keys.iter().all(|k| cache.contains_key(k)) {
                without.push(c.name.clone());
            }
        }
        let done = without.is_empty();
        *missing.borrow_mut() = without;
        done.then_some(())
    })
    .await;
    assert!(
        held.is_ok(),
        "watchers without {keys:?}: {:?}",
        missing.into_inner()
    );
}
