//! Refusals and bad writes asked of the origin and of the relay: both answer with
//! the same code and the same message, which names what to fix.

use super::*;

/// A refusal both servers must give alike.
struct Refusal {
    what: &'static str,
    token: Option<String>,
    call: Call,
    code: Code,
}

/// Asks `refusal` of the origin and of the relay: both refuse with `code`, and the
/// relay's message is the origin's (it names what to fix).
async fn refused_alike(tier: &Tier, refusal: &Refusal) {
    let token = refusal.token.as_deref();
    let origin = refusal.call.on(tier.origin.addr, token).await;
    let relay = refusal.call.on(tier.relay.addr, token).await;
    let (origin, relay) = match (origin, relay) {
        (Err(origin), Err(relay)) => (origin, relay),
        answered => panic!(
            "{}: both must refuse {:?}; (origin, relay) answered {answered:?}",
            refusal.what, refusal.call
        ),
    };
    assert_eq!(
        origin.code(),
        refusal.code,
        "{}: origin {origin:?}",
        refusal.what
    );
    assert_eq!(
        relay.code(),
        refusal.code,
        "{}: relay {relay:?}",
        refusal.what
    );
    assert!(!relay.message().is_empty(), "{}: {relay:?}", refusal.what);
    assert_eq!(
        relay.message(),
        origin.message(),
        "{}: the relay says what the origin says",
        refusal.what
    );
}

#[tokio::test]
async fn a_relay_refuses_what_the_origin_refuses_with_the_same_status() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    let reader = tier.token("acme", None, Role::Reader);
    let billing = tier.token("acme", Some("billing"), Role::Writer);
    let relay = relay_token_of(tier.origin_dir.path());
    let expired = key_of(tier.origin_dir.path())
        .with_clock(Clock::starting_at(
            SystemTime::now() - Duration::from_secs(7200),
        ))
        .issue(
            &Scope::tenant("acme").unwrap(),
            Role::Writer,
            Duration::from_secs(3600),
            "test",
        )
        .unwrap();
    // Both tenants hold something, and the relay has loaded acme: a refusal is a
    // refusal, not a missing view.
    Call::put("tenant_config_a", "1", "")
        .on(tier.origin.addr, Some(&writer))
        .await
        .unwrap();
    let globex = tier.token("globex", None, Role::Writer);
    Call::put("tenant_config_b", "2", "")
        .on(tier.origin.addr, Some(&globex))
        .await
        .unwrap();
    Call::get("", "")
        .on(tier.relay.addr, Some(&reader))
        .await
        .unwrap();

    let deny = Code::PermissionDenied;
    let unauth = Code::Unauthenticated;
    let cases = [
        (
            "a reader's Put",
            Some(&reader),
            Call::put("tenant_config_a", "3", ""),
            deny,
        ),
        (
            "a reader's Delete",
            Some(&reader),
            Call::delete("tenant_config_a", ""),
            deny,
        ),
        (
            "tenant A's Get naming B",
            Some(&writer),
            Call::get("globex", ""),
            deny,
        ),
        (
            "tenant A's Watch naming B",
            Some(&writer),
            Call::watch("globex", ""),
            deny,
        ),
        (
            "tenant A's Put naming B",
            Some(&writer),
            Call::put("tenant_config_b", "3", "globex"),
            deny,
        ),
        (
            "a tenant-wide token's Get naming a service",
            Some(&reader),
            Call::get("", "billing"),
            deny,
        ),
        (
            "a tenant-wide token's Watch naming a service",
            Some(&reader),
            Call::watch("", "billing"),
            deny,
        ),
        (
            "a service token's Get naming another",
            Some(&billing),
            Call::get("", "shipping"),
            deny,
        ),
        (
            "a service token's Watch naming another",
            Some(&billing),
            Call::watch("", "shipping"),
            deny,
        ),
        ("a Get without a token", None, Call::get("", ""), unauth),
        ("a Watch without a token", None, Call::watch("", ""), unauth),
        (
            "a Put without a token",
            None,
            Call::put("tenant_config_a", "3", ""),
            unauth,
        ),
        (
            "an expired token's Get",
            Some(&expired),
            Call::get("", ""),
            unauth,
        ),
        (
            "an expired token's Watch",
            Some(&expired),
            Call::watch("", ""),
            unauth,
        ),
        (
            "an expired token's Put",
            Some(&expired),
            Call::put("tenant_config_a", "3", ""),
            unauth,
        ),
        (
            "a relay token's Put",
            Some(&relay),
            Call::put("tenant_config_a", "3", "acme"),
            deny,
        ),
        (
            "a relay token's Delete",
            Some(&relay),
            Call::delete("tenant_config_a", "acme"),
            deny,
        ),
        (
            "a relay token's Get naming no tenant",
            Some(&relay),
            Call::get("", ""),
            Code::InvalidArgument,
        ),
        (
            "a relay token's Watch naming no tenant",
            Some(&relay),
            Call::watch("", ""),
            Code::InvalidArgument,
        ),
    ];
    for (what, token, call, code) in cases {
        let refusal = Refusal {
            what,
            token: token.cloned(),
            call,
            code,
        };
        refused_alike(&tier, &refusal).await;
    }
    // Nothing refused was written: acme's key is still at its first version, and
    // globex's untouched.
    let mut c = connect(tier.origin.addr, Some(&writer)).await;
    let got = get_keys(&mut c, &["tenant_config_a"]).await;
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_a".to_owned(), 1, false)]
    );
    let mut c = connect(tier.origin.addr, Some(&globex)).await;
    let got = get_keys(&mut c, &["tenant_config_b"]).await;
    assert_eq!(got.entries[0].value, "2");
}

#[tokio::test]
async fn a_relay_answers_bad_writes_as_the_origin_does() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    Call::put("tenant_config_a", "1", "")
        .on(tier.origin.addr, Some(&writer))
        .await
        .unwrap();
    let put = |key: &str, value: &str, secret: bool, expected: Option<u64>| {
        Call::Put(proto::PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            secret,
            expected_version: expected,
            ..Default::default()
        })
    };
    let invalid = Code::InvalidArgument;
    let cases = [
        (
            "a key of no family",
            put("other_config_a", "1", false, None),
            invalid,
        ),
        (
            "a key reaching out of its tenant",
            put("tenant_config_../a", "1", false, None),
            invalid,
        ),
        (
            "a value that is not JSON",
            put("tenant_config_a", "{", false, None),
            invalid,
        ),
        (
            "a secret outside Parameter Store",
            put("tenant_config_a", r#""s""#, true, None),
            invalid,
        ),
        (
            "a parameter that is not a string",
            put("param_config_a", r#"{"a":1}"#, false, None),
            invalid,
        ),
        (
            "a stale compare-and-set",
            put("tenant_config_a", "2", false, Some(7)),
            Code::FailedPrecondition,
        ),
        (
            "a delete of a key that does not exist",
            Call::delete("tenant_config_missing", ""),
            Code::NotFound,
        ),
    ];
    for (what, call, code) in cases {
        let refusal = Refusal {
            what,
            token: Some(writer.clone()),
            call,
            code,
        };
        refused_alike(&tier, &refusal).await;
    }
}
