//! Parameter values: a parameter (String, StringList, SecureString) as an entry with
//! its served version, and an entry's JSON value as a parameter's text and type.
//!
//! Boundary: pure conversion of SDK parameter types; no client calls.

use std::sync::Arc;

use aws_sdk_ssm::types::{Parameter, ParameterType};
use serde_json::Value;

use crate::model::Entry;
use crate::store::StoreError;

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

/// A JSON value in the parameter's text and type. Values reach here validated
/// ([`crate::keys::validate_value`]): a JSON string, or an array of strings without commas.
pub(super) fn to_parameter_value(
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
pub(super) fn parameter_version(name: &str, p: &Parameter) -> Result<u64, StoreError> {
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
pub(super) fn to_entry(key: &str, p: &Parameter, with_secret: bool) -> Result<Entry, StoreError> {
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
}
