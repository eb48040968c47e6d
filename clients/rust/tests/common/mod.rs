//! Test harness: real `configwatch` server processes on 127.0.0.1 port 0 with
//! temporary data directories, tokens from the server's own `token` command, writes
//! through the generated gRPC client, and `wait_for` to poll with a deadline. The
//! process, token and polling parts are the workspace's `configwatch-test-support`
//! crate; this module adds what is this client's: builders, a writer, cache states.
//!
//! The server binary is `$CONFIGWATCH_BIN`, else `<target dir>/debug/configwatch`
//! (`$CARGO_TARGET_DIR`, else the workspace's `target/`).

// Each suite uses a part of this module (and of what it passes on).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use configwatch_client::proto::{self, config_service_client::ConfigServiceClient};
use configwatch_client::{Backoff, Change, ChangeKind, Client, ClientBuilder};
use configwatch_test_support::{ServerProcess, eventually, mint_token, serve_command};
pub use configwatch_test_support::{server_bin, temp_dir, wait_for};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const TENANT: &str = "acme";

/// Fast reconnects, for tests.
pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        ..Backoff::default()
    }
}

/// One configwatch server process.
pub struct Server {
    process: Option<ServerProcess>,
    pub port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts a server on 127.0.0.1 port 0 with `data_dir`.
    pub async fn start(data_dir: &Path) -> Server {
        let mut s = Server {
            process: None,
            port: 0,
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension("log"),
        };
        s.spawn(0).await;
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9().await;
        }
    }

    /// SIGTERM (graceful shutdown), and wait for the process to exit.
    pub async fn terminate(&mut self) {
        if let Some(process) = self.process.take() {
            let exit = process
                .terminate(Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(exit.success(), "{exit:?}\n{}", self.logs());
        }
    }

    /// Starts again on the same port and data directory.
    pub async fn restart(&mut self) {
        let port = self.port;
        self.spawn(port).await;
    }

    async fn spawn(&mut self, port: u16) {
        // A port just freed by a killed server may take a moment to be bindable again.
        let this = &*self;
        let process = eventually(
            Duration::from_secs(10),
            || {
                format!(
                    "port {port} to be free\n--- server log ---\n{}",
                    this.logs()
                )
            },
            || async move {
                match ServerProcess::try_start(this.command(port)).await {
                    Ok(process) => Some(process),
                    Err(e) => {
                        let logs = this.logs();
                        assert!(
                            port != 0 && logs.contains("in use"),
                            "{e}\n--- server log ---\n{logs}"
                        );
                        None
                    }
                }
            },
        )
        .await;
        self.port = process.addr.port();
        self.process = Some(process);
    }

    fn command(&self, port: u16) -> std::process::Command {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut command = serve_command(&server_bin(), &self.data_dir, port);
        command
            .args(["--progress-interval", "1s"])
            .env("CONFIGWATCH_LOG", "info")
            .stderr(log);
        command
    }

    /// A token signed with this server's key.
    pub async fn token(&self, tenant: &str, role: &str, ttl: &str) -> String {
        mint_token(&server_bin(), &self.data_dir, tenant, role, ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A writer for `tenant`, connected now.
    pub async fn writer(&self, tenant: &str) -> Writer {
        let token = self.token(tenant, "writer", "1h").await;
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Writer {
            rpc: ConfigServiceClient::new(channel),
            header: format!("Bearer {token}").parse().unwrap(),
        }
    }

    /// A client builder for `tenant` with a long-lived token and fast reconnects.
    pub async fn builder(&self, tenant: &str) -> ClientBuilder {
        let token = self.token(tenant, "reader", "1h").await;
        Client::builder(self.url(), tenant, configwatch_client::static_token(token))
            .backoff(fast_backoff())
    }
}

/// Writes through the generated gRPC client.
pub struct Writer {
    rpc: ConfigServiceClient<Channel>,
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl Writer {
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert("authorization", self.header.clone());
        r
    }

    /// Writes `json`; returns the new version.
    pub async fn put(&mut self, key: &str, json: serde_json::Value) -> u64 {
        self.put_raw(key, &json.to_string(), false).await
    }

    pub async fn put_secret(&mut self, key: &str, value: &str) -> u64 {
        let json = serde_json::Value::from(value).to_string();
        self.put_raw(key, &json, true).await
    }

    async fn put_raw(&mut self, key: &str, value: &str, secret: bool) -> u64 {
        let r = self.request(proto::PutRequest {
            reason: String::new(),
            key: key.into(),
            value: value.into(),
            expected_version: None,
            secret,
            tenant: String::new(),
        });
        self.rpc
            .put(r)
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
            .version
    }

    /// Deletes; returns the tombstone's version.
    pub async fn delete(&mut self, key: &str) -> u64 {
        let r = self.request(proto::DeleteRequest {
            reason: String::new(),
            key: key.into(),
            expected_version: None,
            tenant: String::new(),
        });
        self.rpc
            .delete(r)
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
            .version
    }

    /// Every live entry of the tenant as the server holds it: key -> (version, value
    /// as JSON text, None for secrets).
    pub async fn state(&mut self) -> State {
        let r = self.request(proto::GetRequest::default());
        self.rpc
            .get(r)
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|e| {
                let value = (!e.secret).then_some(e.value);
                (e.key, (e.version, value))
            })
            .collect()
    }
}

pub type State = BTreeMap<String, (u64, Option<String>)>;

/// The client's cache in the same shape as [`Writer::state`].
pub fn cache_state(client: &Client) -> State {
    client
        .entries()
        .into_iter()
        .map(|e| {
            let value = e.raw_value().map(str::to_owned);
            (e.key.clone(), (e.version, value))
        })
        .collect()
}

/// Waits until the client is connected and its cache equals the server's state.
pub async fn converged(client: &Client, writer: &mut Writer) {
    let truth = writer.state().await;
    wait_for(
        Duration::from_secs(20),
        || {
            format!(
                "convergence: cache {:?} vs server {truth:?}; status {:?}",
                cache_state(client),
                client.status()
            )
        },
        || client.status().connected && cache_state(client) == truth,
    )
    .await;
    assert_eq!(cache_state(client), writer.state().await);
}

/// Records every change a client reports, as `key@version` (`key@version-` for
/// deletes), from a task of its own.
pub fn record(client: &Client) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let mut changes = client.changes();
    tokio::spawn(async move {
        while let Some(Ok(c)) = changes.next().await {
            out.lock().unwrap().push(label(&c));
        }
    });
    seen
}

pub fn label(c: &Change) -> String {
    format!(
        "{}@{}{}",
        c.key,
        c.version,
        if c.kind == ChangeKind::Delete {
            "-"
        } else {
            ""
        }
    )
}

pub fn seen(r: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    r.lock().unwrap().clone()
}
