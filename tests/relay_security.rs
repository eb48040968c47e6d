//! A relay refuses writes and cross-tenant reads that the origin would refuse, with
//! the caller's token, and never caches a secret: an embedded origin and a relay in
//! front of it, both as `configwatch serve` processes; every refusal asked of both
//! and compared. Also the relay's own credential rotated without a restart, and the
//! relay configurations that must not start.
//!
//! Boundary: what a client of the relay sees (statuses, entries, stream messages)
//! and the binary's exit; nothing of the relay's internals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::{KEY_FILE, LocalKey};
use configwatch::clock::Clock;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch_test_support::{Scrape, ServerProcess, eventually, run_to_exit};
use tonic::{Code, Status};

/// An origin on the embedded store and a relay whose only upstream it is.
struct Tier {
    origin: ServerProcess,
    relay: ServerProcess,
    origin_dir: tempfile::TempDir,
    relay_dir: tempfile::TempDir,
}

impl Tier {
    /// Starts both; the relay's token file holds `relay_token`, or a valid relay
    /// token when `None`.
    async fn start(relay_token: Option<&str>) -> Tier {
        let origin_dir = temp_dir();
        let origin = ServerProcess::start(serve_command(origin_dir.path(), &[])).await;
        let relay_dir = temp_dir();
        std::fs::copy(
            origin_dir.path().join(KEY_FILE),
            relay_dir.path().join(KEY_FILE),
        )
        .expect("copy the origin's signing key");
        let token = match relay_token {
            Some(t) => t.to_owned(),
            None => relay_token_of(origin_dir.path()),
        };
        let file = relay_dir.path().join("upstream-token");
        std::fs::write(&file, token).expect("write the token file");
        let relay =
            ServerProcess::start(relay_command(relay_dir.path(), &origin.url(), &file)).await;
        Tier {
            origin,
            relay,
            origin_dir,
            relay_dir,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.relay_dir.path().join("upstream-token")
    }

    /// A token of `tenant` (narrowed to `service` when given) signed by the origin.
    fn token(&self, tenant: &str, service: Option<&str>, role: Role) -> String {
        let scope = Scope::new(tenant, service).expect("scope");
        key_of(self.origin_dir.path())
            .issue(&scope, role, Duration::from_secs(600), "test")
            .expect("token")
    }
}

fn key_of(dir: &Path) -> LocalKey {
    LocalKey::load_or_create(dir).expect("signing key").0
}

fn relay_token_of(origin_dir: &Path) -> String {
    key_of(origin_dir)
        .issue_relay(Duration::from_secs(600), "relay")
        .expect("relay token")
}

/// `serve --upstream URL --upstream-token-file FILE` on `dir`.
fn relay_command(dir: &Path, upstream: &str, token_file: &Path) -> std::process::Command {
    let mut command = serve_command(
        dir,
        &["--admin-listen", "127.0.0.1:0", "--upstream", upstream],
    );
    command.arg("--upstream-token-file").arg(token_file);
    command
}

/// One call a test asks of both servers.
#[derive(Clone, Debug)]
enum Call {
    Get(proto::GetRequest),
    Watch(proto::WatchRequest),
    Put(proto::PutRequest),
    Delete(proto::DeleteRequest),
}

impl Call {
    fn put(key: &str, value: &str, tenant: &str) -> Call {
        Call::Put(proto::PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        })
    }

    fn delete(key: &str, tenant: &str) -> Call {
        Call::Delete(proto::DeleteRequest {
            key: key.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        })
    }

    fn get(tenant: &str, service: &str) -> Call {
        Call::Get(proto::GetRequest {
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        })
    }

    fn watch(tenant: &str, service: &str) -> Call {
        Call::Watch(proto::WatchRequest {
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        })
    }

