//! Parameter Store on moto: parameters changed in SSM reach watchers through
//! EventBridge events on SQS, reconciliation repairs lost events, bad messages are
//! counted and left to the dead-letter queue, and writes through configwatch land in
//! SSM with versions and compare-and-set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use common::moto::{Moto, ROOT, Resources};
use common::*;
use configwatch::api::status::CURRENT_VERSION_METADATA;
use configwatch::auth::Role;
use configwatch::keys;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::source::sqs_events::{self, SqsSettings};
use configwatch::source::{SourceContext, SourceCounters, reconcile};
use configwatch::store::ssm::{SsmBackend, served_version};
use configwatch::store::{Backend, Router};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

struct Env {
    moto: Moto,
    res: Resources,
    ssm: aws_sdk_ssm::Client,
    sqs: aws_sdk_sqs::Client,
    backend: Arc<SsmBackend>,
    server: TestServer,
    ctx: SourceContext,
    shutdown: CancellationToken,
    source: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// moto with the template's resources, a server whose `param_config_*` lives in
/// SSM, and the SQS source feeding its hub.
async fn start() -> Env {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(1)).await;
    let ssm = moto.ssm().await;
    let sqs = moto.sqs().await;
    let backend = Arc::new(SsmBackend::new(ssm.clone(), ROOT));
    let dir = tempfile::tempdir().unwrap();
    let router = Router::new(vec![(
        &keys::PARAM_CONFIG,
        backend.clone() as Arc<dyn Backend>,
    )]);
    let server = TestServer::start_routed(dir.path(), router, Options::default()).await;
    let ctx = SourceContext {
        hub: server.hub.clone(),
        counters: Arc::new(SourceCounters::default()),
    };
    let shutdown = CancellationToken::new();
    let source = tokio::spawn(sqs_events::run(
        ctx.clone(),
        sqs.clone(),
        res.queue_url.clone(),
        backend.clone(),
        SqsSettings {
            wait: Duration::from_secs(2),
            ..SqsSettings::default()
        },
        shutdown.clone(),
    ));
    Env {
        moto,
        res,
        ssm,
        sqs,
        backend,
        server,
        ctx,
        shutdown,
        source,
        _dir: dir,
    }
}

impl Env {
    /// Stops the source (it must stop promptly, mid long-poll) and the server.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.source)
            .await
            .expect("the SQS source stops promptly on shutdown")
            .expect("the SQS source did not panic");
        drop(self.ctx);
        self.server.stop().await;
        drop(self.moto);
    }

    fn count(&self, counter: fn(&SourceCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        SourceCounters::get(counter(&self.ctx.counters))
    }

    async fn put_param(&self, name: &str, value: &str, kind: ParameterType) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(kind)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
    }

    async fn delete_param(&self, name: &str) {
        self.ssm
            .delete_parameter()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e:?}"));
    }

    /// (type, value, served version) of a parameter in SSM, decrypted; `None` if absent.
    async fn param(&self, name: &str) -> Option<(ParameterType, String, u64)> {
        match self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(out) => {
                let p = out.parameter.unwrap();
                let ms = p.last_modified_date().unwrap().to_millis().unwrap();
                Some((
                    p.r#type().unwrap().clone(),
                    p.value().unwrap().to_owned(),
                    served_version(ms, p.version()),
                ))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                None
            }
            Err(e) => panic!("get {name}: {e:?}"),
        }
    }

    async fn version_in_ssm(&self, name: &str) -> u64 {
        self.param(name).await.expect("parameter exists").2
    }

    async fn send_raw(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.res.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
}

fn name(path: &str) -> String {
    format!("{ROOT}/{path}")
}

/// Polls `check` until it holds, failing after PATIENCE.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `count` changes, within PATIENCE overall (progress messages would keep
/// `changes` waiting forever for a change that never comes).
async fn changes_soon(
    stream: &mut tonic::codec::Streaming<proto::WatchResponse>,
    count: usize,
) -> Vec<proto::Entry> {
    tokio::time::timeout(PATIENCE, changes(stream, count))
        .await
        .unwrap_or_else(|_| panic!("{count} change(s) within {PATIENCE:?}"))
}

