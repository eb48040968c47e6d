//! Parameter Store changes, from EventBridge "Parameter Store Change" events that a
//! rule sends to an SQS queue.
//!
//! Job: long-poll the queue, and for each event bring the named parameter's current
//! state into the hub. An event carries the parameter's name and operation but no
//! value and no version, so the parameter is read (`GetParameter`, through
//! [`SsmBackend::read`]) and the entry applied by its version; a parameter that is gone
//! becomes a tombstone. Reading the current state each time makes duplicates,
//! reordering and operations of any kind (`LabelParameterVersion` too) harmless. Only
//! scopes the hub has loaded, or is loading, are updated: for the others there is
//! nothing to update, their first load reads fresh state. A change that lands while a
//! scope's first load is in flight is merged into it by version, and a removal makes
//! the load read again, so neither is missed.
//!
//! Boundary: SQS and the event format stay in this module; the hub sees entries.
//!
//! A message is deleted only after its change is applied. A message that cannot be
//! parsed or is another kind of event (counted `sqs_messages_malformed`), or names a
//! parameter outside the root or one that maps to no tenant and valid key (counted
//! `sqs_messages_outside_root`), is logged and left alone: the queue's redrive policy
//! moves it to the dead-letter queue after `maxReceiveCount` receives. Each is counted
//! once, on its first receive.
//!
//! Retry policy, per operation:
//! - `ReceiveMessage`: long poll (`WaitTimeSeconds` 20) with an operation timeout
//!   above the wait; a failure is retried forever with jittered exponential backoff
//!   (the loop never dies), reset by the next success. The first receive, and the
//!   first after a failure, do not wait (a short poll), so that the source's health
//!   learns at once that the queue answers. The health logs the first failure and
//!   the recovery; each failed receive is logged at debug level.
//! - `GetParameter` (through the backend; the SDK's retry, [`crate::aws::retry_config`],
//!   covers throttling): a
//!   failure leaves the message; it becomes visible again after the queue's
//!   visibility timeout and is retried. If it keeps failing it ends in the
//!   dead-letter queue, and reconciliation repairs the change.
//! - `DeleteMessageBatch`: not retried. A message not deleted is received again and
//!   applied again, which is harmless.
//!
//! The task stops promptly when the shutdown token is cancelled; messages received
//! but not yet deleted then become visible again.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::health::SourceHealth;
use super::{SourceContext, SourceCounters};
use crate::hub::{ChangeSource, Origin};
use crate::model::Entry;
use crate::store::ssm::SsmBackend;
use crate::store::{Backend, StoreError};
use configwatch_client::{Backoff, Retry};

/// The `source` of Parameter Store events.
pub const EVENT_SOURCE: &str = "aws.ssm";
/// The `detail-type` of Parameter Store change events.
pub const EVENT_DETAIL_TYPE: &str = "Parameter Store Change";
/// Most messages SQS hands over in one receive.
const MAX_MESSAGES: i32 = 10;
/// The longest long-poll SQS allows.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// How far the SDK's operation timeout lies beyond the long-poll wait.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// How the queue is read.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// Long-poll wait of each receive (at most 20 s; shorter in tests).
    pub wait: Duration,
    /// First delay after a failed receive; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for SqsSettings {
    fn default() -> Self {
        SqsSettings {
            wait: MAX_WAIT,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// A Parameter Store change event, as far as configwatch needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterChange {
    /// The parameter's full name.
    pub name: String,
    /// `Create`, `Update`, `Delete`, `LabelParameterVersion`, ...
    pub operation: String,
    /// `String`, `StringList` or `SecureString`, when the event says.
    pub kind: Option<String>,
    /// The event's `time` (whole seconds), when it has a readable one.
    pub made_at: Option<std::time::SystemTime>,
}

/// Why a message is not a Parameter Store change event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedEvent {
    #[error("the message has no body")]
    NoBody,
    #[error("the body is not an EventBridge event: {0}")]
    NotAnEvent(String),
    #[error(
        "the event is not a Parameter Store change (source {event_source:?}, detail-type {detail_type:?})"
    )]
    OtherEvent {
        event_source: Option<String>,
        detail_type: Option<String>,
    },
    #[error("the event's detail is not a Parameter Store change: {0}")]
    BadDetail(String),
}

#[derive(Deserialize)]
struct Envelope {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
    detail: Option<serde_json::Value>,
    time: Option<String>,
}

