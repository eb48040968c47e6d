//! AWS settings: which table, queue and parameter root, and the SDK configuration.
//!
//! Endpoints, region and credentials come from the standard AWS sources (environment,
//! profile, instance role), including `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_DYNAMODB`, `..._DYNAMODB_STREAMS`, `..._SSM`, `..._SQS`, so the same
//! binary runs against AWS or an emulator.

use std::time::Duration;

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

/// Loads the SDK configuration from the standard sources; `region` overrides theirs.
pub async fn sdk_config(region: Option<String>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
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
