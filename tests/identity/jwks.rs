//! Tokens verified against a JWKS: the attack suite, floods of unknown key ids, an
//! outage of the key set, tampered tokens and keys dropped from the set.

use super::*;

#[tokio::test]
async fn the_attack_suite_is_refused_and_leaks_nothing() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Id).await;
    let mut good = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    put(&mut good, "tenant_config_plan", "\"acme only\"").await;

    let valid = rs256(&good_claims(), KID);
    let parts: Vec<&str> = valid.split('.').collect();
    let mut forged_claims = good_claims();
    forged_claims["custom:tenantId"] = json!("other-tenant");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good_claims().to_string().as_bytes())
    );
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(KID.into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &good_claims(),
        &EncodingKey::from_secret(PUBLIC),
    )
    .unwrap();
    let with = |field: &str, value: Value| {
        let mut c = good_claims();
        c[field] = value;
        rs256(&c, KID)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "malformed"),
        (
            "HS256 with the RSA public key",
            confused,
            "algorithm HS256 is not accepted",
        ),
        ("expired", with("exp", json!(now() - 600)), "expired"),
        (
            "not yet valid",
            with("nbf", json!(now() + 600)),
            "not valid yet",
        ),
        (
            "wrong issuer",
            with("iss", json!("https://evil.test")),
            "issuer",
        ),
        ("wrong audience", with("aud", json!("client-b")), "audience"),
        ("unknown kid", rs256(&good_claims(), "no-such-key"), "kid"),
        ("tampered payload", tampered, "signature"),
        (
            "access token under --token-use id",
            with("token_use", json!("access")),
            "token_use",
        ),
    ];
    for (what, token, text) in cases {
        let mut c = connect(server.addr, Some(&token)).await;
        let err = c.get(proto::GetRequest::default()).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {:?}", err.message());
        assert!(!err.message().contains("acme only"));
        let err = c.watch(watch_prefixes(&[])).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }

    // The tenant of a request must be the token's.
    let err = good
        .get(proto::GetRequest {
            tenant: "other-tenant".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A reader cannot write.
    let mut reader_claims = good_claims();
    reader_claims["cognito:groups"] = json!(["reader"]);
    let mut reader = connect(server.addr, Some(&rs256(&reader_claims, KID))).await;
    let err = reader
        .put(proto::PutRequest {
            key: "tenant_config_plan".into(),
            value: "\"overwritten\"".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The most capable group that names a role.
    let mut grouped = good_claims();
    grouped["cognito:groups"] = json!(["staff", "reader", "writer"]);
    let mut by_group = connect(server.addr, Some(&rs256(&grouped, KID))).await;
    put(&mut by_group, "tenant_config_by-group", "1").await;

    let got = good
        .get(proto::GetRequest {
            keys: vec!["tenant_config_plan".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.entries[0].value, "\"acme only\"",
        "nothing was overwritten"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_a_bounded_number_of_times() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    let (server, keys) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "one fetch at start");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr, Some(&rs256(&good_claims(), &format!("made-up-{i}")))).await;
            c.get(proto::GetRequest::default())
                .await
                .unwrap_err()
                .code()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Code::Unauthenticated);
    }
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    assert!(
        fetched <= 2,
        "200 unknown kids caused {fetched} JWKS fetches"
    );
    assert_eq!(keys.fetch_count() as usize, fetched);
    // Good tokens were never affected.
    let mut c = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    c.get(proto::GetRequest::default()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_jwks_outage_keeps_serving_with_the_cached_keys() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    let (server, keys) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    jwks.failing.store(true, Ordering::SeqCst);
    // An unknown kid makes it try again; the fetch fails; cached keys stay.
    let mut stray = connect(server.addr, Some(&rs256(&good_claims(), "rotated"))).await;
    let err = stray.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(keys.key_count(), 1);
    let mut c = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    c.get(proto::GetRequest::default()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn with_no_keys_at_all_calls_are_unavailable_not_unauthenticated() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    let mut c = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    let err = c.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("keys are unavailable"), "{err:?}");
    server.stop().await;
}

/// Verified tokens are cached by a digest of the whole token: a token that differs
/// from a cached one in any way is verified in full, through the server and in the
/// authenticator itself.
#[tokio::test]
async fn a_tampered_token_is_refused_while_its_valid_original_is_cached() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    let (server, keys) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Id).await;
    let mut reader_claims = good_claims();
    reader_claims["cognito:groups"] = json!(["reader"]);
    let valid = rs256(&reader_claims, KID);
    let mut good = connect(server.addr, Some(&valid)).await;
    for _ in 0..2 {
        good.get(proto::GetRequest::default()).await.unwrap();
    }
    let auth = Authenticator::new(keys.clone(), jwks_rules());
    auth.verify(&valid).await.unwrap();
    assert_eq!(auth.cached_tokens(), 1, "the original is cached");

    let parts: Vec<&str> = valid.split('.').collect();
    let forge = |field: &str, value: Value| {
        let mut c = reader_claims.clone();
        c[field] = value;
        format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        )
    };
    let mut header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap(),
    )
    .unwrap();
    header["typ"] = json!("at+jwt");
    let signature = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        f(&mut sig);
        format!("{}.{}.{}", parts[0], parts[1], b64(&sig))
    };
    // The same signature bytes, encoded with other (non-canonical) trailing bits.
    let last = parts[2].chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).unwrap();
    let non_canonical = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        &parts[2][..parts[2].len() - 1],
        &alphabet[index ^ 1..(index ^ 1) + 1]
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "tenant changed",
            forge("custom:tenantId", json!("other-tenant")),
        ),
        ("role raised", forge("cognito:groups", json!(["admin"]))),
        ("expiry extended", forge("exp", json!(now() + 86_400))),
        (
            "header changed",
            format!(
                "{}.{}.{}",
                b64(header.to_string().as_bytes()),
                parts[1],
                parts[2]
            ),
        ),
        ("signature bit flipped", signature(&|s| s[0] ^= 1)),
        ("signature truncated", signature(&|s| s.truncate(255))),
        ("signature non-canonical", non_canonical),
        ("suffix", format!("{valid}.")),
        ("signature dropped", format!("{}.{}.", parts[0], parts[1])),
    ];
    for (what, token) in &cases {
        assert_ne!(token, &valid, "{what}");
        assert!(auth.verify(token).await.is_err(), "{what}");
        let mut c = connect(server.addr, Some(token)).await;
        let err = c.get(proto::GetRequest::default()).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        let err = c
            .put(proto::PutRequest {
                key: "tenant_config_plan".into(),
                value: "\"forged\"".into(),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }
    assert_eq!(auth.cached_tokens(), 1, "no refusal was cached");
    // The original still works, with its own role.
    good.get(proto::GetRequest::default()).await.unwrap();
    let err = good
        .put(proto::PutRequest {
            key: "tenant_config_plan".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}

/// A key removed from the JWKS stops verifying tokens that were cached with it as
/// soon as the key set is fetched again (a cached entry holds a weak reference to
/// the key object, and every fetch replaces them).
#[tokio::test]
async fn a_key_dropped_from_the_jwks_stops_verifying_cached_tokens() {
    let body = Arc::new(std::sync::Mutex::new(JWKS.to_owned()));
    let url = jwks_server_with_body(body.clone()).await;
    let mut settings = JwksSettings::new(url);
    settings.min_refetch = Duration::ZERO;
    let keys = JwksKeySource::start(settings, CancellationToken::new())
        .await
        .unwrap();
    let auth = Authenticator::new(keys.clone(), jwks_rules());
    let token = rs256(&good_claims(), KID);
    auth.verify(&token).await.unwrap();
    auth.verify(&token).await.unwrap();
    assert_eq!(keys.fetch_count(), 1);
    assert_eq!(auth.cached_tokens(), 1);
    assert_eq!(auth.token_cache_lookups(), (1, 1), "(hits, misses)");

    // The provider rotates: the same key material under a new kid only.
    *body.lock().unwrap() = JWKS.replace(KID, "test-key-2");
    // A token with the new kid makes the server fetch the set again.
    auth.verify(&rs256(&good_claims(), "test-key-2"))
        .await
        .unwrap();
    assert_eq!(keys.fetch_count(), 2);
    let err = auth.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, configwatch::auth::AuthError::UnknownKey(_)),
        "{err:?}"
    );
    let fetched = configwatch::auth::KeyFetches { made: 3, failed: 0 };
    assert_eq!(auth.key_fetches(), fetched, "the unknown kid fetched again");

    // A set that cannot be read is a failed fetch.
    *body.lock().unwrap() = "not a key set".to_owned();
    let _ = auth.verify(&rs256(&good_claims(), "test-key-3")).await;
    let failed = configwatch::auth::KeyFetches { made: 4, failed: 1 };
    assert_eq!(auth.key_fetches(), failed);
}

#[tokio::test]
async fn a_write_records_the_app_client_of_a_providers_token() {
    let dir = temp_dir();
    let jwks = jwks_server(JWKS.into()).await;
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    let mut id_token = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    let mut access_claims = good_claims();
    access_claims["token_use"] = json!("access");
    access_claims["client_id"] = json!(CLIENT);
    access_claims["sub"] = json!("user-2");
    access_claims.as_object_mut().map(|c| c.remove("aud"));
    let mut access = connect(server.addr, Some(&rs256(&access_claims, KID))).await;
    for (client, reason) in [
        (&mut id_token, "by ID token"),
        (&mut access, "by access token"),
    ] {
        client
            .put(proto::PutRequest {
                key: "tenant_config_plan".into(),
                value: "1".into(),
                reason: reason.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let versions = id_token
        .history(proto::HistoryRequest {
            key: "tenant_config_plan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let seen: Vec<(&str, &str, &str)> = versions
        .iter()
        .map(|v| (v.subject.as_str(), v.client_id.as_str(), v.reason.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("user-2", CLIENT, "by access token"),
            ("user-1", CLIENT, "by ID token")
        ]
    );
}
