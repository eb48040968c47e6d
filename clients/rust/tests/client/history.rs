//! A key's history read on demand: every kept version newest first, with who wrote
//! it and what it replaced, up to a limit; a secret's values as `read_secret` gives
//! them; never cached.

use super::*;

#[tokio::test]
async fn a_keys_versions_are_read_newest_first_up_to_a_limit() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    for n in 1..=3 {
        w.put("tenant_config_a", json!({ "n": n })).await;
    }
    w.delete("tenant_config_a").await;
    w.put_secret("param_config_db/password", "hunter2").await;

    let client = server.builder(TENANT).await.connect().await.unwrap();
    let all = client.history("tenant_config_a", 100).await.unwrap();
    let versions: Vec<(u64, u64, bool)> = all
        .iter()
        .map(|v| (v.version, v.previous_version, v.deleted))
        .collect();
    assert_eq!(
        versions,
        vec![(4, 3, true), (3, 2, false), (2, 1, false), (1, 0, false)]
    );
    assert_eq!(all[0].value, None);
    assert_eq!(all[1].value.as_deref(), Some("{\"n\":3}"));
    assert!(
        all.iter()
            .all(|v| v.source == "api" && v.written_at.is_some())
    );
    let newest = client.history("tenant_config_a", 2).await.unwrap();
    assert_eq!(newest, all[..2].to_vec());
    assert!(
        client
            .history("tenant_config_never", 10)
            .await
            .unwrap()
            .is_empty()
    );

    let secret = client
        .history("param_config_db/password", 10)
        .await
        .unwrap();
    assert_eq!(secret[0].value.as_deref(), Some("\"hunter2\""));
    assert!(secret[0].secret);
    // Never cached.
    assert!(!format!("{:?}", client.entries()).contains("hunter2"));

    let e = client.history("bogus", 10).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    client.close().await;
    assert!(matches!(
        client.history("tenant_config_a", 1).await,
        Err(Error::Closed)
    ));
}
