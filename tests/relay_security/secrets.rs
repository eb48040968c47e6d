//! What a relay serves of scopes and secrets: a service token reads its service
//! through the relay (one upstream Watch per scope), and a secret is read upstream
//! at each Get with the caller's token, never pushed, never served from memory.

use super::*;

#[tokio::test]
async fn a_service_token_reads_its_service_through_the_relay() {
    let tier = Tier::start(None).await;
    let billing = tier.token("acme", Some("billing"), Role::Writer);
    let tenant_wide = tier.token("acme", None, Role::Writer);
    let mut at_origin = connect(tier.origin.addr, Some(&billing)).await;
    put(&mut at_origin, "tenant_config_rates", r#"{"eur":1}"#).await;
    let mut wide_at_origin = connect(tier.origin.addr, Some(&tenant_wide)).await;
    put(&mut wide_at_origin, "tenant_config_theme", r#""dark""#).await;

    let mut through = connect(tier.relay.addr, Some(&billing)).await;
    for service in ["", "billing"] {
        let got = through
            .get(proto::GetRequest {
                service: service.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("a Get naming service {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            summary(&got.entries),
            [("tenant_config_rates".to_owned(), 1, false)],
            "the service's configuration, nothing of the tenant's"
        );
    }
    let mut w = watch(
        &mut through,
        proto::WatchRequest {
            service: "billing".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let (held, _) = initial(&mut w).await;
    assert_eq!(
        summary(&held),
        [("tenant_config_rates".to_owned(), 1, false)]
    );
    put(&mut at_origin, "tenant_config_rates", r#"{"eur":2}"#).await;
    let delta = changes(&mut w, 1).await;
    assert_eq!(
        summary(&delta),
        [("tenant_config_rates".to_owned(), 2, false)]
    );
    assert_eq!(delta[0].value, r#"{"eur":2}"#);

    // A write through the relay carries the caller's token: it lands in the
    // service's scope (the relay's own token could not write at all).
    put(&mut through, "tenant_config_limits", "5").await;
    let got = get_keys(&mut at_origin, &["tenant_config_limits"]).await;
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_limits".to_owned(), 1, false)]
    );

    // The tenant-wide view through the same relay holds the tenant's keys only.
    let mut wide = connect(tier.relay.addr, Some(&tenant_wide)).await;
    let got = wide
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_theme".to_owned(), 1, false)]
    );
    // One upstream Watch per scope the relay serves: the service's and the tenant's.
    let admin = tier.relay.admin.expect("the relay's admin listener");
    let scrape = Scrape::take(admin).await;
    assert_eq!(scrape.value("configwatch_relay_upstream_watches"), 2.0);
}

const SECRET: &str = "param_config_db/password";

fn secret_put(value: &str) -> proto::PutRequest {
    proto::PutRequest {
        key: SECRET.to_owned(),
        value: value.to_owned(),
        secret: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_secret_is_read_upstream_at_every_get_and_never_pushed_by_the_relay() {
    let tier = Tier::start(None).await;
    let writer = tier.token("acme", None, Role::Writer);
    let mut relay = connect(tier.relay.addr, Some(&writer)).await;
    let written = relay
        .put(secret_put(r#""s3cret""#))
        .await
        .expect("a secret written through the relay")
        .into_inner()
        .entry
        .expect("entry");
    assert!(written.secret && written.version == 1, "{written:?}");

    let got = get_keys(&mut relay, &[SECRET]).await;
    assert_eq!(got.entries.len(), 1, "{got:?}");
    assert!(got.entries[0].secret);
    assert_eq!(got.entries[0].value, r#""s3cret""#, "a Get reads the value");

    let mut w = watch(&mut relay, watch_prefixes(&["param_config_"])).await;
    let (held, _) = initial(&mut w).await;
    assert_eq!(summary(&held), [(SECRET.to_owned(), 1, false)]);
    assert!(held[0].secret && held[0].value.is_empty(), "{held:?}");

    // Changed at the origin: the relay's next Get, at once, has the new value.
    let mut origin = connect(tier.origin.addr, Some(&writer)).await;
    origin.put(secret_put(r#""rotated""#)).await.unwrap();
    let got = get_keys(&mut relay, &[SECRET]).await;
    assert_eq!(got.entries[0].value, r#""rotated""#, "{got:?}");
    let whole = relay
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.entries[0].value, r#""rotated""#, "{whole:?}");
    // The Watch hears that it changed, never what it is.
    let delta = changes(&mut w, 1).await;
    assert_eq!(summary(&delta), [(SECRET.to_owned(), 2, false)]);
    assert!(delta[0].secret && delta[0].value.is_empty(), "{delta:?}");
    let mut late = watch(&mut relay, watch_prefixes(&[])).await;
    let (held, _) = initial(&mut late).await;
    assert!(held.iter().all(|e| e.value.is_empty()), "{held:?}");

    // The relay credential opens no secret: a relay token naming the tenant gets
    // the entry without its value, at the origin and at the relay.
    let relay_token = relay_token_of(tier.origin_dir.path());
    for (server, at) in [(&tier.origin, "origin"), (&tier.relay, "relay")] {
        let mut as_relay = connect(server.addr, Some(&relay_token)).await;
        let got = as_relay
            .get(proto::GetRequest {
                keys: vec![SECRET.to_owned()],
                tenant: "acme".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.entries.len(), 1, "{at}: {got:?}");
        assert!(
            got.entries[0].secret && got.entries[0].value.is_empty(),
            "{at}: {got:?}"
        );
    }

    // With the origin gone, the relay still serves what it holds, but not the
    // secret's value: it has none to serve.
    put(&mut relay, "tenant_config_plain", "1").await;
    tier.origin.kill9().await;
    let plain = get_keys(&mut relay, &["tenant_config_plain"]).await;
    assert_eq!(plain.entries[0].value, "1", "{plain:?}");
    let status = relay
        .get(proto::GetRequest {
            keys: vec![SECRET.to_owned()],
            ..Default::default()
        })
        .await
        .expect_err("no secret without the origin");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
}
