//! The Parameter Store backend for `param_config_*`: one parameter per key.
//!
//! Job: load a scope's parameters, write Put/Delete with compare-and-set on the served
//! version, read one parameter (a SecureString decrypted only on demand), and map
//! parameter names to scopes and keys for [`crate::source::sqs_events`]. Boundary: AWS
//! SDK types stay in this module and the SQS source; the hub and the API see only
//! [`Scope`], [`Entry`] and [`StoreError`].
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
//!
//! Retry policy, per operation. Every call first goes through the SDK's standard retry
//! (3 attempts with jittered backoff on throttling, 5xx and connection failures).
//! - `GetParametersByPath` (load, per page) and `GetParameter` (read, compare-and-set
//!   checks, reading back a write): idempotent reads, retried again here with
//!   jittered backoff for [`READ_ATTEMPTS`] attempts while Parameter Store throttles
//!   or fails for a passing reason (its request rate limits are low, and a
//!   reconciliation pass over many tenants can reach them); then
//!   [`StoreError::Unavailable`].
//! - `PutParameter` and `DeleteParameter`: not retried beyond the SDK. A failure is
//!   [`StoreError::Unavailable`] (passing) or [`StoreError::Internal`], and the client
//!   decides whether to try again with its expected version.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::delete_parameter::DeleteParameterError;
use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use aws_sdk_ssm::operation::put_parameter::PutParameterError;
use aws_sdk_ssm::types::{Parameter, ParameterTier, ParameterType};
use serde_json::Value;

use super::{Backend, StoreError, Write, check_expected};
use crate::keys::{self, PARAM_CONFIG};
use crate::model::{Entry, Scope, now_millis};
use configwatch_client::{Backoff, Retry};

/// Attempts of a read (`GetParametersByPath` page, `GetParameter`) before it is
/// reported [`StoreError::Unavailable`].
pub const READ_ATTEMPTS: u32 = 5;
/// Largest page Parameter Store serves (a larger `MaxResults` is refused).
const PAGE_SIZE: i32 = 10;
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Error codes that mean "slow down or try again later".
const PASSING_CODES: [&str; 6] = [
    "ThrottlingException",
    "Throttling",
    "TooManyUpdates",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
];

/// The version configwatch serves for a parameter.
///
/// Parameter Store's own `Version` grows with every overwrite but starts again at 1
/// when a parameter is deleted and created again, while configwatch promises versions
/// that only grow (a cache applies a change only if it is newer). `LastModifiedDate`
/// grows with every change, and Parameter Store reports it to the millisecond, so the
/// served version is `last_modified_ms * 1024 + (version % 1024)`: a later
/// modification always wins, and two changes within one millisecond are told apart
/// by `Version`. It stays below 2^53 (until the year 2248), so JavaScript clients can
/// hold it in a number. Two limits, both far from practice: a delete and re-create
/// within one millisecond may not grow, and so may 1024 versions within one.
pub fn served_version(last_modified_ms: i64, ssm_version: i64) -> u64 {
    let ms = u64::try_from(last_modified_ms).unwrap_or(0);
    let version = u64::try_from(ssm_version).unwrap_or(0);
    ms.saturating_mul(1024).saturating_add(version % 1024)
}

/// The backend over one Parameter Store root.
pub struct SsmBackend {
    client: aws_sdk_ssm::Client,
    root: String,
}

/// A parameter name mapped into configwatch: which scope's view holds it, and as
/// which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub scope: Scope,
    pub key: String,
}

impl SsmBackend {
    /// `root` is the Parameter Store path the tenants live under, e.g.
    /// `/config-service` (validated by [`crate::aws::AwsSettings::validate`]).
    pub fn new(client: aws_sdk_ssm::Client, root: impl Into<String>) -> Self {
        SsmBackend {
            client,
            root: root.into(),
        }
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

    /// Runs a read, again with jittered backoff while it fails for a passing reason.
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retrying(
            what,
            READ_ATTEMPTS,
            Retry::new(Backoff::doubling(RETRY_BASE, RETRY_MAX)),
            op,
        )
        .await
    }

    /// The parameter, or `None` when it does not exist.
    async fn get(&self, name: &str, decrypt: bool) -> Result<Option<Parameter>, StoreError> {
        let what = format!("GetParameter of '{name}'");
        self.retrying(&what, || async {
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
        })
        .await
    }

    /// The served version of the parameter now, 0 when it does not exist.
    async fn current_version(&self, name: &str) -> Result<u64, StoreError> {
        match self.get(name, false).await? {
            Some(p) => parameter_version(name, &p),
            None => Ok(0),
        }
    }