    /// Runs the call on `addr`: a Watch counts as answered once its first message
    /// arrives (a refusal comes at the call or as the stream's first item).
    async fn on(&self, addr: SocketAddr, token: Option<&str>) -> Result<(), Status> {
        let mut client = connect(addr, token).await;
        match self.clone() {
            Call::Get(r) => client.get(r).await.map(drop),
            Call::Put(r) => client.put(r).await.map(drop),
            Call::Delete(r) => client.delete(r).await.map(drop),
            Call::Watch(r) => {
                let mut stream = client.watch(r).await?.into_inner();
                match tokio::time::timeout(PATIENCE, stream.message()).await {
                    Ok(first) => first.map(drop),
                    Err(_) => panic!("a watch neither answered nor ended within {PATIENCE:?}"),
                }
            }
        }
    }
}

/// A refusal both servers must give alike.
struct Refusal {
    what: &'static str,
    token: Option<String>,
    call: Call,
    code: Code,
}

/// Asks `refusal` of the origin and of the relay: both refuse with `code`, and the
/// relay's message is the origin's (it names what to fix).
async fn refused_alike(tier: &Tier, refusal: &Refusal) {
    let token = refusal.token.as_deref();
    let origin = refusal.call.on(tier.origin.addr, token).await;
    let relay = refusal.call.on(tier.relay.addr, token).await;
    let (origin, relay) = match (origin, relay) {
        (Err(origin), Err(relay)) => (origin, relay),
        answered => panic!(
            "{}: both must refuse {:?}; (origin, relay) answered {answered:?}",
            refusal.what, refusal.call
        ),
    };
    assert_eq!(
        origin.code(),
        refusal.code,
        "{}: origin {origin:?}",
        refusal.what
    );
    assert_eq!(
        relay.code(),
        refusal.code,
        "{}: relay {relay:?}",
        refusal.what
    );
    assert!(!relay.message().is_empty(), "{}: {relay:?}", refusal.what);
    assert_eq!(
        relay.message(),
        origin.message(),
        "{}: the relay says what the origin says",
        refusal.what
    );
}

