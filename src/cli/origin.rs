//! The composition of an origin on AWS: the DynamoDB and Parameter Store backends
//! (with the history retention), the router and hub over them, and the supervised
//! sources that bring outside changes in (the table's stream, the Parameter Store
//! event queue, reconciliation).
//!
//! Boundary: wiring only, called by the composition root (`serve.rs`), which owns
//! the flags, the server and the admin listener.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AwsArgs;
use super::serve::SOURCE_RESTART;
use crate::aws::AwsSettings;
use crate::hub::{Hub, HubConfig};
use crate::keys;
use crate::source::health::Awaited;
use crate::source::supervise::Supervisor;
use crate::source::{SourceContext, SourceCounters, ddb_streams, reconcile, sqs_events};
use crate::store::Router;
use crate::store::dynamodb::DynamoBackend;
use crate::store::history::Retention;
use crate::store::ssm::SsmBackend;

/// What an origin records in its keys' history besides each write's caller: how
/// long versions are kept, and the name it gives itself as the instance that made a
/// write or saw another tool's change.
pub(super) struct History {
    pub retention: Retention,
    pub instance: String,
}

/// Builds the AWS backends and starts the sources that bring outside changes in: the
/// table's stream, the Parameter Store event queue (when given) and reconciliation.
/// They run, supervised, until `stop`.
pub(super) async fn start_aws(
    settings: &AwsSettings,
    args: &AwsArgs,
    history: &History,
    hub_config: HubConfig,
    counters: Arc<SourceCounters>,
    stop: CancellationToken,
) -> (Arc<Router>, Arc<Hub>, Supervisor) {
    let sdk = crate::aws::sdk_config(args.region.clone()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    // The identity comes from the table: wait for it as the stream reader would.
    let mut backoff = configwatch_client::Retry::new(configwatch_client::Backoff::doubling(
        Duration::from_millis(500),
        Duration::from_secs(30),
    ));
    let store_id = loop {
        match crate::store::identity::aws_store_id(&dynamodb, &settings.table, &settings.ssm_root)
            .await
        {
            Ok(id) => break id,
            Err(e) => tracing::error!(error = %e, "cannot derive the store identity yet; retrying"),
        }
        tokio::time::sleep(backoff.failed()).await;
    };
    tracing::info!(%store_id, "store identity derived from the table and the Parameter Store root");
    let ssm = Arc::new(
        SsmBackend::new(aws_sdk_ssm::Client::new(&sdk), settings.ssm_root.clone())
            .with_retention(history.retention),
    );
    let router = Arc::new(
        Router::new(vec![
            (
                &keys::TENANT_CONFIG,
                Arc::new(
                    DynamoBackend::new(dynamodb.clone(), settings.table.clone())
                        .with_retention(history.retention),
                ),
            ),
            (&keys::PARAM_CONFIG, ssm.clone()),
        ])
        .with_store_id(store_id.as_str()),
    );
    let hub = Arc::new(Hub::new(router.clone(), hub_config));
    let ctx = SourceContext {
        hub: hub.clone(),
        counters,
    };
    let streams = ddb_streams::StreamSettings {
        poll_interval: *args.stream_poll_interval,
        instance: history.instance.clone(),
        retention: history.retention,
        ..ddb_streams::StreamSettings::default()
    };
    let mut sources =
        Supervisor::new(stop, SOURCE_RESTART).with_down_grace(*args.source_down_grace);
    let (stream_ctx, stream_client, table) = (
        ctx.clone(),
        aws_sdk_dynamodbstreams::Client::new(&sdk),
        settings.table.clone(),
    );
    sources.spawn_reporting("dynamodb-stream", Awaited::Success, move |stop, health| {
        ddb_streams::run(
            stream_ctx.clone(),
            streams.clone(),
            dynamodb.clone(),
            stream_client.clone(),
            table.clone(),
            health,
            stop,
        )
    });
    match &settings.queue_url {
        Some(queue_url) => {
            let (sqs_ctx, sqs, queue_url) = (
                ctx.clone(),
                aws_sdk_sqs::Client::new(&sdk),
                queue_url.clone(),
            );
            sources.spawn_reporting("sqs-events", Awaited::Success, move |stop, health| {
                sqs_events::run(
                    sqs_ctx.clone(),
                    sqs.clone(),
                    queue_url.clone(),
                    ssm.clone(),
                    sqs_events::SqsSettings::default(),
                    health,
                    stop,
                )
            });
        }
        None => tracing::warn!(
            "no --queue-url: Parameter Store changes made outside configwatch arrive only by reconciliation"
        ),
    }
    let interval = settings.reconcile_interval;
    sources.spawn_reporting("reconcile", Awaited::TaskOnly, move |stop, health| {
        reconcile::run(ctx.clone(), interval, health, stop)
    });
    (router, hub, sources)
}
