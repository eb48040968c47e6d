//! The authenticator end to end: the verified-token cache, the time rule, headers
//! and inputs that must be refused.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use super::*;
use crate::auth::testing::*;
use crate::auth::{MAX_NUMERIC_DATE, cache, local};

/// The time rule is jsonwebtoken's: around both edges, its own exp/nbf validation
/// (on the system clock), `check_time`, and a full verification on a clock stopped
/// at the same second agree to the second.
#[tokio::test(start_paused = true)]
async fn the_time_rule_matches_jsonwebtoken_at_the_edges() -> TestResult {
    let keys = TestKeys::new()?;
    let key = keys.key_for(&Header::new(Algorithm::EdDSA)).await?;
    let by_jsonwebtoken = |token: &str| {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<HashMap<String, Value>>(token, &key.key, &validation)
            .map(|_| ())
            .map_err(map_jwt_error)
    };
    for d in -8i64..=8 {
        loop {
            let t = now();
            let exp = t.saturating_add_signed(d);
            let by_exp = keys.sign(&claims(exp))?;
            let nbf = t.saturating_add_signed(d);
            let mut c = claims(t + 3600);
            c["nbf"] = json!(nbf);
            let by_nbf = keys.sign(&c)?;
            let (jwt_exp, jwt_nbf) = (by_jsonwebtoken(&by_exp), by_jsonwebtoken(&by_nbf));
            if now() != t {
                continue; // the second changed meanwhile: measure again
            }
            assert_eq!(jwt_exp, check_time(exp, None, t, 5), "exp now{d:+}");
            assert_eq!(
                jwt_nbf,
                check_time(t + 3600, Some(nbf), t, 5),
                "nbf now{d:+}"
            );
            let stopped = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(t));
            let ours = auth(&keys, 5, 0).with_clock(stopped);
            assert_eq!(
                ours.verify(&by_exp).await.map(|_| ()),
                jwt_exp,
                "exp now{d:+}"
            );
            assert_eq!(
                ours.verify(&by_nbf).await.map(|_| ()),
                jwt_nbf,
                "nbf now{d:+}"
            );
            break;
        }
    }
    // An nbf that is not a date is refused in the same words.
    for bad in [json!("soon"), json!(null), json!(-1), json!(1e300)] {
        let mut c = claims(now() + 600);
        c["nbf"] = bad.clone();
        let token = keys.sign(&c)?;
        let ours = auth(&keys, 5, 0).verify(&token).await.map(|_| ());
        assert_eq!(ours, by_jsonwebtoken(&token), "nbf {bad}");
        assert!(matches!(ours, Err(AuthError::Malformed(_))), "nbf {bad}");
    }
    Ok(())
}

/// exp and nbf are read against the authenticator's clock, never the system's:
/// a token that expired long ago verifies on a clock set before its expiry, and
/// one valid now is not yet valid there.
#[tokio::test]
async fn a_full_verification_reads_the_authenticators_clock() -> TestResult {
    let keys = TestKeys::new()?;
    let year_2000 = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(946_684_800));
    let old = keys.sign(&claims(978_307_200))?;
    let id = auth(&keys, 5, 0).with_clock(year_2000).verify(&old).await?;
    assert_eq!(
        id.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(978_307_205))
    );
    assert_eq!(
        auth(&keys, 5, 0).verify(&old).await,
        Err(AuthError::Expired),
        "the system clock"
    );
    let mut current = claims(now() + 600);
    current["nbf"] = json!(now());
    let current = keys.sign(&current)?;
    auth(&keys, 5, 0).verify(&current).await?;
    assert_eq!(
        auth(&keys, 5, 0)
            .with_clock(year_2000)
            .verify(&current)
            .await,
        Err(AuthError::NotYetValid)
    );
    Ok(())
}

#[tokio::test]
async fn a_cached_token_skips_the_key_and_signature_check() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let token = keys.sign(&claims(now() + 600))?;
    let first = auth.verify(&token).await?;
    let second = auth.verify(&token).await?;
    assert_eq!(first, second);
    assert_eq!(keys.calls(), 1, "the second call was served by the cache");
    assert_eq!(auth.cached_tokens(), 1);
    Ok(())
}