#[tokio::test]
async fn a_relay_refuses_what_the_origin_refuses_with_the_same_status() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    let reader = tier.token("acme", None, Role::Reader);
    let billing = tier.token("acme", Some("billing"), Role::Writer);
    let relay = relay_token_of(tier.origin_dir.path());
    let expired = key_of(tier.origin_dir.path())
        .with_clock(Clock::starting_at(
            SystemTime::now() - Duration::from_secs(7200),
        ))
        .issue(
            &Scope::tenant("acme").unwrap(),
            Role::Writer,
            Duration::from_secs(3600),
            "test",
        )
        .unwrap();
    // Both tenants hold something, and the relay has loaded acme: a refusal is a
    // refusal, not a missing view.
    Call::put("tenant_config_a", "1", "")
        .on(tier.origin.addr, Some(&writer))
        .await
        .unwrap();
    let globex = tier.token("globex", None, Role::Writer);
    Call::put("tenant_config_b", "2", "")
        .on(tier.origin.addr, Some(&globex))
        .await
        .unwrap();
    Call::get("", "")
        .on(tier.relay.addr, Some(&reader))
        .await
        .unwrap();

    let deny = Code::PermissionDenied;
    let unauth = Code::Unauthenticated;
    let cases = [
        (
            "a reader's Put",
            Some(&reader),
            Call::put("tenant_config_a", "3", ""),
            deny,
        ),
        (
            "a reader's Delete",
            Some(&reader),
            Call::delete("tenant_config_a", ""),
            deny,
        ),
        (
            "tenant A's Get naming B",
            Some(&writer),
            Call::get("globex", ""),
            deny,
        ),
        (
            "tenant A's Watch naming B",
            Some(&writer),
            Call::watch("globex", ""),
            deny,
        ),
        (
            "tenant A's Put naming B",
            Some(&writer),
            Call::put("tenant_config_b", "3", "globex"),
            deny,
        ),
        (
            "a tenant-wide token's Get naming a service",
            Some(&reader),
            Call::get("", "billing"),
            deny,
        ),
        (
            "a tenant-wide token's Watch naming a service",
            Some(&reader),
            Call::watch("", "billing"),
            deny,
        ),
        (
            "a service token's Get naming another",
            Some(&billing),
            Call::get("", "shipping"),
            deny,
        ),
        (
            "a service token's Watch naming another",
            Some(&billing),
            Call::watch("", "shipping"),
            deny,
        ),
        ("a Get without a token", None, Call::get("", ""), unauth),
        ("a Watch without a token", None, Call::watch("", ""), unauth),
        (
            "a Put without a token",
            None,
            Call::put("tenant_config_a", "3", ""),
            unauth,
        ),
        (
            "an expired token's Get",
            Some(&expired),
            Call::get("", ""),
            unauth,
        ),
        (
            "an expired token's Watch",
            Some(&expired),
            Call::watch("", ""),
            unauth,
        ),
        (
            "an expired token's Put",
            Some(&expired),
            Call::put("tenant_config_a", "3", ""),
            unauth,
        ),
        (
            "a relay token's Put",
            Some(&relay),
            Call::put("tenant_config_a", "3", "acme"),
            deny,
        ),
        (
            "a relay token's Delete",
            Some(&relay),
            Call::delete("tenant_config_a", "acme"),
            deny,
        ),
        (
            "a relay token's Get naming no tenant",
            Some(&relay),
            Call::get("", ""),
            Code::InvalidArgument,
        ),
        (
            "a relay token's Watch naming no tenant",
            Some(&relay),
            Call::watch("", ""),
            Code::InvalidArgument,
        ),
    ];
    for (what, token, call, code) in cases {
        let refusal = Refusal {
            what,
            token: token.cloned(),
            call,
            code,
        };
        refused_alike(&tier, &refusal).await;
    }
    // Nothing refused was written: acme's key is still at its first version, and
    // globex's untouched.
    let mut c = connect(tier.origin.addr, Some(&writer)).await;
    let got = get_keys(&mut c, &["tenant_config_a"]).await;
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_a".to_owned(), 1, false)]
    );
    let mut c = connect(tier.origin.addr, Some(&globex)).await;
    let got = get_keys(&mut c, &["tenant_config_b"]).await;
    assert_eq!(got.entries[0].value, "2");
}

