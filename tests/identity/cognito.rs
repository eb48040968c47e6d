//! Real Cognito tokens from moto: ID and access tokens end to end, relays, and a role
//! attribute the user can write.

use super::*;

use configwatch_test_support::cognito::CognitoPool as Pool;

/// One user of `tenant` in `groups`. Returns (pool id, client id, id token, access
/// token).
async fn cognito_user(
    moto: &Moto,
    tenant: &str,
    groups: &[&str],
) -> (String, String, String, String) {
    let pool = Pool::new(moto).await;
    pool.user("svc-user", &[("custom:tenantId", tenant)], groups)
        .await;
    let (id_token, access_token) = pool.sign_in("svc-user").await;
    (pool.id, pool.client, id_token, access_token)
}

async fn cognito_server(
    dir: &std::path::Path,
    moto: &Moto,
    pool: &str,
    client: &str,
    token_use: TokenUse,
) -> TestServer {
    cognito_server_with(dir, moto, pool, client, token_use, None).await
}

/// With a declared admin-only role claim (`--role-claim`).
async fn cognito_server_with(
    dir: &std::path::Path,
    moto: &Moto,
    pool: &str,
    client: &str,
    token_use: TokenUse,
    role_claim: Option<&str>,
) -> TestServer {
    let settings = JwksSettings::new(format!("{}/{pool}/.well-known/jwks.json", moto.endpoint));
    let keys = JwksKeySource::start(settings, CancellationToken::new())
        .await
        .unwrap();
    let rules = ClaimRules {
        // moto signs the real AWS issuer while serving the JWKS itself.
        issuers: vec![format!(
            "https://cognito-idp.us-east-1.amazonaws.com/{pool}"
        )],
        audiences: vec![client.into()],
        token_use,
        role_claim: role_claim.map(str::to_owned),
        ..ClaimRules::default()
    };
    TestServer::start_authed(
        dir,
        Router::single(Arc::new(EmbeddedStore::open(dir).unwrap())),
        Options::default(),
        Authenticator::new(keys, rules),
    )
    .await
}

