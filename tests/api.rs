//! Get, Put, Delete and Watch over real sockets: behaviour, tenant isolation and bad
//! input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use configwatch::auth::Role;
use configwatch::proto;
use configwatch::proto::watch_response::{InitialMode, Kind};
use tonic::Code;

#[tokio::test]
async fn put_then_get() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let e = put(&mut c, "tenant_config_flags", "{ \"dark\": true }").await;
    assert_eq!((e.version, e.deleted), (1, false));
    put(&mut c, "param_config_db/url", "\"postgres://db\"").await;

    let got = c
        .get(proto::GetRequest {
            keys: vec!["tenant_config_flags".into(), "tenant_config_nope".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries.len(), 1);
    assert_eq!(
        got.entries[0].value, "{\"dark\":true}",
        "stored in compact form"
    );
    assert_eq!(got.missing_keys, ["tenant_config_nope"]);
    assert!(!got.resume_token.is_empty());

    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = all.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["param_config_db/url", "tenant_config_flags"]);

    let params = c
        .get(proto::GetRequest {
            prefixes: vec!["param_config_".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(params.entries.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_gets_puts_and_deletes_in_order_only_for_its_prefixes() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "param_config_db/url", "\"before\"").await;
    put(&mut c, "tenant_config_other", "1").await;

    let mut w = watch(&mut c, watch_prefixes(&["param_config_db/"])).await;
    let (entries, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Full as i32);
    assert_eq!(
        summary(&entries),
        [("param_config_db/url".into(), 1, false)]
    );

    put(&mut c, "tenant_config_other", "2").await; // not watched
    put(&mut c, "param_config_db/url", "\"after\"").await;
    put(&mut c, "param_config_db/pool", "[\"a\",\"b\"]").await;
    put(&mut c, "param_config_dbx", "\"no: the prefix is db/\"").await;
    delete(&mut c, "param_config_db/url").await;

    let got = changes(&mut w, 3).await;
    assert_eq!(
        summary(&got),
        [
            ("param_config_db/url".into(), 2, false),
            ("param_config_db/pool".into(), 1, false),
            ("param_config_db/url".into(), 3, true),
        ]
    );
    assert_eq!(got[0].value, "\"after\"");
    assert!(got[0].revision < got[1].revision && got[1].revision < got[2].revision);
    server.stop().await;
}

#[tokio::test]
async fn get_token_resumes_a_watch_without_gap_or_repeat() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    let snap = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    put(&mut c, "tenant_config_b", "2").await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: snap.resume_token,
            ..Default::default()
        },
    )
    .await;
    let (entries, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(summary(&entries), [("tenant_config_b".into(), 1, false)]);
    server.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_whatever_the_request_says() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut a = server.client("tenant-a", Role::Writer).await;
    let mut b = server.client("tenant-b", Role::Writer).await;
    put(&mut b, "tenant_config_secret-plan", "\"b only\"").await;
    let mut b_watch = watch(&mut b, watch_prefixes(&[])).await;
    initial(&mut b_watch).await;

    // Naming the other tenant is refused for every RPC.
    let get = a
        .get(proto::GetRequest {
            tenant: "tenant-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::PermissionDenied);
    assert!(
        get.message().contains("token is for tenant 'tenant-a'"),
        "{get:?}"
    );
    let w = a
        .watch(proto::WatchRequest {
            tenant: "tenant-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(w.code(), Code::PermissionDenied);
    let p = a
        .put(proto::PutRequest {
            tenant: "tenant-b".into(),
            key: "tenant_config_secret-plan".into(),
            value: "\"overwritten\"".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(p.code(), Code::PermissionDenied);
    let d = a
        .delete(proto::DeleteRequest {
            tenant: "tenant-b".into(),
            key: "tenant_config_secret-plan".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(d.code(), Code::PermissionDenied);

    // The same key names tenant A's own data: B's value is never visible or touched.
    let mine = a
        .get(proto::GetRequest {
            keys: vec!["tenant_config_secret-plan".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(mine.entries.is_empty());
    let mut a_watch = watch(&mut a, watch_prefixes(&[])).await;
    let (a_initial, _) = initial(&mut a_watch).await;
    assert!(a_initial.is_empty());
    put(&mut a, "tenant_config_secret-plan", "\"a's own\"").await;
    let a_change = changes(&mut a_watch, 1).await;
    assert_eq!(a_change[0].value, "\"a's own\"");

    // B saw nothing of A's write; its value is intact.
    put(&mut b, "tenant_config_marker", "1").await;
    let b_change = changes(&mut b_watch, 1).await;
    assert_eq!(
        summary(&b_change),
        [("tenant_config_marker".into(), 1, false)]
    );
    let theirs = b
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let plan = theirs
        .entries
        .iter()
        .find(|e| e.key == "tenant_config_secret-plan")
        .unwrap();
    assert_eq!((plan.version, plan.value.as_str()), (1, "\"b only\""));
    server.stop().await;
}

#[tokio::test]
async fn compare_and_set_conflicts_name_the_current_version() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let create = |v: Option<u64>| proto::PutRequest {
        key: "tenant_config_limits".into(),
        value: "{\"rps\":10}".into(),
        expected_version: v,
        ..Default::default()
    };
    assert_eq!(
        c.put(create(Some(0)))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
            .version,
        1
    );
    let exists = c.put(create(Some(0))).await.unwrap_err();
    assert_eq!(exists.code(), Code::FailedPrecondition);
    assert!(
        exists.message().contains("current version is 1"),
        "{exists:?}"
    );
    assert_eq!(
        c.put(create(Some(1)))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
            .version,
        2
    );
    let stale = c.put(create(Some(1))).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("current version is 2"),
        "{stale:?}"
    );
    assert_eq!(
        stale.metadata().get("configwatch-current-version").unwrap(),
        "2"
    );
    let del = c
        .delete(proto::DeleteRequest {
            key: "tenant_config_limits".into(),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(del.code(), Code::FailedPrecondition);
    // Nothing was lost by the refused writes.
    let got = c
        .get(proto::GetRequest {
            keys: vec!["tenant_config_limits".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries[0].version, 2);
    server.stop().await;
}

#[tokio::test]
async fn secrets_are_pushed_as_metadata_and_read_on_demand() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["param_config_"])).await;
    initial(&mut w).await;
    let put = c
        .put(proto::PutRequest {
            key: "param_config_db/password".into(),
            value: "\"hunter2\"".into(),
            secret: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(put.secret && put.value.is_empty());
    let pushed = changes(&mut w, 1).await;
    assert!(pushed[0].secret);
    assert_eq!(pushed[0].value, "", "secret values are never pushed");
    let got = c
        .get(proto::GetRequest {
            keys: vec!["param_config_db/password".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries[0].value, "\"hunter2\"");
    // A new watcher's initial state does not carry it either.
    let mut w2 = watch(&mut c, watch_prefixes(&[])).await;
    let (init, _) = initial(&mut w2).await;
    assert!(init[0].secret && init[0].value.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_hurts_no_one() {
    let dir = temp_dir();
    let server = TestServer::start_with(
        dir.path(),
        Options {
            max_request_bytes: 512 * 1024,
            ..Options::default()
        },
    )
    .await;
    let mut good = server.client("acme", Role::Writer).await;
    put(&mut good, "tenant_config_keep", "\"safe\"").await;
    let mut bystander = watch(&mut good, watch_prefixes(&[])).await;
    initial(&mut bystander).await;
    let mut c = server.client("acme", Role::Writer).await;

    let put_err = |key: &str, value: &str| proto::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, proto::PutRequest, Code, &str)> = vec![
        (
            "unknown prefix",
            put_err("feature_x", "1"),
            Code::InvalidArgument,
            "tenant_config_",
        ),
        (
            "empty key",
            put_err("", "1"),
            Code::InvalidArgument,
            "key is empty",
        ),
        (
            "dot dot",
            put_err("param_config_a/../b", "\"x\""),
            Code::InvalidArgument,
            "'..'",
        ),
        (
            "encoded slash",
            put_err("param_config_a%2Fb", "\"x\""),
            Code::InvalidArgument,
            "'%'",
        ),
        (
            "not json",
            put_err("tenant_config_x", "{oops"),
            Code::InvalidArgument,
            "not valid JSON",
        ),
        (
            "oversized tenant value",
            put_err("tenant_config_x", &format!("\"{}\"", "x".repeat(400_000))),
            Code::InvalidArgument,
            "limited to 400000 bytes",
        ),
        (
            "oversized param value",
            put_err("param_config_x", &format!("\"{}\"", "x".repeat(8_192))),
            Code::InvalidArgument,
            "limited to 8192 bytes",
        ),
        (
            "param not a string",
            put_err("param_config_x", "{\"a\":1}"),
            Code::InvalidArgument,
            "JSON string or an array",
        ),
        (
            "oversized request",
            put_err("tenant_config_x", &format!("\"{}\"", "x".repeat(600_000))),
            Code::OutOfRange,
            "message length too large",
        ),
    ];
    for (what, req, code, text) in cases {
        let err = c.put(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {:?}", err.message());
    }

    let too_many = c
        .watch(proto::WatchRequest {
            prefixes: (0..65).map(|i| format!("tenant_config_{i}")).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(too_many.message().contains("limit is 64"), "{too_many:?}");
    let bad_prefix = c.watch(watch_prefixes(&["nope_"])).await.unwrap_err();
    assert_eq!(bad_prefix.code(), Code::InvalidArgument);
    let bad_token = c
        .watch(proto::WatchRequest {
            resume_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().contains("resume_token"));
    let missing = c
        .delete(proto::DeleteRequest {
            key: "tenant_config_never".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let mut reader = server.client("acme", Role::Reader).await;
    let denied = reader
        .put(put_err("tenant_config_keep", "\"changed\""))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("writer or admin role"),
        "{denied:?}"
    );

    // The server is up, nothing was written, and the bystander still gets changes.
    put(&mut good, "tenant_config_after", "1").await;
    let got = changes(&mut bystander, 1).await;
    assert_eq!(summary(&got), [("tenant_config_after".into(), 1, false)]);
    let all = good
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = all
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.version))
        .collect();
    assert_eq!(
        keys,
        [("tenant_config_after", 1), ("tenant_config_keep", 1)]
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer_without_a_token() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "configwatch.v1.ConfigService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Reflection lists the service, as `grpcurl list` asks it to.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"configwatch.v1.ConfigService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let mut plain = configwatch::proto::config_service_client::ConfigServiceClient::new(channel);
    let err = plain.get(proto::GetRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("authorization"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_empty_watch_still_completes_its_initial_state() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("fresh", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let msg = next(&mut w).await;
    assert_eq!(msg.kind, Kind::Initial as i32);
    assert!(msg.initial_complete && msg.changes.is_empty() && !msg.resume_token.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn values_at_the_size_limit_travel_whole_through_put_get_and_watch() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    initial(&mut w).await;
    // Well above the first encode buffer (src/api/codec.rs), at the value limit.
    let big = format!("\"{}\"", "x".repeat(400_000 - 2));
    let small = "\"s\"".to_owned();
    for value in [&small, &big, &small, &big] {
        put(&mut c, "tenant_config_big", value).await;
        let got = changes(&mut w, 1).await;
        assert_eq!(got[0].value.len(), value.len());
        assert_eq!(&got[0].value, value);
    }
    let got = c
        .get(proto::GetRequest {
            keys: vec!["tenant_config_big".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries[0].value, big);
    assert_eq!(got.entries[0].version, 4);
    server.stop().await;
}