/// On paused time: the cached entry serves through exp + leeway and is refused
/// the second after, with no wait.
#[tokio::test(start_paused = true)]
async fn a_cached_token_is_refused_once_expired() -> TestResult {
    let keys = TestKeys::new()?;
    let start = 1_800_000_000;
    let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(start));
    let auth = auth(&keys, 5, 100).with_clock(clock);
    let exp = start + 2;
    let token = keys.sign(&claims(exp))?;
    auth.verify(&token).await?;
    assert_eq!(auth.cached_tokens(), 1);
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(clock.unix_secs(), Some(exp + 5));
    auth.verify(&token).await?;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(auth.verify(&token).await, Err(AuthError::Expired));
    assert_eq!(keys.calls(), 1, "refused by the cached entry's exp");
    assert_eq!(auth.cached_tokens(), 0, "and the entry is gone");
    // A full verification says the same.
    assert_eq!(auth.verify(&token).await, Err(AuthError::Expired));
    Ok(())
}

#[tokio::test]
async fn a_cached_token_is_refused_before_nbf_and_after_exp_by_the_cache() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let now = now();
    let mut c = claims(now + 600);
    c["nbf"] = json!(now);
    let token = keys.sign(&c)?;
    auth.verify(&token).await?;
    let digest = cache::digest(&token);
    // At the edges: valid from nbf - leeway through exp + leeway.
    assert!(matches!(
        auth.cache.lookup(&digest, now - 5, 5),
        Lookup::Hit(_)
    ));
    assert!(matches!(
        auth.cache.lookup(&digest, now + 605, 5),
        Lookup::Hit(_)
    ));
    // A clock stepped back: not yet valid.
    assert!(matches!(
        auth.cache.lookup(&digest, now - 6, 5),
        Lookup::Refused(AuthError::NotYetValid)
    ));
    auth.verify(&token).await?;
    // Past exp + leeway: expired.
    assert!(matches!(
        auth.cache.lookup(&digest, now + 606, 5),
        Lookup::Refused(AuthError::Expired)
    ));
    Ok(())
}

#[tokio::test]
async fn a_tampered_token_is_verified_in_full_and_refused() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let token = keys.sign(&claims(now() + 600))?;
    auth.verify(&token).await?;
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims(now() + 600);
    forged["custom:tenantId"] = json!("other-tenant");
    let payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        forged.to_string(),
    );
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(auth.verify(&tampered).await, Err(AuthError::BadSignature));
    // One character of the signature changed.
    let mut sig = parts[2].to_owned();
    let last = if sig.ends_with('A') { "B" } else { "A" };
    sig.replace_range(sig.len() - 1.., last);
    let resigned = format!("{}.{}.{sig}", parts[0], parts[1]);
    assert!(auth.verify(&resigned).await.is_err());
    assert_eq!(keys.calls(), 3, "both went through the full check");
    assert_eq!(auth.cached_tokens(), 1, "refusals are not cached");
    Ok(())
}

#[tokio::test]
async fn failures_are_not_cached() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let expired = keys.sign(&claims(now() - 600))?;
    for _ in 0..3 {
        assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
    }
    assert_eq!(keys.calls(), 3);
    assert_eq!(auth.cached_tokens(), 0);
    Ok(())
}

#[tokio::test]
async fn a_cached_token_stops_working_when_its_key_is_dropped() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let token = keys.sign(&claims(now() + 600))?;
    auth.verify(&token).await?;
    keys.drop_key();
    assert_eq!(
        auth.verify(&token).await,
        Err(AuthError::UnknownKey(None)),
        "the cached entry died with its key"
    );
    assert_eq!(keys.calls(), 2);
    Ok(())
}

#[tokio::test]
async fn a_flood_of_distinct_valid_tokens_stays_within_the_bound() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 64);
    let busy = keys.sign(&claims(now() + 600))?;
    for i in 0..400 {
        let mut c = claims(now() + 600);
        c["sub"] = json!(format!("flood-{i}"));
        auth.verify(&keys.sign(&c)?).await?;
        auth.verify(&busy).await?;
        assert!(auth.cached_tokens() <= 64, "{}", auth.cached_tokens());
    }
    // 400 flood tokens and the busy one, each verified in full once.
    assert_eq!(keys.calls(), 401);
    Ok(())
}

