//! Changes made in Parameter Store reaching watchers: EventBridge events on SQS,
//! secrets as metadata, reconciliation of lost events, bad messages left to the
//! dead-letter queue, and service parameters.

use super::*;

#[tokio::test]
async fn parameters_created_updated_and_deleted_in_ssm_reach_a_watcher() {
    let env = start().await;
    let mut c = env.server.client("acme", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&["param_config_"])).await;
    let (entries, _) = initial(&mut w).await;
    assert!(entries.is_empty());
    let url = name("acme/db/url");

    env.put_param(&url, "postgres://a", ParameterType::String)
        .await;
    env.moto.ssm_change_event(&url, "Create", "String").await;
    let created = changes_soon(&mut w, 1).await;
    assert_eq!(
        summary(&created),
        [(
            "param_config_db/url".into(),
            env.version_in_ssm(&url).await,
            false
        )]
    );
    assert_eq!(created[0].value, "\"postgres://a\"");

    // Another tenant's parameter never reaches acme's watcher.
    let theirs = name("other/db/url");
    env.put_param(&theirs, "theirs", ParameterType::String)
        .await;
    env.moto.ssm_change_event(&theirs, "Create", "String").await;

    // An update that also changes the type, to a list.
    env.put_param(&url, "r1,r2", ParameterType::StringList)
        .await;
    env.moto
        .ssm_change_event(&url, "Update", "StringList")
        .await;
    let updated = changes_soon(&mut w, 1).await;
    assert_eq!(updated[0].value, "[\"r1\",\"r2\"]");
    assert_eq!(updated[0].version, env.version_in_ssm(&url).await);
    assert!(updated[0].version > created[0].version);

    env.delete_param(&url).await;
    env.moto
        .ssm_change_event(&url, "Delete", "StringList")
        .await;
    let deleted = changes_soon(&mut w, 1).await;
    assert_eq!(deleted[0].key, "param_config_db/url");
    assert!(deleted[0].deleted);
    assert!(deleted[0].version > updated[0].version);

    // Created again: SSM restarts its Version at 1, the served version still grows.
    env.put_param(&url, "postgres://b", ParameterType::String)
        .await;
    env.moto.ssm_change_event(&url, "Create", "String").await;
    let again = changes_soon(&mut w, 1).await;
    assert_eq!(env.param(&url).await.map(|p| p.2 % 1024), Some(1));
    assert!(again[0].version > deleted[0].version);
    assert_eq!(again[0].value, "\"postgres://b\"");

    wait_for(
        PATIENCE,
        || "every message handled and deleted".into(),
        || env.count(|c| &c.sqs_messages_applied) == 5,
    )
    .await;
    assert_eq!(env.count(|c| &c.sqs_messages_malformed), 0);
    env.stop().await;
}

#[tokio::test]
async fn a_secure_string_change_arrives_as_metadata_and_get_reads_its_value() {
    let env = start().await;
    let mut c = env.server.client("acme", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&["param_config_db/"])).await;
    initial(&mut w).await;
    let password = name("acme/db/password");
    let key = "param_config_db/password";

    env.put_param(&password, "hunter2", ParameterType::SecureString)
        .await;
    env.moto
        .ssm_change_event(&password, "Create", "SecureString")
        .await;
    let got = changes_soon(&mut w, 1).await;
    assert_eq!(
        summary(&got),
        [(key.into(), env.version_in_ssm(&password).await, false)]
    );
    assert!(got[0].secret);
    assert_eq!(got[0].value, "", "a secret is never pushed");
    let scope = Scope::tenant("acme").unwrap();
    assert!(
        env.server
            .hub
            .held(&scope, key)
            .is_some_and(|e| e.secret && e.value.is_none()),
        "a secret is never cached"
    );
    let read = get_key(&mut c, key).await;
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.entries[0].value, "\"hunter2\"");
    assert!(read.entries[0].secret);

    env.put_param(&password, "hunter3", ParameterType::SecureString)
        .await;
    env.moto
        .ssm_change_event(&password, "Update", "SecureString")
        .await;
    let rotated = changes_soon(&mut w, 1).await;
    assert!(rotated[0].version > got[0].version);
    assert_eq!(rotated[0].value, "");
    assert_eq!(get_key(&mut c, key).await.entries[0].value, "\"hunter3\"");

    // Another tenant asking for the same key reads its own tenant: nothing.
    let mut other = env.server.client("other", Role::Reader).await;
    let theirs = get_key(&mut other, key).await;
    assert!(theirs.entries.is_empty());
    assert_eq!(theirs.missing_keys, [key]);
    env.stop().await;
}

#[tokio::test]
async fn a_lost_event_is_repaired_by_reconciliation() {
    let env = start().await;
    env.put_param(&name("acme/a"), "1", ParameterType::String)
        .await;
    env.put_param(&name("acme/gone"), "x", ParameterType::String)
        .await;
    let mut c = env.server.client("acme", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&["param_config_"])).await;
    let (entries, _) = initial(&mut w).await;
    assert_eq!(entries.len(), 2);

    // Changed in SSM, but no event ever arrives.
    env.put_param(&name("acme/a"), "2", ParameterType::String)
        .await;
    env.put_param(&name("acme/new"), "n1,n2", ParameterType::StringList)
        .await;
    env.delete_param(&name("acme/gone")).await;
    let scope = Scope::tenant("acme").unwrap();
    assert_eq!(
        env.server
            .hub
            .held(&scope, "param_config_a")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("\"1\""),
        "nothing told the server"
    );

    let drift = reconcile::pass(&env.ctx, &env.shutdown).await;
    assert_eq!(drift, 3);
    assert_eq!(env.count(|c| &c.reconcile_drift), 3);
    let got = changes_soon(&mut w, 3).await;
    let by_key: BTreeMap<_, _> = got
        .iter()
        .map(|e| (e.key.as_str(), (e.value.as_str(), e.deleted)))
        .collect();
    assert_eq!(
        by_key,
        BTreeMap::from([
            ("param_config_a", ("\"2\"", false)),
            ("param_config_gone", ("", true)),
            ("param_config_new", ("[\"n1\",\"n2\"]", false)),
        ])
    );
    assert_eq!(reconcile::pass(&env.ctx, &env.shutdown).await, 0);
    env.stop().await;
}

