//! Bearer tokens against the embedded signing key. Two ways in: any text as a token
//! (the parser), and tokens correctly signed with the key over fuzzer-chosen header
//! and claims (so the fuzzer gets past the signature to the header and claim rules).
//! Every outcome is an identity or an error whose status message stays small.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::Engine as _;
use configwatch::auth::local::{KEY_FILE, LocalKey};
use configwatch::auth::{Authenticator, ClaimRules, KeySource, TokenUse};
use ed25519_dalek::Signer as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

/// Longest status message a refusal may carry (gRPC metadata is limited to 8 KiB).
const MAX_MESSAGE: usize = 2048;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    keys: Arc<dyn KeySource>,
    signing: SigningKey,
    kid: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let pem = signing.to_pkcs8_pem(LineEnding::LF).expect("pem");
        std::fs::write(dir.path().join(KEY_FILE), pem.as_bytes()).expect("write key");
        let (key, created) = LocalKey::load_or_create(dir.path()).expect("load key");
        assert!(!created);
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            kid: key.kid().to_owned(),
            keys: Arc::new(key),
            signing,
            _dir: dir,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as the token.
    Raw(String),
    /// Header and claims as raw text, signed.
    SignedText {
        header: String,
        claims: String,
        rules: u8,
    },
    /// Header and claims built from parts, signed.
    Shaped {
        alg: Alg,
        kid: Kid,
        crit: Option<Vec<String>>,
        claims: Vec<(Claim, Json)>,
        rules: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Alg {
    EdDsa,
    Hs256,
    Rs256,
    None,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Right,
    Absent,
    Other(String),
    NotText(Json),
}

#[derive(Arbitrary, Debug)]
enum Claim {
    Exp,
    Nbf,
    Iat,
    Iss,
    Sub,
    Aud,
    TokenUse,
    ClientId,
    Tenant,
    Service,
    Role,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    /// Seconds from now, for exp and nbf.
    FromNow(i32),
    Text(String),
    Known(KnownText),
    List(Vec<Json>),
    Object(Vec<(String, Json)>),
}

#[derive(Arbitrary, Debug)]
enum KnownText {
    Issuer,
    Id,
    Access,
    Tenant,
    Service,
    Reader,
    Writer,
    Admin,
    Relay,
    App,
}

impl Json {
    fn to_value(&self, now: i64) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Uint(u) => json!(u),
            Json::Float(f) => json!(f),
            Json::FromNow(s) => json!(now + i64::from(*s)),
            Json::Text(s) => json!(s),
            Json::Known(k) => json!(match k {
                KnownText::Issuer => "configwatch",
                KnownText::Id => "id",
                KnownText::Access => "access",
                KnownText::Tenant => "acme",
                KnownText::Service => "billing",
                KnownText::Reader => "reader",
                KnownText::Writer => "writer",
                KnownText::Admin => "admin",
                KnownText::Relay => "relay",
                KnownText::App => "app",
            }),
            Json::List(items) => Value::Array(items.iter().map(|j| j.to_value(now)).collect()),
            Json::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value(now)))
                    .collect(),
            ),
        }
    }
}

fn rules(bits: u8) -> ClaimRules {
    let mut rules = ClaimRules::default();
    if bits & 1 != 0 {
        rules.issuers = vec!["configwatch".into()];
    }
    rules.token_use = match (bits >> 1) & 3 {
        0 => TokenUse::Id,
        1 => TokenUse::Access,
        _ => TokenUse::Any,
    };
    if bits & 8 != 0 {
        rules.audiences = vec!["app".into()];
    }
    rules
}

fn sign(f: &Fixture, header: &[u8], claims: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let signature = f.signing.sign(input.as_bytes());
    format!("{input}.{}", b64.encode(signature.to_bytes()))
}

fn shaped(
    f: &Fixture,
    alg: &Alg,
    kid: &Kid,
    crit: &Option<Vec<String>>,
    claims: &[(Claim, Json)],
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let mut header = Map::new();
    header.insert(
        "alg".into(),
        json!(match alg {
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::None => "none",
            Alg::Other(s) => s.as_str(),
        }),
    );
    header.insert("typ".into(), json!("JWT"));
    match kid {
        Kid::Right => {
            header.insert("kid".into(), json!(f.kid));
        }
        Kid::Absent => {}
        Kid::Other(s) => {
            header.insert("kid".into(), json!(s));
        }
        Kid::NotText(j) => {
            header.insert("kid".into(), j.to_value(now));
        }
    }
    if let Some(crit) = crit {
        header.insert("crit".into(), json!(crit));
    }
    let mut body = Map::new();
    for (claim, value) in claims {
        let name = match claim {
            Claim::Exp => "exp",
            Claim::Nbf => "nbf",
            Claim::Iat => "iat",
            Claim::Iss => "iss",
            Claim::Sub => "sub",
            Claim::Aud => "aud",
            Claim::TokenUse => "token_use",
            Claim::ClientId => "client_id",
            Claim::Tenant => "custom:tenantId",
            Claim::Service => "custom:service",
            Claim::Role => "custom:role",
            Claim::Other(s) => s.as_str(),
        };
        body.insert(name.to_owned(), value.to_value(now));
    }
    sign(
        f,
        Value::Object(header).to_string().as_bytes(),
        Value::Object(body).to_string().as_bytes(),
    )
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let (token, bits) = match &input {
        Input::Raw(text) => (text.clone(), 0xff),
        Input::SignedText {
            header,
            claims,
            rules,
        } => (sign(f, header.as_bytes(), claims.as_bytes()), *rules),
        Input::Shaped {
            alg,
            kid,
            crit,
            claims,
            rules,
        } => (shaped(f, alg, kid, crit, claims), *rules),
    };
    // A small cache, so the second call replays the cached verdict's time rule.
    let auth = Authenticator::with_cache_capacity(f.keys.clone(), rules(bits), 4);
    for _ in 0..2 {
        match f.runtime.block_on(auth.verify(&token)) {
            Ok(identity) => {
                if let Some(scope) = &identity.scope {
                    assert!(!scope.tenant_id().is_empty());
                }
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                assert!(
                    status.message().len() <= MAX_MESSAGE,
                    "a {} byte refusal: {:.200}",
                    status.message().len(),
                    status.message()
                );
            }
        }
    }
});
