//! The command line: `put`/`delete --reason`, `history` (one JSON object per
//! version, newest first, every page), `rollback --to-version` (a new version with
//! the old value, reaching watchers like any write; compare-and-set on the current
//! version), and their exit codes.

use std::process::{Command, Output};

use serde_json::Value;

use super::*;

const KEY: &str = "tenant_config_flags";

fn cli(server: &ServerProcess, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CONFIGWATCH_SERVER", server.url())
        .env("CONFIGWATCH_TOKEN", token)
        .output()
        .expect("run configwatch")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn history_and_rollback_end_to_end() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let alice = token_of(dir.path(), "acme", None, Role::Writer, "alice");
    let bob = token_of(dir.path(), "acme", None, Role::Writer, "bob");
    for n in 1..=5 {
        let who = if n % 2 == 1 { &alice } else { &bob };
        let value = format!("{{\"n\":{n},\"big\":12345678901234567890.5}}");
        let reason = format!("change {n}");
        let out = cli(&server, who, &["put", KEY, &value, "--reason", &reason]);
        assert_eq!(lines(&out)[0]["version"], n, "{out:?}");
    }

    // Every version, newest first, values as JSON (every digit kept).
    let out = cli(&server, &alice, &["history", KEY]);
    let listed = lines(&out);
    let versions: Vec<u64> = listed
        .iter()
        .map(|l| l["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![5, 4, 3, 2, 1]);
    assert_eq!(listed[3]["subject"], "bob");
    assert_eq!(listed[3]["reason"], "change 2");
    assert_eq!(listed[3]["previous_version"], 1);
    assert_eq!(listed[3]["instance"], INSTANCE);
    assert_eq!(listed[3]["source"], "api");
    assert!(listed[3]["value"].is_object(), "{}", listed[3]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(text.contains("12345678901234567890.5"), "{text}");
    let out = cli(&server, &alice, &["history", KEY, "--limit", "2"]);
    assert_eq!(lines(&out).len(), 2);

    // A watcher sees the rollback as the write it is.
    let mut watcher = client_of(&server, &alice).await;
    let mut stream = watch(&mut watcher, watch_prefixes(&["tenant_config_"])).await;
    initial(&mut stream).await;
    let out = cli(&server, &bob, &["rollback", KEY, "--to-version", "2"]);
    assert_eq!(lines(&out)[0]["version"], 6, "{out:?}");
    let change = &changes(&mut stream, 1).await[0];
    assert_eq!((change.key.as_str(), change.version), (KEY, 6));
    assert_eq!(change.value, "{\"n\":2,\"big\":12345678901234567890.5}");
    let newest = &lines(&cli(&server, &alice, &["history", KEY, "--limit", "1"]))[0];
    assert_eq!(newest["reason"], "rollback to version 2");
    assert_eq!(newest["subject"], "bob");
    assert_eq!(newest["previous_version"], 5);

    // A stale --expect-version: FAILED_PRECONDITION naming the current version,
    // exit 1, nothing written.
    let out = cli(
        &server,
        &bob,
        &[
            "rollback",
            KEY,
            "--to-version",
            "1",
            "--expect-version",
            "5",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("current version is 6"),
        "{err}"
    );
    let newest = &lines(&cli(&server, &alice, &["history", KEY, "--limit", "1"]))[0];
    assert_eq!(newest["version"], 6);

    // Rolling back to a delete deletes; back again with a reason of one's own.
    let out = cli(&server, &alice, &["delete", KEY, "--reason", "off for now"]);
    assert_eq!(lines(&out)[0]["version"], 7);
    put_because(&mut watcher, KEY, "{\"n\":8}", "on again").await;
    let out = cli(&server, &alice, &["rollback", KEY, "--to-version", "7"]);
    assert_eq!(lines(&out)[0]["deleted"], true);
    let out = cli(
        &server,
        &alice,
        &["rollback", KEY, "--to-version", "3", "--reason", "INC-42"],
    );
    assert_eq!(lines(&out)[0]["version"], 10);
    let listed = lines(&cli(&server, &alice, &["history", KEY, "--limit", "4"]));
    assert_eq!(listed[0]["reason"], "INC-42");
    assert_eq!(listed[1]["deleted"], true);
    assert!(listed[1].get("value").is_none(), "{}", listed[1]);
    assert_eq!(listed[1]["reason"], "rollback to version 7");
    assert_eq!(listed[2]["reason"], "on again");
    assert_eq!(listed[3]["reason"], "off for now");
}

#[tokio::test]
async fn the_commands_exit_codes() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let writer = token_of(dir.path(), "acme", None, Role::Writer, "w");
    put_because(&mut client_of(&server, &writer).await, KEY, "1", "r").await;
    // A version that is not kept, a key that escapes: errors from the server.
    let out = cli(&server, &writer, &["rollback", KEY, "--to-version", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    let out = cli(&server, &writer, &["history", "tenant_config_../x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A reader may list but not roll back.
    let reader = token_of(dir.path(), "acme", None, Role::Reader, "r");
    assert!(cli(&server, &reader, &["history", KEY]).status.success());
    let out = cli(&server, &reader, &["rollback", KEY, "--to-version", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
    // Usage: exit 64.
    for bad in [
        &["rollback", KEY][..],
        &["rollback", KEY, "--to-version", "0"],
        &["rollback", KEY, "--to-version", "x"],
        &["history"],
    ] {
        let out = cli(&server, &writer, bad);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
    }
    let out = cli(
        &server,
        &writer,
        &["put", KEY, "2", "--reason", &"x".repeat(300)],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("256"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_secret_rolls_back_to_its_old_value_and_stays_secret() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let writer = token_of(dir.path(), "acme", None, Role::Writer, "w");
    let mut c = client_of(&server, &writer).await;
    for value in ["\"old-pass\"", "\"new-pass\""] {
        c.put(proto::PutRequest {
            key: "param_config_db/pass".into(),
            value: value.into(),
            secret: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let out = cli(
        &server,
        &writer,
        &["rollback", "param_config_db/pass", "--to-version", "1"],
    );
    assert_eq!(lines(&out)[0]["version"], 3, "{out:?}");
    let got = get_keys(&mut c, &["param_config_db/pass"]).await;
    assert_eq!(got.entries[0].value, "\"old-pass\"");
    assert!(got.entries[0].secret);
    // The rollback's output names no value.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("old-pass"));
}
