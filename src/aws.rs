//! AWS settings: which table, queue and parameter root, and the SDK configuration.
//!
//! Endpoints, region and credentials come from the standard AWS sources (environment,
//! profile, instance role), including `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_DYNAMODB`, `..._DYNAMODB_STREAMS`, `..._SSM`, `..._SQS`, so the same
//! binary runs against AWS or an emulator.
//!
//! `cognito`: the one call a relay makes to AWS, Cognito's unauthenticated
//! `InitiateAuth`, for its upstream token.
//!
//! Retries: every AWS call is retried by the SDK itself, with the one policy set here
//! ([`retry_config`]: standard mode, [`MAX_ATTEMPTS`] attempts, exponential backoff
//! with full jitter from [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`], on throttling,
//! 5xx, timeouts and connection failures). No module wraps a single call in a retry
//! loop of its own; what still fails is the caller's to handle: a request answers
//! UNAVAILABLE, a source's poll loop tries again on its next round.

pub mod cognito;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where configwatch finds its data on AWS.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// DynamoDB table holding `tenant_config_*` (its stream must be enabled).
    pub table: String,
    /// SQS queue filled by the EventBridge rule on Parameter Store changes. Without
    /// it, Parameter Store changes arrive only by reconciliation.
    pub queue_url: Option<String>,
    /// Parameter Store root: `param_config_<path>` of tenant T is `{root}/T/<path>`.
    pub ssm_root: String,
    /// Mean time between reconciliations of every loaded tenant (jittered ±20%).
    pub reconcile_interval: Duration,
}

/// Why an AWS setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("--table must name a DynamoDB table")]
    NoTable,
    #[error(
        "--ssm-root '{0}' must start with '/', not end with '/', and use segments of letters, digits, '_', '-' and '.'"
    )]
    BadRoot(String),
    #[error("--reconcile-interval must be at least 1s")]
    ReconcileTooShort,
}

impl AwsSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.table.trim().is_empty() {
            return Err(SettingsError::NoTable);
        }
        let root = &self.ssm_root;
        let ok = root.starts_with('/')
            && root.len() > 1
            && !root.ends_with('/')
            && root[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            });
        if !ok {
            return Err(SettingsError::BadRoot(root.clone()));
        }
        if self.reconcile_interval < Duration::from_secs(1) {
            return Err(SettingsError::ReconcileTooShort);
        }
        Ok(())
    }
}

/// Attempts of one AWS call, the first included, before its failure is reported.
pub const MAX_ATTEMPTS: u32 = 5;
/// Backoff before the first retry (the delay is a random fraction of it, doubling on
/// each attempt).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The retry policy of every AWS call (see the module documentation).
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// Loads the SDK configuration from the standard sources; `region` overrides theirs.
/// Every client made from it retries by [`retry_config`].
pub async fn sdk_config(region: Option<String>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry_config());
    if let Some(region) = region {
        loader = loader.region(Region::new(region));
    }
    loader.load().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(root: &str) -> AwsSettings {
        AwsSettings {
            table: "t".into(),
            queue_url: None,
            ssm_root: root.into(),
            reconcile_interval: Duration::from_secs(300),
        }
    }

    #[test]
    fn roots_are_checked() {
        assert_eq!(settings("/config-service").validate(), Ok(()));
        assert_eq!(settings("/a/b.c").validate(), Ok(()));
        for bad in ["", "/", "config", "/a/", "/a//b", "/a/../b", "/a b"] {
            assert!(settings(bad).validate().is_err(), "{bad}");
        }
    }
}