#[tokio::test]
async fn a_real_cognito_id_token_works_end_to_end() {
    let moto = Moto::start();
    let (pool, client, id_token, access_token) = cognito_user(&moto, "acme", &["writer"]).await;
    let dir = temp_dir();
    let server = cognito_server(dir.path(), &moto, &pool, &client, TokenUse::Id).await;
    let mut c = connect(server.addr, Some(&id_token)).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    initial(&mut w).await;
    put(&mut c, "tenant_config_flags", "{\"beta\":true}").await;
    assert_eq!(
        summary(&changes(&mut w, 1).await),
        [("tenant_config_flags".into(), 1, false)]
    );
    let got = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries.len(), 1);
    // The access token is not an ID token.
    let mut a = connect(server.addr, Some(&access_token)).await;
    let err = a.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("token_use"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn access_tokens_work_with_token_use_access_when_they_carry_the_tenant() {
    let moto = Moto::start();
    let (pool, client, _, access_token) = cognito_user(&moto, "acme", &["reader"]).await;
    let dir = temp_dir();
    let server = cognito_server(dir.path(), &moto, &pool, &client, TokenUse::Access).await;
    // Cognito access tokens carry no custom claims unless a pre-token-generation
    // trigger adds them: refused, saying which claim is missing.
    let mut c = connect(server.addr, Some(&access_token)).await;
    let err = c.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("'custom:tenantId'"), "{err:?}");
    server.stop().await;

    // An access token that does carry the tenant (as such a trigger makes) works.
    let jwks = jwks_server(JWKS.into()).await;
    let dir = temp_dir();
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Access).await;
    let claims = json!({
        "iss": ISSUER,
        "client_id": CLIENT,
        "token_use": "access",
        "sub": "svc",
        "exp": now() + 600,
        "custom:tenantId": "acme",
    });
    let mut c = connect(server.addr, Some(&rs256(&claims, KID))).await;
    c.get(proto::GetRequest::default()).await.unwrap();
    let mut wrong_client = claims.clone();
    wrong_client["client_id"] = json!("client-b");
    let mut c = connect(server.addr, Some(&rs256(&wrong_client, KID))).await;
    let err = c.get(proto::GetRequest::default()).await.unwrap_err();
    assert!(err.message().contains("audience"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_relay_reads_the_tenant_it_names_and_writes_nothing() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut acme = server.client("acme", Role::Writer).await;
    put(&mut acme, "tenant_config_flags", "1").await;
    let relay_token = sign_local(
        dir.path(),
        json!({"custom:role": "relay", "exp": now() + 600}),
    );
    let mut relay = connect(server.addr, Some(&relay_token)).await;
    let mut w = watch(
        &mut relay,
        proto::WatchRequest {
            tenant: "acme".into(),
            ..Default::default()
        },
    )
    .await;
    let (init, _) = initial(&mut w).await;
    assert_eq!(summary(&init), [("tenant_config_flags".into(), 1, false)]);
    let err = relay
        .get(proto::GetRequest::default())
        .await
        .expect_err("a relay must name the tenant");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = relay
        .put(proto::PutRequest {
            tenant: "acme".into(),
            key: "tenant_config_flags".into(),
            value: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An ordinary token cannot do what a relay does.
    let mut other = server.client("globex", Role::Admin).await;
    let err = other
        .get(proto::GetRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}

/// Item: roles never come from an attribute users can write. On moto (which, like
/// a pool whose app client may write `custom:role`, lets users change it), a user
/// sets `custom:role=relay` and signs in again: by default the attribute is no role
/// at all; declared as the role claim, relay from it is refused. Groups give roles.
#[tokio::test]
async fn a_user_who_writes_relay_into_their_role_attribute_reads_no_other_tenant() {
    use aws_sdk_cognitoidentityprovider::types::AttributeType;
    let moto = Moto::start();
    let pool = Pool::new(&moto).await;
    pool.user(
        "mallory",
        &[("custom:tenantId", "acme"), ("custom:role", "reader")],
        &[],
    )
    .await;
    pool.user(
        "globex-writer",
        &[("custom:tenantId", "globex")],
        &["writer"],
    )
    .await;
    pool.user("edge-relay", &[], &["relay"]).await;
    pool.user(
        "attr-writer",
        &[("custom:tenantId", "acme"), ("custom:role", "writer")],
        &[],
    )
    .await;

    // The attack: the user's own access token writes the attribute.
    let (_, access) = pool.sign_in("mallory").await;
    pool.idp
        .update_user_attributes()
        .access_token(&access)
        .user_attributes(
            AttributeType::builder()
                .name("custom:role")
                .value("relay")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (mallory, _) = pool.sign_in("mallory").await;
    assert_eq!(payload(&mallory)["custom:role"], json!("relay"));

    let dir = temp_dir();
    let server = cognito_server(dir.path(), &moto, &pool.id, &pool.client, TokenUse::Id).await;
    let mut globex = connect(server.addr, Some(&pool.sign_in("globex-writer").await.0)).await;
    put(&mut globex, "tenant_config_secret", "\"globex only\"").await;

    let mut m = connect(server.addr, Some(&mallory)).await;
    let err = m
        .get(proto::GetRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = m
        .watch(proto::WatchRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The attribute counts for nothing: a reader of its own tenant.
    m.get(proto::GetRequest::default()).await.unwrap();
    let err = m
        .put(proto::PutRequest {
            key: "tenant_config_x".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let (attr_writer, _) = pool.sign_in("attr-writer").await;
    let err = connect(server.addr, Some(&attr_writer))
        .await
        .put(proto::PutRequest {
            key: "tenant_config_x".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The group 'relay' does make a relay.
    let (relay, _) = pool.sign_in("edge-relay").await;
    assert_eq!(payload(&relay)["cognito:groups"], json!(["relay"]));
    let got = connect(server.addr, Some(&relay))
        .await
        .get(proto::GetRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries[0].value, "\"globex only\"");
    server.stop().await;

    // With `--role-claim custom:role` (declared admin-only), the attribute gives
    // roles, but relay from it is refused outright.
    let dir = temp_dir();
    let server = cognito_server_with(
        dir.path(),
        &moto,
        &pool.id,
        &pool.client,
        TokenUse::Id,
        Some("custom:role"),
    )
    .await;
    let mut m = connect(server.addr, Some(&mallory)).await;
    for err in [
        m.get(proto::GetRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        m.get(proto::GetRequest::default()).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("group 'relay'"), "{err:?}");
    }
    let mut w = connect(server.addr, Some(&attr_writer)).await;
    put(&mut w, "tenant_config_x", "1").await;
    let got = connect(server.addr, Some(&relay))
        .await
        .get(proto::GetRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries.len(), 1, "the group still makes a relay");
    server.stop().await;
}
