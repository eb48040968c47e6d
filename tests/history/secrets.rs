//! A secret's history: its values only in a History reply to its own tenant (as
//! Get gives them), never to a relay's token, never in a Watch, never in the
//! server's log, even at debug.

use std::process::Stdio;

use super::*;

const SECRET: &str = "param_config_db/password";
const VALUES: [&str; 2] = ["\"hunter2-first\"", "\"hunter2-second\""];

#[tokio::test]
async fn a_secrets_values_reach_only_its_own_tenants_history() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let mut command = serve_command(dir.path(), &["--instance-name", INSTANCE]);
    command
        .env("CONFIGWATCH_LOG", "debug")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let server = ServerProcess::start(command).await;
    let mut writer = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "w"),
    )
    .await;
    let mut stream = watch(&mut writer, watch_prefixes(&["param_config_db/"])).await;
    initial(&mut stream).await;
    for value in VALUES {
        writer
            .put(proto::PutRequest {
                key: SECRET.into(),
                value: value.into(),
                secret: true,
                reason: "rotate".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The watcher hears of each version, without its value.
    for change in changes(&mut stream, 2).await {
        assert!(change.secret && change.value.is_empty(), "{change:?}");
    }

    // Its tenant's History (a reader included) has both values.
    let mut reader = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Reader, "r"),
    )
    .await;
    let versions = all_versions(&mut reader, SECRET).await;
    let values: Vec<&str> = versions.iter().map(|v| v.value.as_str()).collect();
    assert_eq!(values, vec![VALUES[1], VALUES[0]]);
    assert!(versions.iter().all(|v| v.secret));

    // A relay's own token names the tenant and gets the versions without values.
    let (key, _) = LocalKey::load_or_create(dir.path()).unwrap();
    let relay_token = key.issue_relay(Duration::from_secs(600), "relay").unwrap();
    let mut relay = client_of(&server, &relay_token).await;
    let versions = named(&mut relay, "acme", "", SECRET)
        .await
        .unwrap()
        .versions;
    assert_eq!(numbers(&versions), vec![2, 1]);
    assert!(versions.iter().all(|v| v.secret && v.value.is_empty()));

    // Another tenant gets nothing of it.
    let mut other = client_of(
        &server,
        &token_of(dir.path(), "globex", None, Role::Admin, "g"),
    )
    .await;
    assert!(all_versions(&mut other, SECRET).await.is_empty());

    drop(stream);
    server.terminate(Duration::from_secs(10)).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "the log was at debug");
    for value in VALUES {
        let bare = value.trim_matches('"');
        assert!(!text.contains(bare), "the log holds a secret's value");
    }
}
