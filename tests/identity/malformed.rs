//! Malformed tokens: dates past the year 9999, issuers that are not one string, `crit`
//! headers, a missing `token_use`, huge key ids. Each is refused with a short status
//! and the server keeps serving.

use super::*;

/// Item: a validly signed token dated past the year 9999 (exp at 2^63-1 and above,
/// a huge iat or nbf) is refused, and the server goes on serving.
#[tokio::test]
async fn a_token_dated_past_the_year_9999_is_refused_and_the_server_keeps_serving() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut writer = server.client("acme", Role::Writer).await;
    put(&mut writer, "tenant_config_a", "1").await;
    let mut w = watch(&mut writer, watch_prefixes(&[])).await;
    initial(&mut w).await;
    let claims = |extra: Value| {
        let mut c = json!({"custom:tenantId": "acme", "custom:role": "admin", "exp": now() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign_local(dir.path(), c)
    };
    for (what, extra, text) in [
        ("exp 2^63-1", json!({"exp": i64::MAX}), "'exp'"),
        ("exp 2^63", json!({"exp": i64::MAX as u64 + 1}), "'exp'"),
        ("exp 2^64-1", json!({"exp": u64::MAX}), "'exp'"),
        ("exp 1.8e19", json!({"exp": 1.8e19}), "'exp'"),
        ("exp 1e300", json!({"exp": 1e300}), "malformed"),
        ("iat 2^64-1", json!({"iat": u64::MAX}), "'iat'"),
        ("nbf 2^64-1", json!({"nbf": u64::MAX}), "not valid yet"),
    ] {
        assert_refused(server.addr, &claims(extra), text, what).await;
    }
    // The last second of 9999 is still a date: a Watch with it runs.
    let mut far = connect(
        server.addr,
        Some(&claims(json!({"exp": 253_402_300_799u64}))),
    )
    .await;
    let mut far_watch = watch(&mut far, watch_prefixes(&[])).await;
    initial(&mut far_watch).await;
    // Nothing broke: the writer's Watch and calls go on.
    put(&mut writer, "tenant_config_a", "2").await;
    assert_eq!(
        summary(&changes(&mut w, 1).await),
        [("tenant_config_a".into(), 2, false)]
    );
    assert_eq!(
        summary(&changes(&mut far_watch, 1).await),
        [("tenant_config_a".into(), 2, false)]
    );
    server.stop().await;
}

/// Item: `iss` must be one string naming a trusted issuer, with the server's own key
/// (issuer `configwatch`) and with a JWKS.
#[tokio::test]
async fn a_token_without_a_single_string_issuer_is_refused() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let local = |iss: Option<Value>| {
        let mut c = json!({"custom:tenantId": "acme", "exp": now() + 600});
        if let Some(iss) = iss {
            c["iss"] = iss;
        }
        sign_local_raw(dir.path(), &Header::new(Algorithm::EdDSA), &c)
    };
    connect(server.addr, Some(&local(Some(json!("configwatch")))))
        .await
        .get(proto::GetRequest::default())
        .await
        .unwrap();
    for (what, iss, text) in [
        ("no iss", None, "no issuer"),
        ("iss array", Some(json!(["configwatch"])), "no issuer"),
        ("iss number", Some(json!(1)), "no issuer"),
        ("iss null", Some(json!(null)), "no issuer"),
        (
            "iss other",
            Some(json!("https://evil.test")),
            "issuer (iss) is not",
        ),
    ] {
        assert_refused(server.addr, &local(iss), text, what).await;
    }
    server.stop().await;

    let jwks = jwks_server(JWKS.into()).await;
    let dir = temp_dir();
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Id).await;
    let with_iss = |iss: Option<Value>| {
        let mut c = good_claims();
        match iss {
            Some(iss) => c["iss"] = iss,
            None => {
                c.as_object_mut().unwrap().remove("iss");
            }
        }
        rs256(&c, KID)
    };
    for (what, iss) in [
        ("no iss", None),
        ("iss array", Some(json!([ISSUER]))),
        (
            "iss array with another",
            Some(json!([ISSUER, "https://evil.test"])),
        ),
        ("iss object", Some(json!({"iss": ISSUER}))),
    ] {
        assert_refused(server.addr, &with_iss(iss), "no issuer", what).await;
    }
    server.stop().await;
}

/// Item: a `crit` header names extensions this server does not implement (RFC 7515
/// 4.1.11): refused, whatever it names.
#[tokio::test]
async fn a_token_with_a_crit_header_is_refused() {
    let jwks = jwks_server(JWKS.into()).await;
    let dir = temp_dir();
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Id).await;
    for crit in [vec!["exp"], vec!["http://example.invalid/ext"], vec![]] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        header.crit = Some(crit.iter().map(|c| c.to_string()).collect());
        let token = jsonwebtoken::encode(
            &header,
            &good_claims(),
            &EncodingKey::from_rsa_pem(PRIVATE).unwrap(),
        )
        .unwrap();
        assert_refused(server.addr, &token, "(crit)", &format!("{crit:?}")).await;
    }
    server.stop().await;

    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.crit = Some(vec!["b64".into()]);
    let token = sign_local_raw(
        dir.path(),
        &header,
        &json!({"iss": "configwatch", "custom:tenantId": "acme", "exp": now() + 600}),
    );
    assert_refused(server.addr, &token, "(crit)", "local").await;
    server.stop().await;
}

/// Item: under `--token-use any` a provider's token without `token_use` (not a
/// Cognito token of either kind) is refused; the server's own tokens, which never
/// carry one, still work.
#[tokio::test]
async fn a_provider_token_without_token_use_is_refused_under_token_use_any() {
    let jwks = jwks_server(JWKS.into()).await;
    let dir = temp_dir();
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    connect(server.addr, Some(&rs256(&good_claims(), KID)))
        .await
        .get(proto::GetRequest::default())
        .await
        .unwrap();
    let mut untyped = good_claims();
    untyped.as_object_mut().unwrap().remove("token_use");
    assert_refused(
        server.addr,
        &rs256(&untyped, KID),
        "token_use) '(none)'",
        "no token_use",
    )
    .await;
    server.stop().await;

    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    server.stop().await;
}

/// Item: a 10 KB `kid` (or tenant, or role) is not echoed: the refusal arrives as
/// a short UNAUTHENTICATED status, not a transport error.
#[tokio::test]
async fn a_10_kb_kid_gets_a_short_unauthenticated_status() {
    let long = "k".repeat(10 * 1024);
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(long.clone());
    let claims = json!({"iss": "configwatch", "custom:tenantId": "acme", "exp": now() + 600});
    let token = sign_local_raw(dir.path(), &header, &claims);
    assert_refused(server.addr, &token, "key id (kid)", "local kid").await;
    let mut bad_tenant = claims.clone();
    bad_tenant["custom:tenantId"] = json!(long);
    let token = sign_local(dir.path(), bad_tenant);
    let err = connect(server.addr, Some(&token))
        .await
        .get(proto::GetRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().len() < 400, "{:?}", err.message());
    let mut bad_role = claims.clone();
    bad_role["custom:role"] = json!(long);
    let token = sign_local(dir.path(), bad_role);
    let err = connect(server.addr, Some(&token))
        .await
        .get(proto::GetRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().len() < 400, "{:?}", err.message());
    server.stop().await;

    let jwks = jwks_server(JWKS.into()).await;
    let dir = temp_dir();
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Id).await;
    assert_refused(
        server.addr,
        &rs256(&good_claims(), &long),
        "key id (kid)",
        "jwks kid",
    )
    .await;
    server.stop().await;
}
