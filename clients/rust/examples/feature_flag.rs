//! A small service that prints a feature flag each time it changes.
//!
//! ```sh
//! cargo build --bin configwatch
//! target/debug/configwatch serve --data-dir /tmp/cw &        # prints: listening on 127.0.0.1:50051
//! CONFIGWATCH_TENANT=acme \
//! CONFIGWATCH_TOKEN=$(target/debug/configwatch token --data-dir /tmp/cw --tenant acme) \
//!   cargo run -p configwatch-client --example feature_flag
//! # elsewhere:
//! target/debug/configwatch put tenant_config_new-checkout '{"enabled":true}' \
//!   --token "$(target/debug/configwatch token --data-dir /tmp/cw --tenant acme --role writer)"
//! ```
//!
//! Environment:
//! - `CONFIGWATCH_SERVER`: the server (default `http://127.0.0.1:50051`), or several
//!   separated by commas
//! - `CONFIGWATCH_TENANT`: the tenant (required)
//! - `CONFIGWATCH_TOKEN_FILE`: a file holding the token, read again whenever one is
//!   needed (so a sidecar can refresh it); else `CONFIGWATCH_TOKEN`, the token itself
//! - `FLAG_KEY`: the flag's key (default `tenant_config_new-checkout`)
//! - `SNAPSHOT`: where to keep a snapshot (optional): start from it when the server
//!   is down
//!
//! A flag is on when its value is `true` or `{"enabled": true}`. Lines go to stdout;
//! connection news to stderr. Stops on Ctrl-C (exit 0), or when the watch cannot go
//! on (a token of another tenant, a bad key: exit 1).

use std::process::ExitCode;

use configwatch_client::{Cause, Client, Error, Source};

fn enabled(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        other => other.get("enabled") == Some(&serde_json::Value::Bool(true)),
    }
}

/// Prints the flag when it differs from the last line printed.
struct Printer {
    key: String,
    shown: Option<Option<u64>>,
}

impl Printer {
    fn print(&mut self, client: &Client, why: &str) -> Result<(), Error> {
        let flag = client.get::<serde_json::Value>(&self.key)?;
        let id = flag.as_ref().map(|f| f.version);
        if self.shown == Some(id) {
            return Ok(());
        }
        self.shown = Some(id);
        let state = match flag {
            None => "unset (off)".to_owned(),
            Some(f) => format!(
                "{} (version {})",
                if enabled(&f.value) { "on" } else { "off" },
                f.version
            ),
        };
        println!("{} {state} [{why}]", self.key);
        Ok(())
    }
}

async fn token() -> Result<String, std::io::Error> {
    match std::env::var_os("CONFIGWATCH_TOKEN_FILE") {
        Some(file) => Ok(tokio::fs::read_to_string(file).await?.trim().to_owned()),
        None => Ok(std::env::var("CONFIGWATCH_TOKEN").unwrap_or_default()),
    }
}

async fn run() -> Result<(), Error> {
    let server =
        std::env::var("CONFIGWATCH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let tenant = std::env::var("CONFIGWATCH_TENANT").unwrap_or_default();
    let key = std::env::var("FLAG_KEY").unwrap_or_else(|_| "tenant_config_new-checkout".into());
    if tenant.is_empty() {
        return Err(Error::InvalidConfig(
            "set CONFIGWATCH_TENANT (and CONFIGWATCH_TOKEN or CONFIGWATCH_TOKEN_FILE)".into(),
        ));
    }
    let mut builder = Client::builder(server, tenant, token);
    if let Some(path) = std::env::var_os("SNAPSHOT") {
        builder = builder.snapshot_path(path);
    }

    // Current from the server, or from the snapshot when the server is down.
    let client = builder.connect().await?;
    let mut changes = client.changes();
    let mut printer = Printer { key, shown: None };
    let status = client.status();
    if status.source == Source::Snapshot {
        eprintln!(
            "server unreachable ({:?}); serving the snapshot",
            status.last_error
        );
        printer.print(&client, "from snapshot, stale")?;
    } else {
        printer.print(&client, "current")?;
    }

    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            change = changes.next() => match change {
                Some(Ok(c)) if c.key == printer.key => {
                    let why = if c.cause == Cause::Delta { "changed" } else { "synced" };
                    printer.print(&client, why)?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            },
        }
    }
    client.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feature_flag: {e}");
            ExitCode::FAILURE
        }
    }
}
