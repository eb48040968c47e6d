//! The writer: random puts, deletes, re-creates, secrets and large values, and its own
//! record of what was acknowledged.

use super::*;

/// One key as the writer knows it from acknowledged writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    /// The last version written, a tombstone's included (0: never written).
    pub(crate) version: u64,
    /// The value and whether it is a secret; `None` when deleted or never written.
    pub(crate) live: Option<(Value, bool)>,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put { value: Value, secret: bool },
    Delete,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Delete => f.write_str("delete"),
            Op::Put { value, secret } => {
                let text = value.to_string();
                let short: String = text.chars().take(120).collect();
                let more = if short.len() < text.len() { "..." } else { "" };
                let kind = if *secret { "put (secret)" } else { "put" };
                write!(f, "{kind} {short}{more}")
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) creates: u64,
    pub(crate) updates: u64,
    pub(crate) deletes: u64,
    pub(crate) secrets: u64,
    pub(crate) unchanged_values: u64,
    pub(crate) large_values: u64,
    /// Writes sent through a relay.
    pub(crate) through_relays: u64,
    /// Writes whose first attempt ended without an answer (server killed, ...).
    pub(crate) uncertain: u64,
    /// ... of which the first attempt had been applied (found by compare-and-set).
    pub(crate) applied_unanswered: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

pub(crate) struct Writer {
    /// The server the writes go to and every read comes from (the origin).
    pub(crate) server: watch::Receiver<SocketAddr>,
    /// Relays that forward writes to it: each takes a share of a round's writes
    /// (none by default).
    pub(crate) relays: Vec<watch::Receiver<SocketAddr>>,
    /// A client per server address used.
    pub(crate) rpc: BTreeMap<SocketAddr, ConfigServiceClient<Channel>>,
    pub(crate) header: MetadataValue<Ascii>,
    pub(crate) keys: Vec<String>,
    pub(crate) record: BTreeMap<String, Record>,
    pub(crate) seq: u64,
    pub(crate) stats: WriterStats,
}

/// Whether a call failed before the server handled it: hyper hands a queued request
/// back as `Canceled("connection closed")` when its connection closes before the
/// request was written, and a request whose stream the server's GOAWAY refused fails
/// with the HTTP/2 connection error (NO_ERROR: "not a result of an error", which
/// tonic may also hand back as INTERNAL with the GOAWAY itself as its source).
pub(crate) fn never_sent(status: &Status) -> bool {
    let text = format!("{status:?}");
    (status.code() == Code::Cancelled && text.contains("Canceled, \"connection closed\""))
        || text.contains("not a result of an error")
        || (text.contains("GoAway(") && text.contains("NO_ERROR, Remote"))
}

