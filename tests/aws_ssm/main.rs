//! Parameter Store on moto: parameters changed in SSM reach watchers through
//! EventBridge events on SQS, reconciliation repairs lost events, bad messages are
//! counted and left to the dead-letter queue, writes through configwatch land in
//! SSM with versions and compare-and-set, and a key's history comes from the
//! parameter's own versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod events;
mod history;
mod writes;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use common::*;
use configwatch::api::status::CURRENT_VERSION_METADATA;
use configwatch::auth::Role;
use configwatch::keys;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::source::health::SourceHealth;
use configwatch::source::sqs_events::{self, SqsSettings};
use configwatch::source::{SourceContext, SourceCounters, reconcile};
use configwatch::store::ssm::{SsmBackend, served_version};
use configwatch::store::{Backend, Router};
use configwatch_test_support::moto::{Moto, ROOT, Resources};
use configwatch_test_support::{eventually, wait_for};
use serde_json::json;
use tokio::task::JoinHandle;
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
    let dir = temp_dir();
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
        SourceHealth::detached("sqs-events"),
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
