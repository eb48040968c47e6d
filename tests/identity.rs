//! Identity: JWKS validation, an attack suite, service scope, token expiry on long
//! streams, and real Cognito tokens from moto.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::moto::Moto;
use common::*;
use configwatch::auth::jwks::{JwksKeySource, JwksSettings};
use configwatch::auth::local::LocalKey;
use configwatch::auth::{Authenticator, ClaimRules, Role, TokenUse};
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::proto::watch_response::InitialMode;
use configwatch::store::Router;
use configwatch::store::embedded::EmbeddedStore;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const ISSUER: &str = "https://issuer.test";
const CLIENT: &str = "client-a";
const KID: &str = "test-key-1";
const PRIVATE: &[u8] = include_bytes!("fixtures/test-rs256.pem");
const PUBLIC: &[u8] = include_bytes!("fixtures/test-rs256.pub.pem");
const JWKS: &str = include_str!("fixtures/test-rs256.jwks.json");

/// A JWKS endpoint on 127.0.0.1 that counts its fetches and can be made to fail.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn jwks_server(body: String) -> JwksServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (f, fail) = (fetches.clone(), failing.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (body, f, fail) = (body.clone(), f.clone(), fail.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                f.fetch_add(1, Ordering::SeqCst);
                let response = if fail.load(Ordering::SeqCst) {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    JwksServer {
        url,
        fetches,
        failing,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a good Cognito-style ID token for tenant acme.
fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "user-1",
        "token_use": "id",
        "exp": now() + 600,
        "iat": now(),
        "custom:tenantId": "acme",
        "cognito:groups": ["writer"],
    })
}