/// Codes that leave a write's outcome unknown: it may or may not have been applied.
pub(crate) fn uncertain(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

impl Writer {
    pub(crate) fn new(server: watch::Receiver<SocketAddr>, token: &str, keys: &[String]) -> Writer {
        Writer {
            server,
            relays: Vec::new(),
            rpc: BTreeMap::new(),
            header: format!("Bearer {token}").parse().unwrap(),
            keys: keys.to_vec(),
            record: BTreeMap::new(),
            seq: 0,
            stats: WriterStats::default(),
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.record.keys()
    }

    /// A client of the current server at `at` (calls go straight to it, not through
    /// the proxy).
    pub(crate) fn rpc(&mut self, at: &watch::Receiver<SocketAddr>) -> ConfigServiceClient<Channel> {
        let addr = *at.borrow();
        self.rpc
            .entry(addr)
            .or_insert_with(|| {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                ConfigServiceClient::new(channel)
            })
            .clone()
    }

    pub(crate) fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert("authorization", self.header.clone());
        r.set_timeout(Duration::from_secs(5));
        r
    }

    pub(crate) async fn round(
        &mut self,
        rng: &mut StdRng,
        writes: usize,
        progress: &watch::Sender<usize>,
    ) -> Result<(), String> {
        for n in 0..writes {
            let key = self.keys[rng.random_range(0..self.keys.len())].clone();
            let op = self.choose(rng, &key);
            // No relays, no draw: a seed replays the same writes as before.
            let via = match self.relays.len() {
                0 => None,
                n => rng.random_bool(0.3).then(|| rng.random_range(0..n)),
            };
            self.stats.through_relays += u64::from(via.is_some());
            self.write_via(&key, op, via).await?;
            progress.send_replace(n + 1);
            // Workload shape, not synchronization: writes come in bursts and trickles.
            let pause = rng.random_range(0..6u64);
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(())
    }

    pub(crate) fn choose(&mut self, rng: &mut StdRng, key: &str) -> Op {
        self.seq += 1;
        let rec = self.record.get(key).cloned().unwrap_or_default();
        if let Some((value, secret)) = &rec.live {
            if rng.random_bool(0.25) {
                self.stats.deletes += 1;
                return Op::Delete;
            }
            self.stats.updates += 1;
            if rng.random_bool(0.05) {
                // The same value again: only the version changes.
                self.stats.unchanged_values += 1;
                return Op::Put {
                    value: value.clone(),
                    secret: *secret,
                };
            }
        } else {
            self.stats.creates += 1;
        }
        if key.starts_with("param_config_") {
            let secret = rng.random_bool(0.2);
            let value = if secret || rng.random_bool(0.6) {
                Value::String(random_text(rng, 1, 40, true))
            } else {
                let n = rng.random_range(1..5);
                Value::Array(
                    (0..n)
                        .map(|_| Value::String(random_text(rng, 1, 20, true)))
                        .collect(),
                )
            };
            if secret {
                self.stats.secrets += 1;
            }
            Op::Put { value, secret }
        } else {
            let mut value = json!({ "seq": self.seq, "data": random_json(rng, 3) });
            if rng.random_bool(0.03) {
                // Large values make initial states span several messages.
                self.stats.large_values += 1;
                let len = rng.random_range(20_000..60_000);
                value["blob"] = Value::String(random_text(rng, len, len + 1, false));
            }
            Op::Put {
                value,
                secret: false,
            }
        }
    }

    /// Writes with compare-and-set on the recorded version; retries a write whose
    /// outcome is unknown until the server answers, and tells from the answer
    /// whether the first attempt had been applied.
    pub(crate) async fn write(&mut self, key: &str, op: Op) -> Result<(), String> {
        self.write_via(key, op, None).await
    }

    /// [`write`](Self::write) through relay `via` (an index in `relays`), which
    /// forwards it with the writer's token; the outcome of an unanswered attempt is
    /// still read from the origin, which a relay's view may trail.
    pub(crate) async fn write_via(
        &mut self,
        key: &str,
        op: Op,
        via: Option<usize>,
    ) -> Result<(), String> {
        let target = via.map_or_else(|| self.server.clone(), |i| self.relays[i].clone());
        let through = via.map_or(String::new(), |i| format!(" (through relay {i})"));
        let before = self.record.get(key).cloned().unwrap_or_default();
        let expected = match (&op, &before.live) {
            (_, Some(_)) => before.version,
            (Op::Put { .. }, None) => 0,
            (Op::Delete, None) => return Err(format!("test bug: delete of {key}, not live")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut unanswered = false;
        loop {
            let mut rpc = self.rpc(&target);
            let answer = match &op {
                Op::Put { value, secret } => {
                    let r = self.request(proto::PutRequest {
                        reason: String::new(),
                        key: key.into(),
                        value: value.to_string(),
                        expected_version: Some(expected),
                        secret: *secret,
                        tenant: String::new(),
                    });
                    tokio::time::timeout(Duration::from_secs(6), rpc.put(r))
                        .await
                        .map(|r| r.map(|r| r.into_inner().entry))
                }
                Op::Delete => {
                    let r = self.request(proto::DeleteRequest {
                        reason: String::new(),
                        key: key.into(),
                        expected_version: Some(expected),
                        tenant: String::new(),
                    });
                    tokio::time::timeout(Duration::from_secs(6), rpc.delete(r))
                        .await
                        .map(|r| r.map(|r| r.into_inner().entry))
                }
            };
            let status = match answer {
                Ok(Ok(Some(entry))) => {
                    let want = before.version + 1;
                    let deleted = matches!(op, Op::Delete);
                    if entry.version != want || entry.deleted != deleted {
                        return Err(format!(
                            "{key}: {op}{through} on version {} was answered with version {} \
                             (deleted {}); versions must continue the key's sequence",
                            before.version, entry.version, entry.deleted
                        ));
                    }
                    self.commit(key, op, want);
                    return Ok(());
                }
                Ok(Ok(None)) => return Err(format!("{key}: a write answered without entry")),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer within 6 s"),
            };
            let code = status.code();
            if unanswered && matches!(code, Code::FailedPrecondition | Code::NotFound) {
                return self.resolve(key, op, &before, &status).await;
            }
            if !uncertain(code) {
                return Err(format!(
                    "{key}: {op}{through} with expected version {expected} refused: {status:?}"
                ));
            }
            *self
                .stats
                .errors
                .entry(format!("{code:?}: {}", status.message()))
                .or_default() += 1;
            // A call the server never handled (refused by its GOAWAY, or handed back
            // unsent) leaves nothing uncertain: it is simply sent again.
            if !unanswered && !never_sent(&status) {
                self.stats.uncertain += 1;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{key}: no answer to {op}{through} within 30 s: {status:?}"
                ));
            }
            unanswered = true;
            // The server may be restarting: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A retry was refused by compare-and-set: the unanswered attempt must have been
    /// applied, exactly as sent.
    pub(crate) async fn resolve(
        &mut self,
        key: &str,
        op: Op,
        before: &Record,
        status: &Status,
    ) -> Result<(), String> {
        let current: Option<u64> = status
            .metadata()
            .get("configwatch-current-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let want = before.version + 1;
        let held = self.read(key).await?;
        let applied = match (&op, &held) {
            (Op::Put { value, secret }, Some(e)) => {
                current.is_none_or(|c| c == want)
                    && e.version == want
                    && e.value == *value
                    && e.secret == *secret
            }
            (Op::Delete, None) => current.is_none_or(|c| c == 0),
            _ => false,
        };
        if !applied {
            return Err(format!(
                "{key}: after an unanswered {op} on version {}, the retry was refused \
                 ({status:?}) but the server holds {held:?}: the write is neither applied nor \
                 refusable",
                before.version
            ));
        }
        self.stats.applied_unanswered += 1;
        self.commit(key, op, want);
        Ok(())
    }

    pub(crate) fn commit(&mut self, key: &str, op: Op, version: u64) {
        let rec = self.record.entry(key.to_owned()).or_default();
        rec.version = version;
        rec.live = match op {
            Op::Put { value, secret } => Some((value, secret)),
            Op::Delete => None,
        };
    }

    /// One key from the server, retried while the server is unreachable.
    pub(crate) async fn read(&mut self, key: &str) -> Result<Option<TruthEntry>, String> {
        let mut r = self
            .get(proto::GetRequest {
                keys: vec![key.to_owned()],
                prefixes: Vec::new(),
                tenant: String::new(),
                ..Default::default()
            })
            .await?;
        Ok(r.remove(key))
    }

    /// The whole tenant as the server holds it.
    pub(crate) async fn truth(&mut self) -> Result<Truth, String> {
        self.get(proto::GetRequest::default()).await
    }

    pub(crate) async fn get(&mut self, body: proto::GetRequest) -> Result<Truth, String> {
        let origin = self.server.clone();
        self.get_from(&origin, body).await
    }

    /// A `Get` of the server at `from` (a relay's view, say), retried while it is
    /// unreachable.
    pub(crate) async fn get_from(
        &mut self,
        from: &watch::Receiver<SocketAddr>,
        body: proto::GetRequest,
    ) -> Result<Truth, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut rpc = self.rpc(from);
            let r = self.request(body.clone());
            let status = match tokio::time::timeout(Duration::from_secs(6), rpc.get(r)).await {
                Ok(Ok(r)) => {
                    let mut out = Truth::new();
                    // A tombstone, should one come, is a key that does not exist.
                    for e in r.into_inner().entries.into_iter().filter(|e| !e.deleted) {
                        let value = serde_json::from_str(&e.value).map_err(|err| {
                            format!("{}: the server's value {:?}: {err}", e.key, e.value)
                        })?;
                        out.insert(
                            e.key,
                            TruthEntry {
                                version: e.version,
                                value,
                                secret: e.secret,
                            },
                        );
                    }
                    return Ok(out);
                }
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("no answer within 6 s"),
            };
            if !uncertain(status.code()) || Instant::now() >= deadline {
                return Err(format!("Get: {status:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the server's state differs from the acknowledged writes.
    pub(crate) fn compare_record(&self, truth: &Truth) -> Vec<String> {
        let mut out = Vec::new();
        for (k, rec) in &self.record {
            match (&rec.live, truth.get(k)) {
                (Some((value, secret)), Some(t)) => {
                    if t.version != rec.version || t.value != *value || t.secret != *secret {
                        out.push(format!(
                            "{k}: written version {} {value} (secret {secret}), server {t:?}",
                            rec.version
                        ));
                    }
                }
                (Some((value, _)), None) => out.push(format!(
                    "{k}: version {} {value} was acknowledged, the server does not have it",
                    rec.version
                )),
                (None, Some(t)) => out.push(format!(
                    "{k}: deleted at version {}, the server has {t:?}",
                    rec.version
                )),
                (None, None) => {}
            }
        }
        for (k, t) in truth {
            if !self.record.contains_key(k) {
                out.push(format!("{k}: never written, the server has {t:?}"));
            }
        }
        out
    }
}

/// Random JSON that reads back the same in Rust and JavaScript: integers well
/// within 2^53, floats with a short exact form and a fraction, strings with escapes
/// and non-ASCII text.
pub(crate) fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    let pick = if depth == 0 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..9)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-1_000_000i64..1_000_000)),
        3 => {
            let whole = rng.random_range(-1000i32..1000);
            let fraction = [0.25, 0.5, 0.75][rng.random_range(0..3)];
            json!(f64::from(whole) + fraction)
        }
        4 | 5 => Value::String(random_text(rng, 0, 24, false)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|i| {
                    (
                        format!("{}{i}", random_text(rng, 1, 6, true)),
                        random_json(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

pub(crate) fn random_text(rng: &mut StdRng, min: usize, max: usize, no_commas: bool) -> String {
    pub(crate) const ALPHABET: &[char] = &[
        'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Q', '0', '7', ' ', '-', '_', '.', '/', ':', '"', '\\',
        '\n', '\t', '{', '}', 'é', 'ß', 'Ω', 'ж', '日', '本', '🙂', '🚀', ',',
    ];
    let len = rng.random_range(min..max.max(min + 1));
    let choices = if no_commas {
        &ALPHABET[..ALPHABET.len() - 1]
    } else {
        ALPHABET
    };
    (0..len)
        .map(|_| choices[rng.random_range(0..choices.len())])
        .collect()
}
