//! The claim rules through a full verification: issuers, token kinds, roles and the
//! expiry time.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::auth::Authenticator;
use crate::auth::testing::*;

#[test]
fn the_expiry_time_saturates() {
    let latest = UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE);
    assert_eq!(expiry_time(u64::MAX, Duration::ZERO), latest);
    assert_eq!(
        expiry_time(u64::MAX, Duration::MAX),
        latest,
        "an overflow saturates"
    );
    assert_eq!(
        expiry_time(100, Duration::from_secs(5)),
        UNIX_EPOCH + Duration::from_secs(105)
    );
}

#[tokio::test]
async fn an_issuer_that_is_missing_or_not_one_string_is_refused() -> TestResult {
    for signer in [Signer::ThisServer, Signer::IdentityProvider] {
        let keys = TestKeys::signed_by(signer)?;
        let (auth, good) = match signer {
            Signer::ThisServer => (auth(&keys, 5, 100), claims(now() + 600)),
            Signer::IdentityProvider => (
                provider_auth(&keys, provider_rules()),
                provider_claims(now() + 600),
            ),
        };
        auth.verify(&keys.sign(&good)?).await?;
        let iss = good["iss"].clone();
        for (bad, want) in [
            (None, AuthError::IssuerMissing),
            (Some(json!([iss])), AuthError::IssuerMissing),
            (
                Some(json!([iss, "https://evil.test"])),
                AuthError::IssuerMissing,
            ),
            (Some(json!(42)), AuthError::IssuerMissing),
            (Some(json!(null)), AuthError::IssuerMissing),
            (Some(json!({"iss": iss})), AuthError::IssuerMissing),
            (Some(json!("https://evil.test")), AuthError::Issuer),
        ] {
            let mut c = good.clone();
            match &bad {
                None => {
                    c.as_object_mut().map(|m| m.remove("iss"));
                }
                Some(v) => c["iss"] = v.clone(),
            }
            assert_eq!(
                auth.verify(&keys.sign(&c)?).await,
                Err(want),
                "{signer:?} iss {bad:?}"
            );
        }
    }
    // With no issuer configured, the server's own key still requires its own.
    let keys = TestKeys::new()?;
    let auth = auth(&keys, 5, 100);
    let mut c = claims(now() + 600);
    c["iss"] = json!("https://idp.test");
    assert_eq!(auth.verify(&keys.sign(&c)?).await, Err(AuthError::Issuer));
    Ok(())
}