    async fn put(
        &self,
        name: &str,
        key: &str,
        value: &str,
        secret: bool,
        expected: Option<u64>,
    ) -> Result<Entry, StoreError> {
        let (text, kind) = to_parameter_value(key, value, secret)?;
        let overwrite = match expected {
            None => true,
            // Overwrite=false: Parameter Store refuses atomically if it exists.
            Some(0) => false,
            Some(expected) => {
                check_expected(key, Some(expected), self.current_version(name).await?)?;
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
            let what = format!("GetParametersByPath of '{path}'");
            let token = next_token.clone();
            let page = self
                .retrying(&what, || async {
                    self.client
                        .get_parameters_by_path()
                        .path(&path)
                        .recursive(true)
                        .with_decryption(false)
                        .max_results(PAGE_SIZE)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| sdk_error("GetParametersByPath", &path, &e))
                })
                .await?;
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
    ) -> Result<Entry, StoreError> {
        let name = self.name_for(scope, key)?;
        match write {
            Write::Put { value, secret } => self.put(&name, key, &value, secret, expected).await,
            Write::Delete => self.delete(&name, key, expected).await,
        }
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

/// Runs `op` up to `attempts` times while it fails with [`StoreError::Unavailable`],
/// waiting a jittered, growing delay in between.
async fn retrying<T, F, Fut>(
    what: &str,
    attempts: u32,
    mut backoff: Retry,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StoreError::Unavailable(reason)) if attempt < attempts => {
                let delay = backoff.failed();
                tracing::debug!(
                    what,
                    attempt,
                    ?delay,
                    reason,
                    "Parameter Store busy; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(StoreError::Unavailable(reason)) => {
                return Err(StoreError::Unavailable(format!(
                    "{reason} (gave up after {attempt} attempts)"
                )));
            }
            other => return other,
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

/// `{root}/T` or `{root}/T/S`: where a scope's parameters live.
fn scope_path(root: &str, scope: &Scope) -> String {
    match scope.service() {
        None => format!("{root}/{}", scope.tenant_id()),
        Some(service) => format!("{root}/{}/{service}", scope.tenant_id()),
    }
}

/// The parameter holding `key` of `scope`. Only valid `param_config_` keys map, so a
/// name never leaves the scope's path (keys cannot hold `..`, `%` or empty segments).
fn parameter_name(root: &str, scope: &Scope, key: &str) -> Result<String, StoreError> {
    match keys::validate_key(key) {
        Ok(family) if family.prefix == PARAM_CONFIG.prefix => Ok(format!(
            "{}/{}",
            scope_path(root, scope),
            &key[PARAM_CONFIG.prefix.len()..]
        )),
        Ok(_) => Err(StoreError::Internal(format!(
            "key '{key}' is not a {}* key; the Parameter Store backend holds no other",
            PARAM_CONFIG.prefix
        ))),
        Err(e) => Err(StoreError::Internal(e.to_string())),
    }
}

/// The key a parameter `name` stands for under the scope path `path`, if any.
fn key_under(path: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(path)?.strip_prefix('/')?;
    let key = format!("{}{rest}", PARAM_CONFIG.prefix);
    match keys::validate_key(&key) {
        Ok(family) if family.prefix == PARAM_CONFIG.prefix => Some(key),
        _ => None,
    }
}

fn locate(root: &str, name: &str) -> Vec<Located> {
    let Some(rest) = name.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return Vec::new();
    };
    let Some((tenant, _)) = rest.split_once('/') else {
        return Vec::new();
    };
    let Ok(scope) = Scope::tenant(tenant) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let tenant_path = scope_path(root, &scope);
    if let Some(key) = key_under(&tenant_path, name) {
        // The service-scoped view of the same parameter, if the path can name one.
        if let Some((service, _)) = key[PARAM_CONFIG.prefix.len()..].split_once('/')
            && let Ok(service_scope) = Scope::new(tenant, Some(service))
            && let Some(service_key) = key_under(&scope_path(root, &service_scope), name)
        {
            out.push(Located {
                scope: service_scope,
                key: service_key,
            });
        }
        out.insert(0, Located { scope, key });
    }
    out
}

/// A JSON value in the parameter's text and type. Values reach here validated
/// ([`keys::validate_value`]): a JSON string, or an array of strings without commas.
fn to_parameter_value(
    key: &str,
    value: &str,
    secret: bool,
) -> Result<(String, ParameterType), StoreError> {
    let parsed: Value = serde_json::from_str(value)
        .map_err(|e| StoreError::Internal(format!("value of '{key}' is not JSON: {e}")))?;
    let (text, kind) = match parsed {
        Value::String(s) if secret => (s, ParameterType::SecureString),
        Value::String(s) => (s, ParameterType::String),
        Value::Array(items) if !secret => {
            let items: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let Some(items) = items.filter(|i| i.iter().all(|s| !s.contains(','))) else {
                return Err(StoreError::Internal(format!(
                    "value of '{key}' is not a list of strings without commas"
                )));
            };
            (items.join(","), ParameterType::StringList)
        }
        _ => {
            return Err(StoreError::Internal(format!(
                "value of '{key}' must be a JSON string{} to be stored in Parameter Store",
                if secret {
                    ""
                } else {
                    " or an array of strings"
                }
            )));
        }
    };
    if text.is_empty() {
        return Err(StoreError::Internal(format!(
            "value of '{key}' is empty; Parameter Store cannot hold an empty parameter"
        )));
    }
    Ok((text, kind))
}

/// The served version of a parameter as the SDK returned it.
fn parameter_version(name: &str, p: &Parameter) -> Result<u64, StoreError> {
    let modified = p
        .last_modified_date()
        .ok_or_else(|| {
            StoreError::Internal(format!("parameter '{name}' came without LastModifiedDate"))
        })?
        .to_millis()
        .map_err(|e| {
            StoreError::Internal(format!(
                "parameter '{name}' has an unusable LastModifiedDate: {e}"
            ))
        })?;
    Ok(served_version(modified, p.version()))
}

/// The entry for `key` from a parameter. A SecureString's value is kept only when
/// `with_secret` (and the parameter was read with decryption).
fn to_entry(key: &str, p: &Parameter, with_secret: bool) -> Result<Entry, StoreError> {
    let name = p.name().unwrap_or(key);
    let version = parameter_version(name, p)?;
    let updated_at = p
        .last_modified_date()
        .and_then(|d| d.to_millis().ok())
        .unwrap_or(0);
    let text = p.value().unwrap_or("");
    let (value, secret) = match p.r#type() {
        Some(ParameterType::String) => (Some(Value::String(text.to_owned()).to_string()), false),
        Some(ParameterType::StringList) => {
            let items: Vec<Value> = text
                .split(',')
                .map(|s| Value::String(s.to_owned()))
                .collect();
            (Some(Value::Array(items).to_string()), false)
        }
        Some(ParameterType::SecureString) => {
            let value = with_secret.then(|| Value::String(text.to_owned()).to_string());
            (value, true)
        }
        other => {
            return Err(StoreError::Internal(format!(
                "parameter '{name}' has type {other:?}, which configwatch does not serve"
            )));
        }
    };
    Ok(Entry {
        key: Arc::from(key),
        version,
        value: value.map(Arc::from),
        secret,
        deleted: false,
        updated_at,
        revision: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::DateTime;
    use std::sync::atomic::{AtomicU32, Ordering};

    const ROOT: &str = "/config-service";

    fn scope(t: &str) -> Scope {
        Scope::tenant(t).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parameter(name: &str, kind: ParameterType, value: &str, ms: i64, v: i64) -> Parameter {
        Parameter::builder()
            .name(name)
            .r#type(kind)
            .value(value)
            .version(v)
            .last_modified_date(DateTime::from_millis(ms))
            .build()
    }

    #[test]
    fn served_versions_grow_through_overwrites_and_re_creation() {
        let ms = 1_795_000_000_123;
        let v1 = served_version(ms, 1);
        assert_eq!(v1, 1_795_000_000_123 * 1024 + 1);
        // An overwrite within the same millisecond: Version decides.
        assert!(served_version(ms, 2) > v1);
        // Deleted (tombstone one above) and created again one millisecond later,
        // with Version back at 1.
        let before_delete = served_version(ms, 1023);
        let recreated = served_version(ms + 1, 1);
        assert!(recreated > before_delete + 1);
        // Version wraps at 1024, the millisecond still orders.
        assert!(served_version(ms + 1, 1024) > served_version(ms, 1023));
        // Below 2^53 for centuries (JavaScript numbers).
        let year_2200_ms = 7_258_118_400_000;
        assert!(served_version(year_2200_ms, 1023) < 1 << 53);
        assert_eq!(served_version(-5, -1), 0);
    }

    #[test]
    fn names_and_keys_map_both_ways_within_the_tenant() {
        let acme = scope("acme");
        assert_eq!(
            parameter_name(ROOT, &acme, "param_config_db/url"),
            Ok("/config-service/acme/db/url".into())
        );
        let svc = Scope::new("acme", Some("orders")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parameter_name(ROOT, &svc, "param_config_db"),
            Ok("/config-service/acme/orders/db".into())
        );
        for bad in [
            "param_config_../other/db",
            "param_config_a/../../other/x",
            "param_config_a%2F..%2Fother",
            "param_config_/abs",
            "param_config_a//b",
            "tenant_config_x",
        ] {
            assert!(parameter_name(ROOT, &acme, bad).is_err(), "{bad}");
        }

        assert_eq!(
            locate(ROOT, "/config-service/acme/db/url"),
            [
                Located {
                    scope: acme.clone(),
                    key: "param_config_db/url".into()
                },
                Located {
                    scope: Scope::new("acme", Some("db")).unwrap_or_else(|e| panic!("{e}")),
                    key: "param_config_url".into()
                },
            ]
        );
        assert_eq!(
            locate(ROOT, "/config-service/acme/flag"),
            [Located {
                scope: acme.clone(),
                key: "param_config_flag".into()
            }]
        );
        // Another tenant's parameter maps to that tenant, never to acme.
        let other = locate(ROOT, "/config-service/other/db/url");
        assert!(other.iter().all(|l| l.scope.tenant_id() == "other"));
        for outside in [
            "/elsewhere/acme/db/url",
            "/config-service-evil/acme/db",
            "/config-service",
            "/config-service/acme",
            "/config-service/acme/",
            "/config-service//db/url",
            "/config-service/../acme/db",
            "/config-service/acme/../other/db",
            "/config-service/acme/db/../../other/x",
            "/config-service/acme/a%2F..%2Fb",
            "/config-service/acme/db//url",
            "/config-service/.hidden/db",
            "config-service/acme/db",
            "",
        ] {
            assert!(locate(ROOT, outside).is_empty(), "{outside}");
        }
        let deep = format!("/config-service/acme/{}", ["a"; 13].join("/"));
        assert!(locate(ROOT, &deep).is_empty());
        // A load under one path keeps only names under it.
        assert_eq!(
            key_under("/config-service/acme", "/config-service/acme2/x"),
            None
        );
        assert_eq!(
            key_under("/config-service/acme", "/config-service/acme/x"),
            Some("param_config_x".into())
        );
    }

    #[test]
    fn values_map_to_parameter_types_and_back() {
        let ok =
            |v: &str, secret| to_parameter_value("k", v, secret).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("\"a b\"", false), ("a b".into(), ParameterType::String));
        assert_eq!(
            ok("\"pw\"", true),
            ("pw".into(), ParameterType::SecureString)
        );
        assert_eq!(
            ok("[\"a\",\"b\"]", false),
            ("a,b".into(), ParameterType::StringList)
        );
        for (bad, secret) in [
            ("42", false),
            ("[\"a,b\"]", false),
            ("[1]", false),
            ("[\"a\"]", true),
            ("\"\"", false),
            ("[]", false),
        ] {
            assert!(to_parameter_value("k", bad, secret).is_err(), "{bad}");
        }

        let ms = 1_795_000_000_000;
        let e = to_entry(
            "param_config_a",
            &parameter("/r/t/a", ParameterType::String, "say \"hi\"", ms, 3),
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.value.as_deref(), Some("\"say \\\"hi\\\"\""));
        assert_eq!(
            (e.version, e.updated_at, e.secret),
            (ms as u64 * 1024 + 3, ms, false)
        );
        let list = to_entry(
            "param_config_a",
            &parameter("/r/t/a", ParameterType::StringList, "x,y", ms, 1),
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.value.as_deref(), Some("[\"x\",\"y\"]"));
        let secure = parameter("/r/t/a", ParameterType::SecureString, "hunter2", ms, 1);
        let hidden = to_entry("param_config_a", &secure, false).unwrap_or_else(|e| panic!("{e}"));
        assert!(hidden.secret && hidden.value.is_none());
        let shown = to_entry("param_config_a", &secure, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shown.value.as_deref(), Some("\"hunter2\""));
        let undated = Parameter::builder()
            .name("/r/t/a")
            .r#type(ParameterType::String)
            .value("x")
            .build();
        assert!(to_entry("param_config_a", &undated, false).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn reads_retry_passing_failures_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let backoff = || {
            Retry::new(Backoff::doubling(
                Duration::from_millis(100),
                Duration::from_secs(1),
            ))
        };
        let got = retrying("test", 5, backoff(), || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(StoreError::Unavailable("throttled".into()))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!((got, calls.load(Ordering::Relaxed)), (Ok(7), 3));

        calls.store(0, Ordering::Relaxed);
        let got: Result<(), _> = retrying("test", 5, backoff(), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Unavailable("throttled".into()))
        })
        .await;
        assert!(matches!(got, Err(StoreError::Unavailable(m)) if m.contains("5 attempts")));
        assert_eq!(calls.load(Ordering::Relaxed), 5);

        calls.store(0, Ordering::Relaxed);
        let got: Result<(), _> = retrying("test", 5, backoff(), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Internal("denied".into()))
        })
        .await;
        assert!(matches!(got, Err(StoreError::Internal(_))));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "only passing failures retry"
        );
    }
}
