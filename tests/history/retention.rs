//! The retention flags: `--retain-versions` keeps the newest versions (the current
//! one always), `--retain-for` drops versions replaced longer ago; both applied when
//! the key is written. Bad values exit 64 before any port is bound.

use std::process::Command;

use super::*;

#[tokio::test]
async fn retain_versions_keeps_the_newest_and_the_current() {
    let dir = temp_dir();
    let server = server(dir.path(), &["--retain-versions", "3"]).await;
    let mut c = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "a"),
    )
    .await;
    for n in 1..=5 {
        put_because(&mut c, "tenant_config_k", &n.to_string(), "r").await;
    }
    assert_eq!(
        numbers(&all_versions(&mut c, "tenant_config_k").await),
        vec![5, 4, 3]
    );
    let gone = one_version(&mut c, "tenant_config_k", 1).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn retain_for_drops_versions_replaced_long_enough_ago() {
    let dir = temp_dir();
    let server = server(dir.path(), &["--retain-for", "300ms"]).await;
    let mut c = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "a"),
    )
    .await;
    put_because(&mut c, "tenant_config_k", "1", "r").await;
    put_because(&mut c, "tenant_config_k", "2", "r").await;
    // Version 1 ages past the limit (time must pass: that is what is tested).
    tokio::time::sleep(Duration::from_millis(400)).await;
    put_because(&mut c, "tenant_config_k", "3", "r").await;
    // 1 is gone; 2 was replaced just now; 3 is current.
    assert_eq!(
        numbers(&all_versions(&mut c, "tenant_config_k").await),
        vec![3, 2]
    );
    // However old, the current version stays.
    tokio::time::sleep(Duration::from_millis(400)).await;
    put_because(&mut c, "tenant_config_other", "1", "r").await;
    assert_eq!(
        numbers(&all_versions(&mut c, "tenant_config_k").await)[0],
        3
    );
}

#[test]
fn bad_retention_and_instance_flags_exit_64() {
    let dir = temp_dir();
    for bad in [
        &["--retain-versions", "0"][..],
        &["--retain-for", "soon"],
        &["--instance-name", " "],
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        assert!(out.stdout.is_empty(), "no port was bound: {out:?}");
    }
}
