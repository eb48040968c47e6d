//! Identity: JWKS validation, an attack suite, service scope, token expiry on long
//! streams, and real Cognito tokens from moto.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cognito;
#[path = "../common/mod.rs"]
mod common;
mod expiry;
mod jwks;
mod malformed;
mod scope;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use configwatch::auth::jwks::{JwksKeySource, JwksSettings};
use configwatch::auth::local::LocalKey;
use configwatch::auth::{Authenticator, ClaimRules, Role, TokenUse};
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::proto::watch_response::InitialMode;
use configwatch::store::Router;
use configwatch::store::embedded::EmbeddedStore;
use configwatch_test_support::moto::Moto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const ISSUER: &str = "https://issuer.test";
const CLIENT: &str = "client-a";
const KID: &str = "test-key-1";
const PRIVATE: &[u8] = include_bytes!("../fixtures/test-rs256.pem");
const PUBLIC: &[u8] = include_bytes!("../fixtures/test-rs256.pub.pem");
const JWKS: &str = include_str!("../fixtures/test-rs256.jwks.json");

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
