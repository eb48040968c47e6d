//! The Parameter Store backend for `param_config_*`: one parameter per key.
//!
//! Job: load a scope's parameters, write Put/Delete with compare-and-set on the served
//! version, read one parameter (a SecureString decrypted only on demand), read one
//! parameter's history with each version's writer, and map parameter names to scopes
//! and keys for [`crate::source::sqs_events`]. Boundary: AWS SDK types stay in this
//! module and the SQS source; the hub and the API see only [`Scope`], [`Entry`],
//! [`StoreError`] and the history types.
//!
//! Layout: key `param_config_<path>` of tenant T is parameter `{root}/T/<path>`; of a
//! service scope S of T, `{root}/T/S/<path>`. A tenant-wide load reads everything under
//! `{root}/T`, service subtrees included (their keys then start with `S/`). Names that
//! do not form valid keys (too deep, say) are skipped with a warning.
//!
//! | parameter type | served as |
//! |---|---|
//! | `String` | a JSON string |
//! | `StringList` | a JSON array of its comma-separated items |
//! | `SecureString` | a secret entry: no value, except from `read(.., with_secret)` |
//!
//! Versions: see [`served_version`]. Parameter Store restarts `Version` at 1 when a
//! parameter is deleted and created again; the served version also counts the
//! modification time, so it keeps growing.
//!
//! Compare-and-set: Parameter Store has no conditional write. Creating with an
//! expected version of 0 uses `Overwrite=false`, which is atomic. Any other expected
//! version is checked with `GetParameter` and then written: a writer that slips in
//! between the check and the write is overwritten without a conflict. This window is a
//! known limitation of the backend (it lasts one round trip).
//! Every overwrite reads the parameter first (unconditional ones too): the write's
//! audit names the Parameter Store version it makes and the served version it
//! replaces.
//!
//! Retry policy, per operation. Every call goes through the SDK's standard retry, set
//! once for all AWS calls ([`crate::aws::retry_config`]: attempts with jittered
//! exponential backoff on throttling, 5xx, timeouts and connection failures); this
//! module adds no retry loop of its own.
//! - `GetParametersByPath` (load, per page), `GetParameter` (read, compare-and-set
//!   checks and the version a write replaces, reading back a write) and
//!   `GetParameterHistory` (history, per page): idempotent reads, the standard retry fits
//!   (Parameter Store's request rate limits are low, and a reconciliation pass over
//!   many tenants can reach them); what still fails is [`StoreError::Unavailable`].
//! - `PutParameter` and `DeleteParameter`: a failure is [`StoreError::Unavailable`]
//!   (passing) or [`StoreError::Internal`], and the client decides whether to try
//!   again with its expected version.
//!
//! History: Parameter Store's own parameter history (`GetParameterHistory`), with
//! each write's audit in the version's `Description`; see `history` and `audit`.
//! configwatch's [`Retention`] can only show fewer versions than the 100 Parameter
//! Store keeps.
//!
//! Parts: `names` maps scopes and keys to parameter names and back; `value` turns a
//! parameter into an entry (type, value, served version) and a value into a
//! parameter; `audit` a writer into a description and back; `history` a parameter's
//! history into versions; this file the client calls and the [`Backend`].

mod audit;
mod history;
mod names;
mod value;

use async_trait::async_trait;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::delete_parameter::DeleteParameterError;
use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use aws_sdk_ssm::operation::put_parameter::PutParameterError;
use aws_sdk_ssm::types::{Parameter, ParameterTier};

pub use names::Located;
use names::{key_under, locate, parameter_name, scope_path};
pub use value::served_version;
use value::{parameter_version, to_entry, to_parameter_value};

use super::history::{Audit, HistoryPage, HistoryQuery, Retention};
use super::{Backend, StoreError, Write, check_expected};
use crate::model::{Entry, Scope, now_millis};

/// Largest page Parameter Store serves (a larger `MaxResults` is refused).
const PAGE_SIZE: i32 = 10;

/// Error codes that mean "slow down or try again later".
const PASSING_CODES: [&str; 6] = [
    "ThrottlingException",
    "Throttling",
    "TooManyUpdates",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
];