#[tokio::test]
async fn a_relay_answers_bad_writes_as_the_origin_does() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    Call::put("tenant_config_a", "1", "")
        .on(tier.origin.addr, Some(&writer))
        .await
        .unwrap();
    let put = |key: &str, value: &str, secret: bool, expected: Option<u64>| {
        Call::Put(proto::PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            secret,
            expected_version: expected,
            ..Default::default()
        })
    };
    let invalid = Code::InvalidArgument;
    let cases = [
        (
            "a key of no family",
            put("other_config_a", "1", false, None),
            invalid,
        ),
        (
            "a key reaching out of its tenant",
            put("tenant_config_../a", "1", false, None),
            invalid,
        ),
        (
            "a value that is not JSON",
            put("tenant_config_a", "{", false, None),
            invalid,
        ),
        (
            "a secret outside Parameter Store",
            put("tenant_config_a", r#""s""#, true, None),
            invalid,
        ),
        (
            "a parameter that is not a string",
            put("param_config_a", r#"{"a":1}"#, false, None),
            invalid,
        ),
        (
            "a stale compare-and-set",
            put("tenant_config_a", "2", false, Some(7)),
            Code::FailedPrecondition,
        ),
        (
            "a delete of a key that does not exist",
            Call::delete("tenant_config_missing", ""),
            Code::NotFound,
        ),
    ];
    for (what, call, code) in cases {
        let refusal = Refusal {
            what,
            token: Some(writer.clone()),
            call,
            code,
        };
        refused_alike(&tier, &refusal).await;
    }
}

#[tokio::test]
async fn a_service_token_reads_its_service_through_the_relay() {
    let tier = Tier::start(None).await;
    let billing = tier.token("acme", Some("billing"), Role::Writer);
    let tenant_wide = tier.token("acme", None, Role::Writer);
    let mut at_origin = connect(tier.origin.addr, Some(&billing)).await;
    put(&mut at_origin, "tenant_config_rates", r#"{"eur":1}"#).await;
    let mut wide_at_origin = connect(tier.origin.addr, Some(&tenant_wide)).await;
    put(&mut wide_at_origin, "tenant_config_theme", r#""dark""#).await;

    let mut through = connect(tier.relay.addr, Some(&billing)).await;
    for service in ["", "billing"] {
        let got = through
            .get(proto::GetRequest {
                service: service.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("a Get naming service {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            summary(&got.entries),
            [("tenant_config_rates".to_owned(), 1, false)],
            "the service's configuration, nothing of the tenant's"
        );
    }
    let mut w = watch(
        &mut through,
        proto::WatchRequest {
            service: "billing".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let (held, _) = initial(&mut w).await;
    assert_eq!(
        summary(&held),
        [("tenant_config_rates".to_owned(), 1, false)]
    );
    put(&mut at_origin, "tenant_config_rates", r#"{"eur":2}"#).await;
    let delta = changes(&mut w, 1).await;
    assert_eq!(
        summary(&delta),
        [("tenant_config_rates".to_owned(), 2, false)]
    );
    assert_eq!(delta[0].value, r#"{"eur":2}"#);

    // A write through the relay carries the caller's token: it lands in the
    // service's scope (the relay's own token could not write at all).
    put(&mut through, "tenant_config_limits", "5").await;
    let got = get_keys(&mut at_origin, &["tenant_config_limits"]).await;
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_limits".to_owned(), 1, false)]
    );

    // The tenant-wide view through the same relay holds the tenant's keys only.
    let mut wide = connect(tier.relay.addr, Some(&tenant_wide)).await;
    let got = wide
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_theme".to_owned(), 1, false)]
    );
    // One upstream Watch per scope the relay serves: the service's and the tenant's.
    let admin = tier.relay.admin.expect("the relay's admin listener");
    let scrape = Scrape::take(admin).await;
    assert_eq!(scrape.value("configwatch_relay_upstream_watches"), 2.0);
}

const SECRET: &str = "param_config_db/password";

fn secret_put(value: &str) -> proto::PutRequest {
    proto::PutRequest {
        key: SECRET.to_owned(),
        value: value.to_owned(),
        secret: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_secret_is_read_upstream_at_every_get_and_never_pushed_by_the_relay() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    let mut relay = connect(tier.relay.addr, Some(&writer)).await;
    let written = relay
        .put(secret_put(r#""s3cret""#))
        .await
        .expect("a secret written through the relay")
        .into_inner()
        .entry
        .expect("entry");
    assert!(written.secret && written.version == 1, "{written:?}");

    let got = get_keys(&mut relay, &[SECRET]).await;
    assert_eq!(got.entries.len(), 1, "{got:?}");
    assert!(got.entries[0].secret);
    assert_eq!(got.entries[0].value, r#""s3cret""#, "a Get reads the value");

    let mut w = watch(&mut relay, watch_prefixes(&["param_config_"])).await;
    let (held, _) = initial(&mut w).await;
    assert_eq!(summary(&held), [(SECRET.to_owned(), 1, false)]);
    assert!(held[0].secret && held[0].value.is_empty(), "{held:?}");

    // Changed at the origin: the relay's next Get, at once, has the new value.
    let mut origin = connect(tier.origin.addr, Some(&writer)).await;
    origin.put(secret_put(r#""rotated""#)).await.unwrap();
    let got = get_keys(&mut relay, &[SECRET]).await;
    assert_eq!(got.entries[0].value, r#""rotated""#, "{got:?}");
    let whole = relay
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.entries[0].value, r#""rotated""#, "{whole:?}");
    // The Watch hears that it changed, never what it is.
    let delta = changes(&mut w, 1).await;
    assert_eq!(summary(&delta), [(SECRET.to_owned(), 2, false)]);
    assert!(delta[0].secret && delta[0].value.is_empty(), "{delta:?}");
    let mut late = watch(&mut relay, watch_prefixes(&[])).await;
    let (held, _) = initial(&mut late).await;
    assert!(held.iter().all(|e| e.value.is_empty()), "{held:?}");

    // With the origin gone, the relay still serves what it holds, but not the
    // secret's value: it has none to serve.
    put(&mut relay, "tenant_config_plain", "1").await;
    tier.origin.kill9().await;
    let plain = get_keys(&mut relay, &["tenant_config_plain"]).await;
    assert_eq!(plain.entries[0].value, "1", "{plain:?}");
    let status = relay
        .get(proto::GetRequest {
            keys: vec![SECRET.to_owned()],
            ..Default::default()
        })
        .await
        .expect_err("no secret without the origin");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
}

#[tokio::test]
async fn a_rotated_upstream_token_file_is_used_without_a_restart() {
    let tier = Tier::start(Some("not-a-token")).await;
    let writer = tier.token("acme", None, Role::Writer);
    let mut origin = connect(tier.origin.addr, Some(&writer)).await;
    put(&mut origin, "tenant_config_a", "1").await;

    let refused = Call::get("", "")
        .on(tier.relay.addr, Some(&writer))
        .await
        .expect_err("the upstream refuses the relay's token");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("Unauthenticated"), "{refused:?}");

    // Rotated in place (written over), as an operator would.
    std::fs::write(tier.token_file(), relay_token_of(tier.origin_dir.path())).unwrap();
    let relay_addr = tier.relay.addr;
    let got = eventually(
        Duration::from_secs(30),
        || "the relay to serve with its new token".to_owned(),
        || {
            let writer = writer.clone();
            async move {
                let mut c = connect(relay_addr, Some(&writer)).await;
                c.get(proto::GetRequest::default()).await.ok()
            }
        },
    )
    .await
    .into_inner();
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_a".to_owned(), 1, false)]
    );
}

#[test]
fn a_relay_that_cannot_work_exits_64_naming_the_fix() {
    let origin_dir = temp_dir();
    let token = relay_token_of(origin_dir.path());
    let keyed = temp_dir();
    std::fs::copy(
        origin_dir.path().join(KEY_FILE),
        keyed.path().join(KEY_FILE),
    )
    .unwrap();
    let keyless = temp_dir();
    let file = keyed.path().join("upstream-token");
    std::fs::write(&file, token).unwrap();
    let file = file.to_str().unwrap();
    let upstream = "http://127.0.0.1:9";
    let cases: [(&str, &Path, Vec<&str>, &str); 4] = [
        (
            "no signing key",
            keyless.path(),
            vec!["--upstream", upstream, "--upstream-token-file", file],
            "copy signing-key.pem from the upstream's data directory",
        ),
        (
            "no token file",
            keyed.path(),
            vec!["--upstream", upstream],
            "--upstream needs --upstream-token-file",
        ),
        (
            // An origin's command with --upstream added.
            "a relay on AWS",
            keyed.path(),
            vec![
                "--upstream",
                upstream,
                "--upstream-token-file",
                file,
                "--backend",
                "aws",
                "--table",
                "configwatch-tenant-config",
            ],
            "leave out --backend aws",
        ),
        (
            "TLS to the upstream",
            keyed.path(),
            vec![
                "--upstream",
                "https://127.0.0.1:9",
                "--upstream-token-file",
                file,
            ],
            "reach it over http://",
        ),
    ];
    for (what, dir, args, fix) in cases {
        let out = run_to_exit(
            serve_command(dir, &args),
            Duration::from_secs(20),
            &format!("{what}: the relay did not exit"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
        assert!(
            stderr.contains(fix),
            "{what}: the message names the fix: {stderr}"
        );
    }
}
