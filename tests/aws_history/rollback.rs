//! The path an operator takes on AWS, end to end on moto: a server process on the
//! DynamoDB backend, five writes through it with reasons by two writers (the
//! command line), two more by another tool directly in the table; `configwatch
//! history` lists all seven with their writers, reasons and the instance that saw
//! the other tool's; `configwatch rollback --to-version 2` makes version 8 with
//! version 2's value, and a watcher receives it.

use std::path::Path;
use std::process::{Command, Output};

use configwatch::auth::local::LocalKey;
use configwatch_test_support::moto::{REGION, ROOT, Resources};
use configwatch_test_support::{ServerProcess, temp_dir};
use serde_json::Value;

use super::*;

const BIN: &str = env!("CARGO_BIN_EXE_configwatch");
const INSTANCE: &str = "origin-a";

async fn start_server(dir: &Path, moto: &Moto, res: &Resources) -> ServerProcess {
    let mut command = serve_command(dir, &["--backend", "aws", "--instance-name", INSTANCE]);
    command
        .args(["--table", &res.table, "--queue-url", &res.queue_url])
        .args(["--ssm-root", ROOT, "--region", REGION])
        .args(["--stream-poll-interval", "100ms"])
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    ServerProcess::start(command).await
}

fn token_of(dir: &Path, subject: &str) -> String {
    let (key, _) = LocalKey::load_or_create(dir).unwrap();
    key.issue(
        &Scope::tenant("acme").unwrap(),
        Role::Writer,
        Duration::from_secs(600),
        subject,
    )
    .unwrap()
}

fn cli(server: &ServerProcess, token: &str, args: &[&str]) -> Vec<Value> {
    let out: Output = Command::new(BIN)
        .args(args)
        .env("CONFIGWATCH_SERVER", server.url())
        .env("CONFIGWATCH_TOKEN", token)
        .output()
        .expect("run configwatch");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Another tool's write: the item with `value` (a string) at `version`.
async fn direct_write(moto: &Moto, table: &str, version: u64, value: &str) {
    moto.dynamodb()
        .await
        .put_item()
        .table_name(table)
        .item("pk", s("TENANT#acme"))
        .item("sk", s("CONFIG#flags"))
        .item("config", s(value))
        .item("isActive", AttributeValue::Bool(true))
        .item("version", n(version))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn seven_versions_with_their_writers_and_a_rollback_that_reaches_a_watcher() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let dir = temp_dir();
    let server = start_server(dir.path(), &moto, &res).await;
    let (alice, bob) = (token_of(dir.path(), "alice"), token_of(dir.path(), "bob"));

    for n in 1..=5u64 {
        let who = if n % 2 == 1 { &alice } else { &bob };
        let value = format!("{{\"n\":{n}}}");
        let reason = format!("change {n}");
        let written = cli(&server, who, &["put", KEY, &value, "--reason", &reason]);
        assert_eq!(written[0]["version"], n);
    }
    direct_write(&moto, &res.table, 6, "console 6").await;
    direct_write(&moto, &res.table, 7, "console 7").await;

    // The server records the other tool's changes as it reads them on the stream.
    let listed = eventually(
        Duration::from_secs(30),
        || "the history to list seven versions, the other tool's recorded".into(),
        || {
            // Until the stream brings it, the current item is listed unrecorded
            // (no instance saw it yet).
            let listed = cli(&server, &alice, &["history", KEY]);
            if listed.len() == 7 && listed[0]["instance"] == "" {
                // The other tool set no `updatedAt`: when is not known yet.
                assert!(listed[0].get("written_at").is_none(), "{}", listed[0]);
            }
            let recorded = listed.len() == 7 && listed[0]["instance"] == INSTANCE;
            std::future::ready(recorded.then_some(listed))
        },
    )
    .await;
    let versions: Vec<u64> = listed
        .iter()
        .map(|l| l["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [7, 6, 5, 4, 3, 2, 1]);
    for (l, n) in listed[2..].iter().zip((1..=5u64).rev()) {
        assert_eq!(l["source"], "api", "{l}");
        assert_eq!(
            l["subject"],
            if n % 2 == 1 { "alice" } else { "bob" },
            "{l}"
        );
        assert_eq!(l["reason"], format!("change {n}"), "{l}");
        assert_eq!(l["instance"], INSTANCE, "{l}");
        assert_eq!(l["value"], serde_json::json!({ "n": n }), "{l}");
        assert_eq!(l["previous_version"], n - 1, "{l}");
    }
    for (l, n) in listed[..2].iter().zip([7u64, 6]) {
        assert_eq!(l["source"], "external", "{l}");
        assert_eq!(l["instance"], INSTANCE, "{l}");
        assert_eq!(l["value"], format!("console {n}"), "{l}");
        assert!(
            l["written_at"]
                .as_str()
                .is_some_and(|t| t.starts_with("20")),
            "{l}"
        );
        assert_eq!(l["previous_version"], n - 1, "{l}");
    }

    // A watcher holding version 7 receives the rollback as the write it is.
    let mut watcher = connect(server.addr, Some(&alice)).await;
    let mut stream = watch(&mut watcher, watch_prefixes(&["tenant_config_"])).await;
    let (held, _) = initial(&mut stream).await;
    assert_eq!(held.iter().map(|e| e.version).collect::<Vec<_>>(), [7]);
    let rolled = cli(&server, &bob, &["rollback", KEY, "--to-version", "2"]);
    assert_eq!(rolled[0]["version"], 8, "{rolled:?}");
    let change = &changes(&mut stream, 1).await[0];
    assert_eq!((change.key.as_str(), change.version), (KEY, 8));
    assert_eq!(change.value, "{\"n\":2}");
    let newest = &cli(&server, &alice, &["history", KEY, "--limit", "1"])[0];
    assert_eq!(newest["subject"], "bob");
    assert_eq!(newest["reason"], "rollback to version 2");
    assert_eq!(newest["previous_version"], 7);
    assert_eq!(newest["source"], "api");
}