#[tokio::test]
async fn a_fractional_exp_still_ends_watches() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let exp = now() + 600;
    let token = keys
        .sign(&json!({"iss": "configwatch", "exp": exp as f64 + 0.4, "custom:tenantId": "acme"}))?;
    let id = auth.verify(&token).await?;
    assert_eq!(
        id.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(exp + 5))
    );
    Ok(())
}

/// exp, nbf and iat far in the future (up to and past 2^63 and 2^64 seconds) are
/// refused, not turned into a time that overflows.
#[tokio::test]
async fn dates_past_the_year_9999_are_refused_without_a_panic() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    for huge in [
        json!(MAX_NUMERIC_DATE + 1),
        json!(i64::MAX as u64 - 5),
        json!(i64::MAX as u64),
        json!(i64::MAX as u64 + 1),
        json!(u64::MAX),
        json!(1.8e19),
        json!(1e300),
    ] {
        let c = claims(0);
        let mut by_exp = c.clone();
        by_exp["exp"] = huge.clone();
        let r = auth.verify(&keys.sign(&by_exp)?).await;
        // 1e300 is over u64: jsonwebtoken itself calls it malformed.
        assert!(
            bad_claim(&r, "exp") || matches!(r, Err(AuthError::Malformed(_))),
            "exp {huge}: {r:?}"
        );
        let mut by_iat = claims(now() + 600);
        by_iat["iat"] = huge.clone();
        let r = auth.verify(&keys.sign(&by_iat)?).await;
        assert!(bad_claim(&r, "iat"), "iat {huge}: {r:?}");
        let mut by_nbf = claims(now() + 600);
        by_nbf["nbf"] = huge.clone();
        let r = auth.verify(&keys.sign(&by_nbf)?).await;
        assert!(
            matches!(r, Err(AuthError::NotYetValid | AuthError::Malformed(_))),
            "nbf {huge}: {r:?}"
        );
    }
    // The last second of 9999 is a date like any other, and a Watch can end then.
    let id = auth.verify(&keys.sign(&claims(MAX_NUMERIC_DATE))?).await?;
    assert_eq!(
        id.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE + 5))
    );
    Ok(())
}

#[tokio::test]
async fn a_huge_leeway_is_cut_to_the_maximum() -> TestResult {
    let keys = TestKeys::new()?;
    let rules = ClaimRules {
        leeway: Duration::MAX,
        ..ClaimRules::default()
    };
    let auth = Authenticator::new(keys.clone(), rules);
    let exp = now() + 600;
    let id = auth.verify(&keys.sign(&claims(exp))?).await?;
    assert_eq!(
        id.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(exp) + MAX_LEEWAY)
    );
    assert_eq!(
        auth.verify(&keys.sign(&claims(now() - 7200))?).await,
        Err(AuthError::Expired)
    );
    Ok(())
}

#[tokio::test]
async fn a_crit_header_is_refused() -> TestResult {
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let mut header = Header::new(Algorithm::EdDSA);
        header.crit = Some(crit.clone());
        let token = keys.sign_with(&header, &claims(now() + 600))?;
        assert_eq!(
            auth.verify(&token).await,
            Err(AuthError::CriticalExtension),
            "{crit:?}"
        );
    }
    Ok(())
}

/// The path a fuzzer drives: no input makes it panic.
#[tokio::test]
async fn arbitrary_input_is_refused_without_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (key, _) = local::LocalKey::load_or_create(dir.path())?;
    let auth = Authenticator::new(Arc::new(key), ClaimRules::default());
    let b64 =
        |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let inputs = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b.c".into(),
        "\u{0}.\u{ffff}.é".into(),
        format!("{}.{}.", b64(r#"{"alg":"EdDSA"}"#), b64("{}")),
        format!("{}.{}.x", b64(r#"{"alg":"EdDSA","crit":7}"#), b64("[]")),
        format!("{}.{}.x", b64(r#"{"alg":"none"}"#), b64(r#"{"exp":1e400}"#)),
        format!("{}.{}.x", b64("null"), b64("null")),
        format!("{}.{}.x", b64(r#"{"alg":"EdDSA","kid":null}"#), b64("")),
    ];
    for input in inputs {
        assert!(auth.verify(&input).await.is_err(), "{input:?}");
    }
    Ok(())
}