async fn get_key(c: &mut Client, key: &str) -> proto::GetResponse {
    c.get(proto::GetRequest {
        keys: vec![key.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

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

    eventually("every message handled and deleted", || async {
        env.count(|c| &c.sqs_messages_applied) == 5
    })
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
    let mut in_dlq: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + PATIENCE;
    while in_dlq.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the dead-letter queue: {in_dlq:?}"
        );
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
        for m in out.messages() {
            in_dlq.insert(
                m.message_id().unwrap().to_owned(),
                m.body().unwrap().to_owned(),
            );
        }
    }
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
    eventually("the good messages deleted", || async {
        env.count(|c| &c.sqs_messages_applied) == 2
    })
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

fn conflict_version(status: &tonic::Status) -> u64 {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .metadata()
        .get(CURRENT_VERSION_METADATA)
        .expect("current version metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn put_expecting(
    c: &mut Client,
    key: &str,
    value: &str,
    expected: Option<u64>,
    secret: bool,
) -> Result<proto::Entry, tonic::Status> {
    c.put(proto::PutRequest {
        key: key.into(),
        value: value.into(),
        expected_version: expected,
        secret,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().entry.unwrap())
}

async fn delete_expecting(
    c: &mut Client,
    key: &str,
    expected: Option<u64>,
) -> Result<proto::Entry, tonic::Status> {
    c.delete(proto::DeleteRequest {
        key: key.into(),
        expected_version: expected,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().entry.unwrap())
}

#[tokio::test]
async fn puts_and_deletes_through_configwatch_land_in_ssm_with_versions_and_conflicts_are_refused()
{
    let env = start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    let key = "param_config_db/url";
    let url = name("acme/db/url");

    let v1 = put_expecting(&mut c, key, "\"a\"", Some(0), false)
        .await
        .unwrap();
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::String, "a".into(), v1.version))
    );
    let v2 = put_expecting(&mut c, key, "\"b\"", Some(v1.version), false)
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(v2.value, "\"b\"");

    // Stale and create-only writes are refused and change nothing.
    let stale = put_expecting(&mut c, key, "\"c\"", Some(v1.version), false)
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&stale), v2.version);
    let exists = put_expecting(&mut c, key, "\"c\"", Some(0), false)
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&exists), v2.version);
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::String, "b".into(), v2.version))
    );

    // A list, and a type change from String to StringList.
    put(&mut c, "param_config_db/hosts", "[\"h1\", \"h2\"]").await;
    assert_eq!(
        env.param(&name("acme/db/hosts")).await.map(|p| (p.0, p.1)),
        Some((ParameterType::StringList, "h1,h2".into()))
    );
    let v3 = put_expecting(&mut c, key, "[\"x\",\"y\"]", Some(v2.version), false)
        .await
        .unwrap();
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::StringList, "x,y".into(), v3.version))
    );

    // A secret: SecureString in SSM, never in the response, read by Get.
    let secret = put_expecting(&mut c, "param_config_db/password", "\"pw\"", None, true)
        .await
        .unwrap();
    assert!(secret.secret && secret.value.is_empty());
    assert_eq!(
        env.param(&name("acme/db/password")).await,
        Some((ParameterType::SecureString, "pw".into(), secret.version))
    );
    let read = get_key(&mut c, "param_config_db/password").await;
    assert_eq!(read.entries[0].value, "\"pw\"");

    // Deletes: compare-and-set, then a tombstone above the last version.
    let stale = delete_expecting(&mut c, key, Some(v2.version))
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&stale), v3.version);
    assert!(env.param(&url).await.is_some());
    let gone = delete_expecting(&mut c, key, Some(v3.version))
        .await
        .unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.version, v3.version + 1);
    assert_eq!(env.param(&url).await, None);
    let missing = delete_expecting(&mut c, key, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = put_expecting(&mut c, key, "\"d\"", Some(gone.version), false)
        .await
        .unwrap_err();
    assert_eq!(
        conflict_version(&missing),
        0,
        "a deleted key counts as absent"
    );

    // Created again: SSM's Version restarts, configwatch's keeps growing.
    let again = put_expecting(&mut c, key, "\"d\"", Some(0), false)
        .await
        .unwrap();
    assert!(again.version > gone.version);
    assert_eq!(env.param(&url).await.map(|p| p.2 % 1024), Some(1));
    env.stop().await;
}

#[tokio::test]
async fn a_tenant_loads_through_every_page_and_only_its_own_valid_names() {
    let env = start().await;
    for i in 0..23 {
        env.put_param(&name(&format!("acme/p/{i:02}")), "v", ParameterType::String)
            .await;
    }
    env.put_param(&name("acme/db/password"), "pw", ParameterType::SecureString)
        .await;
    let too_deep = name(&format!("acme/{}", ["d"; 13].join("/")));
    env.put_param(&too_deep, "v", ParameterType::String).await;
    env.put_param(&name("acme2/x"), "v", ParameterType::String)
        .await;
    env.put_param(&name("other/x"), "v", ParameterType::String)
        .await;
    env.put_param("/elsewhere/acme/x", "v", ParameterType::String)
        .await;

    let acme = Scope::tenant("acme").unwrap();
    let loaded = env.backend.load(&acme, "param_config_").await.unwrap();
    let keys: BTreeSet<String> = loaded.iter().map(|e| e.key.to_string()).collect();
    let mut expected: BTreeSet<String> =
        (0..23).map(|i| format!("param_config_p/{i:02}")).collect();
    expected.insert("param_config_db/password".into());
    assert_eq!(keys, expected);
    let secret = loaded.iter().find(|e| e.secret).expect("the SecureString");
    assert!(secret.value.is_none(), "loaded without its value");
    assert!(
        env.backend
            .load(&acme, "tenant_config_")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.backend
            .load(&acme, "param_config_p/1")
            .await
            .unwrap()
            .len(),
        10
    );

    let mut c = env.server.client("acme", Role::Reader).await;
    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 24);
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