#[derive(Deserialize)]
struct Detail {
    name: String,
    operation: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Reads an SQS message body holding an EventBridge event. Fields other than
/// `source`, `detail-type` and the detail's `name`, `operation` and `type` are
/// ignored (`account`, for one, may be missing).
pub fn parse_event(body: &str) -> Result<ParameterChange, MalformedEvent> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| MalformedEvent::NotAnEvent(e.to_string()))?;
    if envelope.source.as_deref() != Some(EVENT_SOURCE)
        || envelope.detail_type.as_deref() != Some(EVENT_DETAIL_TYPE)
    {
        return Err(MalformedEvent::OtherEvent {
            event_source: envelope.source,
            detail_type: envelope.detail_type,
        });
    }
    let detail = envelope
        .detail
        .ok_or_else(|| MalformedEvent::BadDetail("missing".into()))?;
    let detail: Detail =
        serde_json::from_value(detail).map_err(|e| MalformedEvent::BadDetail(e.to_string()))?;
    if detail.name.is_empty() {
        return Err(MalformedEvent::BadDetail("empty parameter name".into()));
    }
    Ok(ParameterChange {
        name: detail.name,
        operation: detail.operation,
        kind: detail.kind,
        made_at: envelope
            .time
            .and_then(|t| humantime::parse_rfc3339(&t).ok()),
    })
}

/// What became of one message.
#[derive(Debug)]
enum Outcome {
    /// Applied (or nothing to apply): delete it.
    Handled,
    Malformed(MalformedEvent),
    OutsideRoot(String),
    /// The parameter could not be read now: leave it to be received again.
    Retry(StoreError),
}

/// Reads the queue until `shutdown`. See the module documentation.
pub async fn run(
    ctx: SourceContext,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    backend: Arc<SsmBackend>,
    settings: SqsSettings,
    health: SourceHealth,
    shutdown: CancellationToken,
) {
    let wait = settings.wait.min(MAX_WAIT);
    let wait_seconds = i32::try_from(wait.as_secs()).unwrap_or(20);
    let timeout = TimeoutConfig::builder()
        .operation_timeout(wait + TIMEOUT_MARGIN)
        .operation_attempt_timeout(wait + TIMEOUT_MARGIN)
        .build();
    let mut backoff = Retry::new(Backoff::doubling(settings.retry_base, settings.retry_max));
    tracing::info!(queue = %queue_url, root = backend.root(), "reading Parameter Store events");
    let mut answered = false;
    loop {
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(MAX_MESSAGES)
            .wait_time_seconds(if answered { wait_seconds } else { 0 })
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(timeout.clone()),
            )
            .send();
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            r = receive => r,
        };
        let messages = match received {
            Ok(out) => {
                backoff.succeeded();
                health.succeeded();
                answered = true;
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                let delay = backoff.failed();
                health.failing(format!(
                    "ReceiveMessage failed: {}",
                    DisplayErrorContext(&e)
                ));
                answered = false;
                tracing::debug!(
                    queue = %queue_url,
                    error = %DisplayErrorContext(&e),
                    ?delay,
                    "SQS ReceiveMessage failed; retrying"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        SourceCounters::add(&ctx.counters.sqs_messages_received, messages.len() as u64);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = handle_batch(&ctx, &sqs, &queue_url, &backend, &messages) => {}
        }
    }
}

async fn handle_batch(
    ctx: &SourceContext,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    backend: &SsmBackend,
    messages: &[Message],
) {
    let mut done = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let id = m.message_id().unwrap_or("");
        let first_receive = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .is_none_or(|n| n == "1");
        match handle(ctx, backend, m.body()).await {
            Outcome::Handled => {
                if let Some(receipt) = m.receipt_handle() {
                    match DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                    {
                        Ok(entry) => done.push(entry),
                        Err(e) => {
                            tracing::warn!(message_id = id, error = %e, "cannot delete message")
                        }
                    }
                }
            }
            Outcome::Malformed(why) => {
                if first_receive {
                    SourceCounters::add(&ctx.counters.sqs_messages_malformed, 1);
                    tracing::warn!(
                        message_id = id,
                        reason = %why,
                        "malformed Parameter Store event; left for the dead-letter queue"
                    );
                }
            }
            Outcome::OutsideRoot(name) => {
                if first_receive {
                    SourceCounters::add(&ctx.counters.sqs_messages_outside_root, 1);
                    tracing::warn!(
                        message_id = id,
                        parameter = name,
                        root = backend.root(),
                        "Parameter Store event for a parameter outside the root or with no valid key; left for the dead-letter queue"
                    );
                }
            }
            Outcome::Retry(e) => {
                tracing::warn!(
                    message_id = id,
                    error = %e,
                    "cannot read the changed parameter; the message will be received again"
                );
            }
        }
    }
    if done.is_empty() {
        return;
    }
    match sqs
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(done))
        .send()
        .await
    {
        Ok(out) => {
            SourceCounters::add(
                &ctx.counters.sqs_messages_applied,
                out.successful().len() as u64,
            );
            for failed in out.failed() {
                tracing::warn!(
                    code = failed.code(),
                    message = failed.message(),
                    "SQS did not delete a handled message; it will be applied again"
                );
            }
        }
        Err(e) => tracing::warn!(
            error = %DisplayErrorContext(&e),
            "SQS DeleteMessageBatch failed; the messages will be applied again"
        ),
    }
}