/// The backend over one Parameter Store root.
pub struct SsmBackend {
    client: aws_sdk_ssm::Client,
    root: String,
    retention: Retention,
}
impl SsmBackend {
    /// `root` is the Parameter Store path the tenants live under, e.g.
    /// `/config-service` (validated by [`crate::aws::AwsSettings::validate`]).
    pub fn new(client: aws_sdk_ssm::Client, root: impl Into<String>) -> Self {
        SsmBackend {
            client,
            root: root.into(),
            retention: Retention::default(),
        }
    }

    /// How much of Parameter Store's history a history read shows (default
    /// [`Retention::default`]). Parameter Store itself keeps the last 100 versions
    /// of a parameter; this can only show fewer.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The scopes and keys a parameter name stands for: the tenant-wide key, and the
    /// service-scoped key when the path's first segment can name a service. Empty
    /// when the name is outside the root or does not map to a tenant and a valid key.
    pub fn locate(&self, name: &str) -> Vec<Located> {
        locate(&self.root, name)
    }

    /// The parameter for `key` of `scope`.
    fn name_for(&self, scope: &Scope, key: &str) -> Result<String, StoreError> {
        parameter_name(&self.root, scope, key)
    }

    /// The parameter, or `None` when it does not exist.
    async fn get(&self, name: &str, decrypt: bool) -> Result<Option<Parameter>, StoreError> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(decrypt)
            .send()
            .await
        {
            Ok(out) => Ok(out.parameter),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(GetParameterError::ParameterNotFound(_))
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_error("GetParameter", name, &e)),
        }
    }

    /// The served version of the parameter now, 0 when it does not exist.
    async fn current_version(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.current(name).await?.1)
    }

    /// The parameter's Parameter Store `Version` and served version now, (0, 0)
    /// when it does not exist.
    async fn current(&self, name: &str) -> Result<(i64, u64), StoreError> {
        match self.get(name, false).await? {
            Some(p) => Ok((p.version(), parameter_version(name, &p)?)),
            None => Ok((0, 0)),
        }
    }

    async fn put(
        &self,
        name: &str,
        key: &str,
        value: &str,
        secret: bool,
        expected: Option<u64>,
        audit: &Audit,
    ) -> Result<Entry, StoreError> {
        let (text, kind) = to_parameter_value(key, value, secret)?;
        // The version this write replaces, for its audit (and the check).
        let (ssm_version, served) = match expected {
            Some(0) => (0, 0),
            _ => self.current(name).await?,
        };
        let overwrite = match expected {
            None => true,
            // Overwrite=false: Parameter Store refuses atomically if it exists.
            Some(0) => false,
            Some(expected) => {
                check_expected(key, Some(expected), served)?;
                // No conditional write exists: another writer may change the parameter
                // between the check above and the write below, and is then
                // overwritten (see the module documentation).
                true
            }
        };
        let written = self
            .client
            .put_parameter()
            .name(name)
            .value(text)
            .r#type(kind.clone())
            .overwrite(overwrite)
            // The writer, kept by Parameter Store with this version (see `audit`).
            .description(audit::encode(audit, ssm_version + 1, served))
            // Standard parameters hold 4 KB, advanced ones 8 KB (the family's limit):
            // let Parameter Store pick, and never fail on a downgrade.
            .tier(ParameterTier::IntelligentTiering)
            .send()
            .await;
        if let Err(e) = written {
            return Err(match e.as_service_error() {
                Some(PutParameterError::ParameterAlreadyExists(_)) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected: 0,
                    current: self.current_version(name).await?,
                },
                Some(PutParameterError::HierarchyTypeMismatchException(_)) => {
                    StoreError::Internal(format!(
                        "Parameter Store refused PutParameter of '{name}': it cannot change \
                         this parameter's type to {}; delete '{key}' and put it again",
                        kind.as_str()
                    ))
                }
                _ => sdk_error("PutParameter", name, &e),
            });
        }
        // Read back what was written for its modification time, which the served
        // version needs (PutParameter returns only Version).
        match self.get(name, false).await? {
            Some(p) => to_entry(key, &p, false),
            None => Err(StoreError::Unavailable(format!(
                "parameter '{name}' was deleted by someone else right after PutParameter; \
                 read it again"
            ))),
        }
    }

    async fn delete(
        &self,
        name: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<Entry, StoreError> {
        let Some(current) = self.get(name, false).await? else {
            return Err(StoreError::NotFound(key.to_owned()));
        };
        let current = check_expected(key, expected, parameter_version(name, &current)?)?;
        // As for Put: no conditional delete exists, the check above is best effort.
        match self.client.delete_parameter().name(name).send().await {
            Ok(_) => Ok(Entry::tombstone(key, current + 1, now_millis())),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DeleteParameterError::ParameterNotFound(_))
                ) =>
            {
                Err(StoreError::NotFound(key.to_owned()))
            }
            Err(e) => Err(sdk_error("DeleteParameter", name, &e)),
        }
    }
}

