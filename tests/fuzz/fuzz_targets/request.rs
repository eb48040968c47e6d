//! Request messages as bytes off the wire: prost decoding of each request type, then
//! the checks the API makes before touching the hub or a store (tenant, keys,
//! prefixes, values, resume token, digest). Every refusal is a status whose message
//! stays small.
#![no_main]

use configwatch::api::{Limits, check_prefixes};
use configwatch::hub::{ResumeToken, StateDigest};
use configwatch::keys;
use configwatch::model::Scope;
use configwatch::proto::{DeleteRequest, GetRequest, PutRequest, WatchRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tonic::Status;

/// Longest status message a refusal may carry (gRPC metadata is limited to 8 KiB).
const MAX_MESSAGE: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let outcome = match which % 4 {
        0 => GetRequest::decode(bytes).map(|r| get(&r, &limits)),
        1 => WatchRequest::decode(bytes).map(|r| watch(&r, &limits)),
        2 => PutRequest::decode(bytes).map(|r| put(&r)),
        _ => DeleteRequest::decode(bytes).map(|r| delete(&r)),
    };
    if let Ok(Err(status)) = outcome {
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "a {} byte refusal: {:.200}",
            status.message().len(),
            status.message()
        );
    }
});

/// The tenant a relay names is checked as a scope.
fn tenant(named: &str) -> Result<(), Status> {
    if !named.is_empty() {
        Scope::tenant(named)?;
    }
    Ok(())
}

fn get(r: &GetRequest, limits: &Limits) -> Result<(), Status> {
    tenant(&r.tenant)?;
    if r.keys.len() > limits.max_keys {
        return Err(Status::invalid_argument("too many keys"));
    }
    for key in &r.keys {
        keys::validate_key(key)?;
    }
    check_prefixes(&r.prefixes, limits)
}

fn watch(r: &WatchRequest, limits: &Limits) -> Result<(), Status> {
    tenant(&r.tenant)?;
    check_prefixes(&r.prefixes, limits)?;
    if !r.resume_token.is_empty() {
        ResumeToken::decode(&r.resume_token)?;
    }
    if !r.known_digest.is_empty() && StateDigest::from_bytes(&r.known_digest).is_none() {
        return Err(Status::invalid_argument("bad digest"));
    }
    Ok(())
}

fn put(r: &PutRequest) -> Result<(), Status> {
    tenant(&r.tenant)?;
    let family = keys::validate_key(&r.key)?;
    let value = keys::validate_value(family, &r.key, &r.value, r.secret)?;
    assert_eq!(
        keys::validate_value(family, &r.key, &value, r.secret),
        Ok(value)
    );
    Ok(())
}

fn delete(r: &DeleteRequest) -> Result<(), Status> {
    tenant(&r.tenant)?;
    keys::validate_key(&r.key)?;
    Ok(())
}
