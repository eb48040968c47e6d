//! `configwatch watch`: prints the initial state and then every change under the
//! prefixes, one JSON object per line, across server restarts. A client of the Rust
//! client library (`configwatch_client::Client`): the library reconnects with
//! backoff, resumes by token or by the digest of what it holds, and sends the
//! server's store identity back; this module only prints its changes, and says on
//! stderr when the server it reads is cut off from its sources and when that ends.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use configwatch_client::{ChangeKind, Client, Error, static_token};

use super::commands::{bearer, entry_json};
use super::serve::init_logging;
use super::{Failure, LogFormat, WatchArgs};
use crate::proto;

/// Watches and prints changes. When the server goes away the library reconnects
/// with backoff and resumes, so a server restart costs no lines (each reconnection
/// is logged on stderr); an error the user must fix (a token of another tenant, a
/// bad prefix) ends the command.
pub(super) async fn run_watch(args: WatchArgs) -> Result<(), Failure> {
    let (token, _) = bearer(&args.client)?;
    let tenant = match &args.tenant {
        Some(tenant) => tenant.clone(),
        None => token_tenant(token).ok_or_else(|| {
            Failure::usage(format!(
                "the token names no tenant in {}: pass --tenant",
                crate::auth::DEFAULT_TENANT_CLAIM
            ))
        })?,
    };
    init_logging("warn,configwatch_client=info", LogFormat::Text)?;
    let client = Client::builder(args.client.server.clone(), tenant, static_token(token))
        .prefixes(args.prefixes.clone())
        // What the server sends is printed, removals included, as it always was.
        .allow_mass_removal(true)
        .start()
        .await
        .map_err(failure)?;
    // Opened before the first state can arrive (that takes a connection and a
    // round trip), so the initial state is printed too.
    let mut changes = client.changes();
    let mut check = tokio::time::interval(STATUS_CHECK);
    let mut cut_off = CutOff::default();
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            _ = check.tick() => {
                let status = client.status();
                if let Some(notice) = cut_off.follow(&status.server, status.server_disconnected_since) {
                    eprintln!("configwatch watch: {notice}");
                }
                match refused(&client) {
                    Some(e) => return Err(failure(e)),
                    None => continue,
                }
            }
        };
        let Some(change) = change else { break };
        let change = change.map_err(failure)?;
        let entry = proto::Entry {
            key: change.key.clone(),
            version: change.version,
            value: change.raw_value().unwrap_or_default().to_owned(),
            secret: change.secret,
            deleted: change.kind == ChangeKind::Delete,
            ..proto::Entry::default()
        };
        println!("{}", entry_json(&entry));
    }
    Ok(())
}

/// How often the command looks at the client's status: for a refused token, and
/// for the server being cut off from its sources.
const STATUS_CHECK: Duration = Duration::from_millis(250);

/// What the command last said of the server it reads being cut off from its sources
/// (a relay that lost its upstream): it says so once when that starts and once when
/// it ends, on stderr, so stdout keeps only the changes.
#[derive(Debug, Default)]
struct CutOff {
    /// The server, and since when it is cut off, as last said.
    said: Option<(String, SystemTime)>,
}

impl CutOff {
    /// The line to print, if any, for the server now in use (`server`) and what the
    /// client's status says of it (`since`).
    fn follow(&mut self, server: &str, since: Option<SystemTime>) -> Option<String> {
        let now = since.map(|t| (server.to_owned(), t));
        if now == self.said {
            return None;
        }
        let before = std::mem::replace(&mut self.said, now);
        Some(match (&self.said, before) {
            (Some((server, t)), _) => format!(
                "the server {server} is cut off from its sources since {}: changes made since may be missing",
                humantime::format_rfc3339_seconds(*t)
            ),
            (None, Some((old, t))) if old == server => format!(
                "the server {server} is current with its sources again (cut off since {})",
                humantime::format_rfc3339_seconds(t)
            ),
            (None, Some((old, t))) => format!(
                "moved from the server {old}, cut off from its sources since {}, to {server}",
                humantime::format_rfc3339_seconds(t)
            ),
            (None, None) => return None,
        })
    }
}

/// A token the server refuses (expired, or not valid for it). The library asks its
/// token source again and again for a fresh one; the command has only the one it
/// was given, so the user must fix it, as before: the command ends.
fn refused(client: &Client) -> Option<Error> {
    client
        .status()
        .last_error
        .filter(|e| e.code() == Some(tonic::Code::Unauthenticated))
}

/// The exit code of an error that stopped the watch: 64 for settings the user must
/// fix on the command line, 1 for the server's refusals.
fn failure(e: Error) -> Failure {
    match e {
        Error::InvalidConfig(_) => Failure::usage(e.to_string()),
        e => Failure::error(e.to_string()),
    }
}

/// The tenant a token names, read (not verified: the server does that) from its
/// payload's tenant claim.
fn token_tenant(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get(crate::auth::DEFAULT_TENANT_CLAIM)?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_server_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let (a, b) = ("http://a:1", "http://b:2");
        let t1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let t2 = t1 + Duration::from_secs(60);
        let mut cut = CutOff::default();
        assert_eq!(cut.follow(a, None), None);
        assert_eq!(
            cut.follow(a, Some(t1)).as_deref(),
            Some(
                "the server http://a:1 is cut off from its sources since 2026-09-21T14:13:20Z: \
                 changes made since may be missing"
            )
        );
        assert_eq!(cut.follow(a, Some(t1)), None, "said once");
        assert_eq!(
            cut.follow(a, None).as_deref(),
            Some(
                "the server http://a:1 is current with its sources again \
                 (cut off since 2026-09-21T14:13:20Z)"
            )
        );
        assert_eq!(cut.follow(a, None), None, "said once");
        // Cut off again (another start), then the watch moves to another server.
        assert!(
            cut.follow(a, Some(t2))
                .is_some_and(|l| l.contains("14:14:20Z"))
        );
        assert_eq!(
            cut.follow(b, None).as_deref(),
            Some(
                "moved from the server http://a:1, cut off from its sources since \
                 2026-09-21T14:14:20Z, to http://b:2"
            )
        );
        assert!(
            cut.follow(b, Some(t2))
                .is_some_and(|l| l.contains("http://b:2"))
        );
    }

    #[test]
    fn the_tenant_is_read_from_the_token_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"configwatch","custom:tenantId":"acme"}"#);
        assert_eq!(
            token_tenant(&format!("h.{payload}.s")).as_deref(),
            Some("acme")
        );
        let none = URL_SAFE_NO_PAD.encode(r#"{"iss":"configwatch"}"#);
        assert_eq!(token_tenant(&format!("h.{none}.s")), None);
        assert_eq!(token_tenant("not a token"), None);
    }
}