#[async_trait]
impl Backend for SsmBackend {
    fn name(&self) -> &'static str {
        "ssm"
    }

    async fn load(&self, scope: &Scope, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let path = scope_path(&self.root, scope);
        let mut out = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .client
                .get_parameters_by_path()
                .path(&path)
                .recursive(true)
                .with_decryption(false)
                .max_results(PAGE_SIZE)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| sdk_error("GetParametersByPath", &path, &e))?;
            for p in page.parameters() {
                let name = p.name().unwrap_or("");
                let Some(key) = key_under(&path, name) else {
                    tracing::warn!(
                        parameter = name,
                        %scope,
                        "parameter name does not form a valid configuration key; skipped"
                    );
                    continue;
                };
                if !key.starts_with(prefix) {
                    continue;
                }
                match to_entry(&key, p, false) {
                    Ok(entry) => out.push(entry),
                    Err(e) => {
                        tracing::warn!(parameter = name, %scope, error = %e, "parameter skipped")
                    }
                }
            }
            // Pages may be short (even empty) before the end: only a missing token ends.
            match page.next_token() {
                Some(t) if !t.is_empty() => next_token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        scope: &Scope,
        key: &str,
        write: Write,
        expected: Option<u64>,
        audit: &Audit,
    ) -> Result<Entry, StoreError> {
        let name = self.name_for(scope, key)?;
        match write {
            Write::Put { value, secret } => {
                self.put(&name, key, &value, secret, expected, audit).await
            }
            // Parameter Store forgets a deleted parameter's history: nothing keeps the
            // delete's writer but this log line.
            Write::Delete => {
                let entry = self.delete(&name, key, expected).await?;
                tracing::info!(
                    parameter = %name,
                    subject = %audit.subject,
                    client_id = audit.client_id.as_deref().unwrap_or(""),
                    reason = audit.reason.as_deref().unwrap_or(""),
                    version = entry.version,
                    "parameter deleted; Parameter Store keeps none of its history"
                );
                Ok(entry)
            }
        }
    }

    /// Parameter Store's versions of the key (see `history`): after a delete, none.
    async fn history(
        &self,
        scope: &Scope,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let name = self.name_for(scope, key)?;
        let raw = self.parameter_history(&name, query.with_secret).await?;
        let versions = history::to_versions(key, &name, raw, query.with_secret);
        Ok(history::select(
            versions,
            query,
            &self.retention,
            now_millis(),
        ))
    }

    async fn read(
        &self,
        scope: &Scope,
        key: &str,
        with_secret: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let name = self.name_for(scope, key)?;
        match self.get(&name, with_secret).await? {
            Some(p) => to_entry(key, &p, with_secret).map(Some),
            None => Ok(None),
        }
    }
}

/// Turns an SDK failure into a [`StoreError`] naming the operation and parameter.
fn sdk_error<E>(operation: &str, name: &str, err: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!(
        "Parameter Store {operation} of '{name}' failed: {}",
        DisplayErrorContext(err)
    );
    let passing = match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || service
                    .err()
                    .code()
                    .is_some_and(|code| PASSING_CODES.contains(&code))
        }
        _ => false,
    };
    if passing {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}
