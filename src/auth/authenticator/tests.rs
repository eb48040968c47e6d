//! The authenticator end to end: the verified-token cache, the time rule, headers
//! and inputs that must be refused.

use jsonwebtoken::{Algorithm, Header};

use super::*;
use crate::auth::{MAX_NUMERIC_DATE, cache, local};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::auth::testing::*;

/// The cache's time rule is jsonwebtoken's: around both edges, a full
/// verification and `check_time` agree to the second.
#[tokio::test]
async fn the_cached_time_rule_matches_a_full_verification_at_the_edges() -> TestResult {
    let keys = TestKeys::new()?;
    let uncached = auth(&keys, 5, 0);
    for d in -8i64..=8 {
        loop {
            let now = now();
            let exp = now.saturating_add_signed(d);
            let by_exp = uncached.verify(&keys.sign(&claims(exp))?).await.map(|_| ());
            let nbf = now.saturating_add_signed(d);
            let mut c = claims(now + 3600);
            c["nbf"] = json!(nbf);
            let by_nbf = uncached.verify(&keys.sign(&c)?).await.map(|_| ());
            if cache::now_secs() != Some(now) {
                continue; // the second changed meanwhile: measure again
            }
            assert_eq!(by_exp, cache::check_time(exp, None, now, 5), "exp now{d:+}");
            assert_eq!(
                by_nbf,
                cache::check_time(now + 3600, Some(nbf), now, 5),
                "nbf now{d:+}"
            );
            break;
        }
    }
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

#[tokio::test]
async fn a_cached_token_is_refused_once_expired() -> TestResult {
    let keys = TestKeys::new()?;
    // No leeway, so the test waits two seconds, not seven (two, not one, so a
    // slow first verification cannot see the token expire already).
    let auth = auth(&keys, 0, 100);
    let exp = now() + 2;
    let token = keys.sign(&claims(exp))?;
    auth.verify(&token).await?;
    assert_eq!(auth.cached_tokens(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now() <= exp && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
