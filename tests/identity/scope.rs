//! What a token reaches: its own tenant only, and a service token its own service.

use super::*;

#[tokio::test]
async fn keys_and_prefixes_cannot_reach_another_tenant() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut a = server.client("tenant-a", Role::Writer).await;
    let mut b = server.client("tenant-b", Role::Writer).await;
    put(&mut b, "param_config_db/url", "\"b's database\"").await;

    for key in [
        "param_config_../tenant-b/db/url",
        "param_config_..%2Ftenant-b%2Fdb%2Furl",
        "param_config_db/../../tenant-b/db/url",
        "param_config_/tenant-b/db/url",
        "tenant_config_..",
    ] {
        let err = a
            .get(proto::GetRequest {
                keys: vec![key.into()],
                ..Default::default()
            })
            .await
            .expect_err(key);
        assert_eq!(err.code(), Code::InvalidArgument, "{key}");
    }
    for prefix in ["param_config_../", "param_config_%2E%2E/", "../"] {
        let err = a.watch(watch_prefixes(&[prefix])).await.expect_err(prefix);
        assert_eq!(err.code(), Code::InvalidArgument, "{prefix}");
    }
    // A path that starts with another tenant's name is a path inside one's own tenant.
    put(&mut a, "param_config_tenant-b/db/url", "\"a's own\"").await;
    let mine = a
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.entries.len(), 1);
    assert_eq!(mine.entries[0].value, "\"a's own\"");
    let theirs = b
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.entries.len(), 1);
    assert_eq!(theirs.entries[0].value, "\"b's database\"");
    server.stop().await;
}

#[tokio::test]
async fn a_service_token_sees_only_its_service() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let (key, _) = LocalKey::load_or_create(dir.path()).unwrap();
    let token = |service: Option<&str>, role| {
        key.issue(
            &Scope::new("acme", service).unwrap(),
            role,
            Duration::from_secs(600),
            "t",
        )
        .unwrap()
    };
    let mut tenant_wide = connect(server.addr, Some(&token(None, Role::Writer))).await;
    let mut orders = connect(server.addr, Some(&token(Some("orders"), Role::Writer))).await;
    let mut billing = connect(server.addr, Some(&token(Some("billing"), Role::Reader))).await;
    put(&mut tenant_wide, "tenant_config_shared", "\"tenant-wide\"").await;
    put(&mut orders, "tenant_config_payment", "\"orders only\"").await;

    let keys_of =
        |r: proto::GetResponse| -> Vec<String> { r.entries.into_iter().map(|e| e.key).collect() };
    let seen = keys_of(
        orders
            .get(proto::GetRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(seen, ["tenant_config_payment"]);
    let seen = keys_of(
        billing
            .get(proto::GetRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(seen.is_empty(), "billing sees nothing of orders: {seen:?}");
    let seen = keys_of(
        tenant_wide
            .get(proto::GetRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(seen, ["tenant_config_shared"]);
    // A watch is scoped the same way.
    let mut w = watch(&mut billing, watch_prefixes(&[])).await;
    let (init, _) = initial(&mut w).await;
    assert!(init.is_empty());
    put(&mut orders, "tenant_config_payment", "\"orders v2\"").await;
    put(&mut tenant_wide, "tenant_config_shared", "\"v2\"").await;
    let mut billing_writer =
        connect(server.addr, Some(&token(Some("billing"), Role::Writer))).await;
    put(&mut billing_writer, "tenant_config_invoice", "1").await;
    let got = changes(&mut w, 1).await;
    assert_eq!(summary(&got), [("tenant_config_invoice".into(), 1, false)]);
    server.stop().await;
}