#[tokio::test]
async fn a_provider_token_without_token_use_is_refused_and_own_tokens_have_none() -> TestResult {
    let keys = TestKeys::signed_by(Signer::IdentityProvider)?;
    for token_use in [TokenUse::Any, TokenUse::Id, TokenUse::Access] {
        let rules = ClaimRules {
            token_use,
            ..provider_rules()
        };
        let auth = provider_auth(&keys, rules);
        for bad in [None, Some(json!("refresh")), Some(json!(7))] {
            let mut c = provider_claims(now() + 600);
            match &bad {
                None => {
                    c.as_object_mut().map(|m| m.remove("token_use"));
                }
                Some(v) => c["token_use"] = v.clone(),
            }
            let r = auth.verify(&keys.sign(&c)?).await;
            assert!(
                matches!(
                    r,
                    Err(AuthError::TokenUse { .. } | AuthError::BadClaim { .. })
                ),
                "{token_use:?} {bad:?}: {r:?}"
            );
        }
    }
    let any = provider_auth(&keys, provider_rules());
    any.verify(&keys.sign(&provider_claims(now() + 600))?)
        .await?;

    // The server's own tokens carry none, whatever --token-use says; one that
    // carries one was not made by `configwatch token`.
    let own = TestKeys::new()?;
    let rules = ClaimRules {
        token_use: TokenUse::Id,
        ..ClaimRules::default()
    };
    let auth = Authenticator::new(own.clone(), rules);
    auth.verify(&own.sign(&claims(now() + 600))?).await?;
    let mut typed = claims(now() + 600);
    typed["token_use"] = json!("id");
    assert!(matches!(
        auth.verify(&own.sign(&typed)?).await,
        Err(AuthError::TokenUse { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn provider_roles_come_from_groups_or_the_declared_claim_and_never_relay_from_a_claim()
-> TestResult {
    let keys = TestKeys::signed_by(Signer::IdentityProvider)?;
    let role_of = |auth: Authenticator, extra: Value| {
        let keys = keys.clone();
        async move {
            let mut c = provider_claims(now() + 600);
            if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                m.extend(e.clone());
            }
            auth.verify(&keys.sign(&c)?)
                .await
                .map(|id| id.role)
                .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })
        }
    };
    let default = || provider_auth(&keys, provider_rules());
    let declared = || {
        provider_auth(
            &keys,
            ClaimRules {
                role_claim: Some("custom:role".into()),
                ..provider_rules()
            },
        )
    };
    // By default an attribute is not a role, whatever it says.
    for r in ["relay", "admin", "writer"] {
        assert_eq!(
            role_of(default(), json!({"custom:role": r})).await?,
            Role::Reader
        );
    }
    assert_eq!(
        role_of(default(), json!({"cognito:groups": ["staff", "relay"]})).await?,
        Role::Relay
    );
    assert_eq!(
        role_of(default(), json!({"cognito:groups": ["relay", "writer"]})).await?,
        Role::Writer
    );
    // A declared admin-only claim gives roles, except relay, and wins over groups.
    assert_eq!(
        role_of(declared(), json!({"custom:role": "writer"})).await?,
        Role::Writer
    );
    assert_eq!(
        role_of(
            declared(),
            json!({"custom:role": "reader", "cognito:groups": ["admin"]})
        )
        .await?,
        Role::Reader
    );
    assert_eq!(
        role_of(declared(), json!({"cognito:groups": ["relay"]})).await?,
        Role::Relay
    );
    let mut c = provider_claims(now() + 600);
    c["custom:role"] = json!("relay");
    c["cognito:groups"] = json!(["relay"]);
    assert_eq!(
        declared().verify(&keys.sign(&c)?).await,
        Err(AuthError::RelayFromAttribute("custom:role".into()))
    );
    // The server's own tokens: the role claim as written, relay included.
    let own = TestKeys::new()?;
    let auth = auth(&own, 5, 100);
    let mut relay = claims(now() + 600);
    relay["custom:role"] = json!("relay");
    assert_eq!(auth.verify(&own.sign(&relay)?).await?.role, Role::Relay);
    Ok(())
}

#[test]
fn the_time_rule_refuses_at_the_same_edges() {
    // exp: valid through exp + leeway inclusive.
    assert_eq!(check_time(100, None, 105, 5), Ok(()));
    assert_eq!(check_time(100, None, 106, 5), Err(AuthError::Expired));
    // nbf: valid from nbf - leeway inclusive.
    assert_eq!(check_time(200, Some(100), 95, 5), Ok(()));
    assert_eq!(
        check_time(200, Some(100), 94, 5),
        Err(AuthError::NotYetValid)
    );
    // Both wrong: expiry is reported, as jsonwebtoken does.
    assert_eq!(check_time(10, Some(100), 50, 0), Err(AuthError::Expired));
}

#[tokio::test]
async fn the_app_client_comes_from_aud_or_client_id_and_never_from_own_tokens() -> TestResult {
    let keys = TestKeys::signed_by(Signer::IdentityProvider)?;
    let rules = ClaimRules {
        audiences: vec!["app-web".into()],
        ..provider_rules()
    };
    let auth = provider_auth(&keys, rules);
    let mut id_token = provider_claims(now() + 600);
    id_token["aud"] = json!("app-web");
    let id = auth.verify(&keys.sign(&id_token)?).await?;
    assert_eq!(id.client_id.as_deref(), Some("app-web"));
    let mut access = provider_claims(now() + 600);
    access["token_use"] = json!("access");
    access["client_id"] = json!("app-web");
    access["aud"] = json!("something-else");
    let id = auth.verify(&keys.sign(&access)?).await?;
    assert_eq!(id.client_id.as_deref(), Some("app-web"));

    let keys = TestKeys::signed_by(Signer::ThisServer)?;
    let id = auth_of_own(&keys)
        .verify(&keys.sign(&claims(now() + 600))?)
        .await?;
    assert_eq!(id.client_id, None);
    Ok(())
}

fn auth_of_own(keys: &std::sync::Arc<TestKeys>) -> Authenticator {
    auth(keys, 5, 100)
}
