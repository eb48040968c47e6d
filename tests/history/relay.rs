//! History through a relay: forwarded upstream with the caller's own token (relays
//! keep no history), answering as the origin does, refusals included; a write
//! through the relay records its writer and reason at the origin.

use std::process::Stdio;

use super::*;

#[tokio::test]
async fn a_relay_forwards_history_and_answers_as_its_origin() {
    let dir = temp_dir();
    let origin_dir = dir.path().join("origin");
    let relay_dir = dir.path().join("relay");
    std::fs::create_dir_all(&origin_dir).unwrap();
    std::fs::create_dir_all(&relay_dir).unwrap();
    let origin = server(&origin_dir, &[]).await;
    let (key, _) = LocalKey::load_or_create(&origin_dir).unwrap();
    std::fs::copy(
        origin_dir.join(configwatch::auth::local::KEY_FILE),
        relay_dir.join(configwatch::auth::local::KEY_FILE),
    )
    .unwrap();
    let token_file = relay_dir.join("relay.token");
    std::fs::write(
        &token_file,
        key.issue_relay(Duration::from_secs(600), "relay").unwrap(),
    )
    .unwrap();
    let mut command = serve_command(
        &relay_dir,
        &[
            "--upstream",
            &origin.url(),
            "--upstream-token-file",
            token_file.to_str().unwrap(),
            "--instance-name",
            "cw-relay-1",
        ],
    );
    command.stderr(Stdio::null());
    let relay = ServerProcess::start(command).await;

    let writer = token_of(&origin_dir, "acme", None, Role::Writer, "alice");
    let mut at_relay = client_of(&relay, &writer).await;
    let mut at_origin = client_of(&origin, &writer).await;
    put_because(&mut at_relay, "tenant_config_k", "1", "through the relay").await;
    put_because(&mut at_origin, "tenant_config_k", "2", "at the origin").await;
    put_because(&mut at_origin, "param_config_s", "\"v\"", "not a secret").await;

    let via_relay = all_versions(&mut at_relay, "tenant_config_k").await;
    let direct = all_versions(&mut at_origin, "tenant_config_k").await;
    assert_eq!(via_relay, direct);
    assert_eq!(numbers(&via_relay), vec![2, 1]);
    // The origin accepted both writes: it is the instance recorded.
    assert_eq!(via_relay[1].reason, "through the relay");
    assert_eq!(via_relay[1].subject, "alice");
    assert_eq!(via_relay[1].instance, INSTANCE);

    // Refusals come back as the origin gives them.
    let other = token_of(&origin_dir, "globex", None, Role::Reader, "g");
    let mut other = client_of(&relay, &other).await;
    let refused = named(&mut other, "acme", "", "tenant_config_k")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let missing = one_version(&mut at_relay, "tenant_config_k", 7)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