#[tokio::test]
async fn malformed_and_outside_root_messages_are_counted_left_to_the_dlq_and_lose_nothing() {
    let env = start().await;
    let mut c = env.server.client("acme", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&["param_config_"])).await;
    initial(&mut w).await;

    let garbage = "this is not JSON {".to_owned();
    let other_kind = json!({
        "version": "0",
        "id": "1",
        "source": "aws.ec2",
        "detail-type": "EC2 Instance State-change Notification",
        "detail": {"instance-id": "i-0123", "state": "running"}
    })
    .to_string();
    // The rule would filter this one out; it reaches the queue another way.
    let outside = json!({
        "version": "0",
        "id": "2",
        "source": "aws.ssm",
        "detail-type": "Parameter Store Change",
        "detail": {"name": "/elsewhere/acme/db/url", "type": "String", "operation": "Update"}
    })
    .to_string();
    for body in [&garbage, &other_kind, &outside] {
        env.send_raw(body).await;
    }
    let url = name("acme/db/url");
    env.put_param(&url, "after the bad ones", ParameterType::String)
        .await;
    env.moto.ssm_change_event(&url, "Create", "String").await;
    let got = changes_soon(&mut w, 1).await;
    assert_eq!(got[0].value, "\"after the bad ones\"");

    // The bad messages are not deleted: the redrive policy moves them to the DLQ.
    let in_dlq: RefCell<BTreeMap<String, String>> = RefCell::default();
    eventually(
        PATIENCE,
        || format!("the dead-letter queue: {:?}", in_dlq.borrow()),
        || async {
            let out = env
                .sqs
                .receive_message()
                .queue_url(&env.res.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            let mut held = in_dlq.borrow_mut();
            for m in out.messages() {
                held.insert(
                    m.message_id().unwrap().to_owned(),
                    m.body().unwrap().to_owned(),
                );
            }
            (held.len() >= 3).then_some(())
        },
    )
    .await;
    let in_dlq = in_dlq.into_inner();
    let bodies: BTreeSet<&str> = in_dlq.values().map(String::as_str).collect();
    assert_eq!(
        bodies,
        BTreeSet::from([garbage.as_str(), other_kind.as_str(), outside.as_str()])
    );
    assert_eq!(env.count(|c| &c.sqs_messages_malformed), 2);
    assert_eq!(env.count(|c| &c.sqs_messages_outside_root), 1);

    // The loop goes on.
    env.put_param(&url, "later", ParameterType::String).await;
    env.moto.ssm_change_event(&url, "Update", "String").await;
    assert_eq!(changes_soon(&mut w, 1).await[0].value, "\"later\"");
    wait_for(
        PATIENCE,
        || "the good messages deleted".into(),
        || env.count(|c| &c.sqs_messages_applied) == 2,
    )
    .await;
    assert_eq!(
        (
            env.count(|c| &c.sqs_messages_malformed),
            env.count(|c| &c.sqs_messages_outside_root)
        ),
        (2, 1),
        "each bad message counted once, though received twice"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_service_parameter_change_reaches_the_service_and_the_tenant_wide_view() {
    let env = start().await;
    let (key, _) =
        configwatch::auth::local::LocalKey::load_or_create(&env.server.data_dir).unwrap();
    let orders_token = key
        .issue(
            &Scope::new("acme", Some("orders")).unwrap(),
            Role::Reader,
            Duration::from_secs(600),
            "t",
        )
        .unwrap();
    let mut tenant = env.server.client("acme", Role::Reader).await;
    let mut orders = connect(env.server.addr, Some(&orders_token)).await;
    let mut tw = watch(&mut tenant, watch_prefixes(&["param_config_"])).await;
    let mut ow = watch(&mut orders, watch_prefixes(&["param_config_"])).await;
    initial(&mut tw).await;
    initial(&mut ow).await;

    let url = name("acme/orders/db/url");
    env.put_param(&url, "postgres://orders", ParameterType::String)
        .await;
    env.moto.ssm_change_event(&url, "Create", "String").await;
    let version = env.version_in_ssm(&url).await;
    let seen_by_orders = changes_soon(&mut ow, 1).await;
    assert_eq!(
        summary(&seen_by_orders),
        [("param_config_db/url".into(), version, false)]
    );
    let seen_by_tenant = changes_soon(&mut tw, 1).await;
    assert_eq!(
        summary(&seen_by_tenant),
        [("param_config_orders/db/url".into(), version, false)]
    );
    assert_eq!(seen_by_tenant[0].value, "\"postgres://orders\"");

    env.delete_param(&url).await;
    env.moto.ssm_change_event(&url, "Delete", "String").await;
    assert!(changes_soon(&mut ow, 1).await[0].deleted);
    assert!(changes_soon(&mut tw, 1).await[0].deleted);
    env.stop().await;
}