fn rs256(claims: &Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(PRIVATE).unwrap(),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn jwks_server_with_rules(
    dir: &std::path::Path,
    jwks: &JwksServer,
    token_use: TokenUse,
) -> (TestServer, Arc<JwksKeySource>) {
    let mut settings = JwksSettings::new(jwks.url.clone());
    settings.min_refetch = Duration::from_secs(30);
    let keys = JwksKeySource::start(settings, CancellationToken::new())
        .await
        .unwrap();
    let rules = ClaimRules {
        issuers: vec![ISSUER.into()],
        audiences: vec![CLIENT.into()],
        token_use,
        ..ClaimRules::default()
    };
    let store = EmbeddedStore::open(dir).unwrap();
    let server = TestServer::start_authed(
        dir,
        Router::single(Arc::new(store)),
        Options::default(),
        Authenticator::new(keys.clone(), rules),
    )
    .await;
    (server, keys)
}

#[tokio::test]
async fn the_attack_suite_is_refused_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let jwks = jwks_server(JWKS.into()).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let (server, _) = jwks_server_with_rules(dir.path(), &jwks, TokenUse::Any).await;
    let mut c = connect(server.addr, Some(&rs256(&good_claims(), KID))).await;
    let err = c.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("keys are unavailable"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn keys_and_prefixes_cannot_reach_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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

/// Signs claims with the server's own Ed25519 key file, as its own issuer.
fn sign_local(dir: &std::path::Path, mut claims: Value) -> String {
    claims["iss"] = json!("configwatch");
    sign_local_raw(dir, &Header::new(Algorithm::EdDSA), &claims)
}

/// Signs exactly these claims with this header with the server's own key file.
fn sign_local_raw(dir: &std::path::Path, header: &Header, claims: &Value) -> String {
    let pem = std::fs::read(dir.join("signing-key.pem")).unwrap();
    jsonwebtoken::encode(header, claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

#[tokio::test]
async fn a_watch_ends_at_token_expiry_and_resumes_with_a_new_token_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The server's clock runs ahead: it reaches exp plus the 5 s leeway 1.5 s after
    // the server starts, so the stream ends then, over a real socket, without the
    // test waiting for exp and the leeway to pass on the real clock.
    let exp = now() + 60;
    let ends_at = UNIX_EPOCH + Duration::from_secs(exp + 5);
    let clock = configwatch::clock::Clock::starting_at(ends_at - Duration::from_millis(1500));
    let options = Options {
        clock,
        ..Options::default()
    };
    let server = TestServer::start_with(dir.path(), options).await;
    let mut writer = server.client("acme", Role::Writer).await;
    put(&mut writer, "tenant_config_a", "1").await;
    let short = sign_local(dir.path(), json!({"custom:tenantId": "acme", "exp": exp}));
    let mut c = connect(server.addr, Some(&short)).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let (_, done) = initial(&mut w).await;
    let mut token = done.resume_token;
    put(&mut writer, "tenant_config_a", "2").await;
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match w.message().await {
                Ok(Some(msg)) => {
                    if !msg.resume_token.is_empty() {
                        token = msg.resume_token;
                    }
                }
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ends at expiry");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token expired"), "{status:?}");

    // A change while the client is away, then a fresh token and a resume.
    put(&mut writer, "tenant_config_a", "3").await;
    put(&mut writer, "tenant_config_b", "1").await;
    let mut c = server.client("acme", Role::Reader).await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: token,
            ..Default::default()
        },
    )
    .await;
    let (missed, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(
        summary(&missed),
        [
            ("tenant_config_a".into(), 3, false),
            ("tenant_config_b".into(), 1, false)
        ]
    );
    server.stop().await;
}

/// A Cognito user pool on moto: custom:tenantId (immutable) and custom:role (mutable,
/// as many pools have it), and an app client with ADMIN_USER_PASSWORD_AUTH.
struct Pool {
    idp: aws_sdk_cognitoidentityprovider::Client,
    id: String,
    client: String,
}

impl Pool {
    async fn new(moto: &Moto) -> Pool {
        use aws_sdk_cognitoidentityprovider::types::{
            AttributeDataType, ExplicitAuthFlowsType, SchemaAttributeType,
        };
        let idp = aws_sdk_cognitoidentityprovider::Client::new(&moto.sdk_config().await);
        let attr = |name: &str, mutable: bool| {
            SchemaAttributeType::builder()
                .name(name)
                .attribute_data_type(AttributeDataType::String)
                .mutable(mutable)
                .build()
        };
        let id = idp
            .create_user_pool()
            .pool_name("configwatch")
            .schema(attr("tenantId", false))
            .schema(attr("role", true))
            .send()
            .await
            .unwrap()
            .user_pool
            .unwrap()
            .id
            .unwrap();
        let client = idp
            .create_user_pool_client()
            .user_pool_id(&id)
            .client_name("service")
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowAdminUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .unwrap()
            .user_pool_client
            .unwrap()
            .client_id
            .unwrap();
        Pool { idp, id, client }
    }

    /// An admin-created user with these attributes, in these groups (created as
    /// needed).
    async fn user(&self, name: &str, attributes: &[(&str, &str)], groups: &[&str]) {
        use aws_sdk_cognitoidentityprovider::types::{AttributeType, MessageActionType};
        let mut create = self
            .idp
            .admin_create_user()
            .user_pool_id(&self.id)
            .username(name)
            .message_action(MessageActionType::Suppress)
            .temporary_password("Temp-Passw0rd!");
        for (k, v) in attributes {
            create = create
                .user_attributes(AttributeType::builder().name(*k).value(*v).build().unwrap());
        }
        create.send().await.unwrap();
        self.idp
            .admin_set_user_password()
            .user_pool_id(&self.id)
            .username(name)
            .password("Real-Passw0rd!")
            .permanent(true)
            .send()
            .await
            .unwrap();
        for group in groups {
            // Already there for an earlier user: fine.
            let _ = self
                .idp
                .create_group()
                .user_pool_id(&self.id)
                .group_name(*group)
                .send()
                .await;
            self.idp
                .admin_add_user_to_group()
                .user_pool_id(&self.id)
                .username(name)
                .group_name(*group)
                .send()
                .await
                .unwrap();
        }
    }

    /// Signs in: (ID token, access token).
    async fn sign_in(&self, name: &str) -> (String, String) {
        use aws_sdk_cognitoidentityprovider::types::AuthFlowType;
        let auth = self
            .idp
            .admin_initiate_auth()
            .user_pool_id(&self.id)
            .client_id(&self.client)
            .auth_flow(AuthFlowType::AdminUserPasswordAuth)
            .auth_parameters("USERNAME", name)
            .auth_parameters("PASSWORD", "Real-Passw0rd!")
            .send()
            .await
            .unwrap()
            .authentication_result
            .unwrap();
        (auth.id_token.unwrap(), auth.access_token.unwrap())
    }
}

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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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

/// A JWKS endpoint whose key set the test replaces (key rotation, a revoked key).
async fn jwks_server_with_body(body: Arc<std::sync::Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

fn jwks_rules() -> ClaimRules {
    ClaimRules {
        issuers: vec![ISSUER.into()],
        audiences: vec![CLIENT.into()],
        token_use: TokenUse::Id,
        ..ClaimRules::default()
    }
}

/// Verified tokens are cached by a digest of the whole token: a token that differs
/// from a cached one in any way is verified in full, through the server and in the
/// authenticator itself.
#[tokio::test]
async fn a_tampered_token_is_refused_while_its_valid_original_is_cached() {
    let dir = tempfile::tempdir().unwrap();
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
}

/// The claims of a token, unverified (to show what a provider put in it).
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// Get and Watch with this token are refused UNAUTHENTICATED, with a short message
/// containing `text`.
async fn assert_refused(addr: std::net::SocketAddr, token: &str, text: &str, what: &str) {
    let mut c = connect(addr, Some(token)).await;
    let get = c.get(proto::GetRequest::default()).await.expect_err(what);
    let watch = c.watch(watch_prefixes(&[])).await.expect_err(what);
    for err in [get, watch] {
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {:?}", err.message());
        assert!(err.message().len() < 400, "{what}: {:?}", err.message());
    }
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

    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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

/// Item: a validly signed token dated past the year 9999 (exp at 2^63-1 and above,
/// a huge iat or nbf) is refused, and the server goes on serving.
#[tokio::test]
async fn a_token_dated_past_the_year_9999_is_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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

    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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

    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
