//! The Rust clients under test: this crate's `Client` with a recorder of its events.

use super::*;

pub(crate) struct RustClient {
    pub(crate) name: String,
    pub(crate) prefixes: Vec<String>,
    pub(crate) client: Client,
    pub(crate) recorder: Arc<Mutex<Recorder>>,
    pub(crate) _task: AbortOnDrop,
}

impl RustClient {
    pub(crate) async fn start(
        name: String,
        url: &str,
        token_file: &Path,
        prefixes: Vec<String>,
    ) -> Result<RustClient, String> {
        Self::start_with(name, url, token_file, prefixes, |b| b).await
    }

    /// [`start`](Self::start) with more settings made by `configure`.
    pub(crate) async fn start_with(
        name: String,
        url: &str,
        token_file: &Path,
        prefixes: Vec<String>,
        configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
    ) -> Result<RustClient, String> {
        let file = token_file.to_owned();
        let tokens = move || {
            let file = file.clone();
            async move {
                tokio::fs::read_to_string(&file)
                    .await
                    .map(|t| t.trim().to_owned())
            }
        };
        let builder = Client::builder(url, TENANT, tokens)
            .prefixes(prefixes.clone())
            .backoff(fast_backoff())
            .idle_timeout(IDLE_TIMEOUT);
        let client = configure(builder)
            .start()
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut changes = client.changes();
        let task = {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                while let Some(item) = changes.next().await {
                    let mut r = recorder.lock().unwrap();
                    match item {
                        Ok(c) => r.record(&c),
                        Err(e) => r.ended = Some(e.to_string()),
                    }
                }
            })
        };
        Ok(RustClient {
            name,
            prefixes,
            client,
            recorder,
            _task: AbortOnDrop(task),
        })
    }

    pub(crate) fn view(&self) -> ClientView {
        let status = self.client.status();
        let cache = self
            .client
            .entries()
            .into_iter()
            .map(|e| {
                let value = if e.secret {
                    None
                } else {
                    Some(e.raw_value().map_or(Value::Null, parse_or_marker))
                };
                (
                    e.key.clone(),
                    Seen {
                        version: e.version,
                        value,
                    },
                )
            })
            .collect();
        let r = self.recorder.lock().unwrap();
        ClientView {
            connected: status.connected,
            failed: matches!(status.state, State::Failed | State::Closed) || r.ended.is_some(),
            last_message: status.last_message_at,
            status: format!(
                "state {:?}, revision {}, syncs {}, last error {:?}, change stream {:?}",
                status.state,
                status.revision,
                status.syncs,
                status.last_error.map(|e| e.to_string()),
                r.ended
            ),
            cache,
            last: r.last.clone(),
            violations: r.violations.clone(),
        }
    }
}

/// Checks that each client synced at least `syncs` times and was never sent a full
/// state after its first (which the tests make empty, so it records no change):
/// every later one resumed by what the client held. Returns a line per client.
pub(crate) fn resumed_every_time(rust: &[RustClient], syncs: u64) -> String {
    let mut report = String::new();
    for c in rust {
        let status = c.client.status();
        let recorded = c.recorder.lock().unwrap();
        assert!(status.syncs >= syncs, "{}: {status:?}", c.name);
        assert!(
            !recorded.causes.contains_key("Full"),
            "{}: a full state after the first: {:?}",
            c.name,
            recorded.causes
        );
        assert_ne!(status.last_sync_mode, Some(SyncMode::Full), "{}", c.name);
        let _ = write!(
            report,
            " {}: {} syncs {:?};",
            c.name, status.syncs, recorded.causes
        );
    }
    report
}