/// Brings the parameter an event names into every loaded view that holds it.
async fn handle(ctx: &SourceContext, backend: &SsmBackend, body: Option<&str>) -> Outcome {
    let change = match body.ok_or(MalformedEvent::NoBody).and_then(parse_event) {
        Ok(change) => change,
        Err(why) => return Outcome::Malformed(why),
    };
    let origin = change
        .made_at
        .and_then(|at| Origin::at(ChangeSource::ParameterEvents, at));
    if let Some(origin) = origin {
        ctx.hub.freshness().saw(origin);
    }
    let targets = backend.locate(&change.name);
    if targets.is_empty() {
        return Outcome::OutsideRoot(change.name);
    }
    // One parameter, seen as a key of each scope it belongs to (tenant-wide, and a
    // service's): read once, applied under each scope's key.
    let mut current: Option<Option<Entry>> = None;
    for target in targets.iter().filter(|t| ctx.hub.has_view(&t.scope)) {
        let state = match &current {
            Some(state) => state.clone(),
            None => match backend.read(&target.scope, &target.key, false).await {
                Ok(state) => current.insert(state).clone(),
                Err(e) => return Outcome::Retry(e),
            },
        };
        match state {
            Some(mut entry) => {
                entry.key = Arc::from(target.key.as_str());
                let applied = ctx.hub.apply_from(&target.scope, entry, origin);
                tracing::debug!(
                    scope = %target.scope,
                    key = target.key,
                    operation = change.operation,
                    applied = applied.is_some(),
                    "Parameter Store change"
                );
            }
            None => {
                let removed = ctx.hub.remove_if_live(&target.scope, &target.key, origin);
                tracing::debug!(
                    scope = %target.scope,
                    key = target.key,
                    operation = change.operation,
                    removed = removed.is_some(),
                    "Parameter Store parameter gone"
                );
            }
        }
    }
    Outcome::Handled
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(detail: serde_json::Value) -> String {
        json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "Parameter Store Change",
            "source": "aws.ssm",
            "time": "2026-11-23T20:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:ssm:us-east-1:123456789012:parameter/config-service/acme/db"],
            "detail": detail,
        })
        .to_string()
    }

    #[test]
    fn parses_parameter_store_change_events() {
        let body = event(json!({
            "name": "/config-service/acme/db",
            "type": "SecureString",
            "operation": "Update",
            "description": ""
        }));
        assert_eq!(
            parse_event(&body),
            Ok(ParameterChange {
                name: "/config-service/acme/db".into(),
                operation: "Update".into(),
                kind: Some("SecureString".into()),
                made_at: humantime::parse_rfc3339("2026-11-23T20:00:00Z").ok(),
            })
        );
        let mut with_account: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
        with_account["account"] = json!("123456789012");
        assert!(parse_event(&with_account.to_string()).is_ok());
        let label = event(json!({"name": "/x", "operation": "LabelParameterVersion"}));
        assert_eq!(
            parse_event(&label).map(|c| (c.operation, c.kind)),
            Ok(("LabelParameterVersion".into(), None))
        );
    }

    #[test]
    fn refuses_what_is_not_a_parameter_store_change() {
        assert!(matches!(
            parse_event("garbage {"),
            Err(MalformedEvent::NotAnEvent(_))
        ));
        assert!(matches!(
            parse_event("[1,2]"),
            Err(MalformedEvent::NotAnEvent(_))
        ));
        let ec2 = json!({
            "source": "aws.ec2",
            "detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": "i-1", "state": "running"}
        });
        assert!(matches!(
            parse_event(&ec2.to_string()),
            Err(MalformedEvent::OtherEvent { .. })
        ));
        let no_detail = json!({"source": "aws.ssm", "detail-type": "Parameter Store Change"});
        assert!(matches!(
            parse_event(&no_detail.to_string()),
            Err(MalformedEvent::BadDetail(_))
        ));
        for detail in [
            json!({"operation": "Update"}),
            json!({"name": "/a"}),
            json!({"name": 5, "operation": "Update"}),
            json!({"name": "", "operation": "Update"}),
            json!("text"),
        ] {
            assert!(
                matches!(
                    parse_event(&event(detail.clone())),
                    Err(MalformedEvent::BadDetail(_))
                ),
                "{detail}"
            );
        }
    }
}
