//! A key's history from Parameter Store's own parameter history.
//!
//! Job: read a parameter's versions (`GetParameterHistory`, every page), turn each
//! into a configwatch [`Version`] with the served version Get and Watch gave it
//! ([`super::served_version`]) and its writer (configwatch's [`audit`] in the
//! version's `Description`, or [`Source::External`] with Parameter Store's
//! `LastModifiedUser`), then apply the retention and the page asked for.
//!
//! What Parameter Store keeps decides what history can show: the last 100 versions
//! of a parameter whatever configwatch's retention says (the retention can only
//! show fewer), and nothing of a deleted parameter: a delete forgets every earlier
//! version, and a parameter created again starts a new history. A SecureString's
//! versions are read decrypted only for a read that asks for secret values.
//!
//! Boundary: SDK types stay here and in the module's other files; callers get
//! [`HistoryPage`]s.

use aws_sdk_ssm::operation::get_parameter_history::GetParameterHistoryError;
use aws_sdk_ssm::types::{Parameter, ParameterHistory};

use super::audit;
use super::value::to_entry;
use super::{SsmBackend, sdk_error};
use crate::model::Millis;
use crate::store::StoreError;
use crate::store::history::{
    HistoryPage, HistoryQuery, MAX_PAGE_VERSIONS, Retention, Source, Version,
};

/// Largest page `GetParameterHistory` serves (a larger `MaxResults` is refused).
const HISTORY_PAGE_SIZE: i32 = 50;

impl SsmBackend {
    /// Every version Parameter Store keeps of parameter `name`, in no promised
    /// order; empty when the parameter does not exist. Decrypts SecureString values
    /// only when `decrypt`. Each page goes through the SDK's standard retry, like
    /// every read of this backend.
    pub(super) async fn parameter_history(
        &self,
        name: &str,
        decrypt: bool,
    ) -> Result<Vec<ParameterHistory>, StoreError> {
        let mut out = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = match self
                .client
                .get_parameter_history()
                .name(name)
                .with_decryption(decrypt)
                .max_results(HISTORY_PAGE_SIZE)
                .set_next_token(next_token.take())
                .send()
                .await
            {
                Ok(page) => page,
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(GetParameterHistoryError::ParameterNotFound(_))
                    ) =>
                {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(sdk_error("GetParameterHistory", name, &e)),
            };
            out.extend(page.parameters().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next_token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

/// Parameter Store's versions of `key` (parameter `name`) as configwatch versions,
/// newest first, all of them. A version that cannot be served (an unknown type, no
/// modification time) is skipped with a warning, as a load skips such a parameter.
pub(super) fn to_versions(
    key: &str,
    name: &str,
    mut history: Vec<ParameterHistory>,
    with_secret: bool,
) -> Vec<Version> {
    history.sort_by_key(ParameterHistory::version);
    let mut versions: Vec<Version> = Vec::with_capacity(history.len());
    let mut older: Option<(&ParameterHistory, u64)> = None;
    for h in &history {
        let entry = match to_entry(key, &as_parameter(name, h), with_secret) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(
                    parameter = name,
                    version = h.version(),
                    error = %e,
                    "parameter version skipped in its history"
                );
                continue;
            }
        };
        let written = h
            .description()
            .and_then(audit::decode)
            // A description Parameter Store carried over from the version before
            // names that version's writer, not this one's.
            .filter(|w| {
                w.ssm_version == h.version()
                    || older.is_some_and(|(o, _)| o.description() != h.description())
            });
        let previous = match (older, &written) {
            (Some((_, served)), _) => served,
            (None, Some(w)) => w.previous,
            (None, None) => 0,
        };
        let served = entry.version;
        let source = match written {
            Some(w) => Source::Api(w.audit),
            None => Source::External {
                // Read from Parameter Store's history, not noticed by an instance.
                instance: String::new(),
                modified_by: h.last_modified_user().map(str::to_owned),
            },
        };
        versions.push(Version {
            entry,
            previous,
            source,
        });
        older = Some((h, served));
    }
    versions.reverse();
    versions
}

/// One history version as the parameter it was, for [`to_entry`].
fn as_parameter(name: &str, h: &ParameterHistory) -> Parameter {
    Parameter::builder()
        .name(name)
        .set_type(h.r#type().cloned())
        .set_value(h.value().map(str::to_owned))
        .version(h.version())
        .set_last_modified_date(h.last_modified_date().copied())
        .build()
}

/// The page `query` asks for from `versions` (newest first), within `retention`
/// at `now`: at most `max_versions` newest, and no version superseded longer ago
/// than `max_age`. The newest version is always kept.
pub(super) fn select(
    mut versions: Vec<Version>,
    query: &HistoryQuery,
    retention: &Retention,
    now: Millis,
) -> HistoryPage {
    versions.truncate(usize::try_from(retention.max_versions.max(1)).unwrap_or(usize::MAX));
    // Version i stopped being current when version i - 1 (newer) was written; the
    // older a version, the earlier it was superseded.
    let live = (1..versions.len())
        .find(|&i| retention.expired(versions[i - 1].entry.updated_at, now))
        .unwrap_or(versions.len());
    versions.truncate(live);

    let limit = query.limit.clamp(1, MAX_PAGE_VERSIONS);
    let mut rest = versions
        .into_iter()
        .filter(|v| query.before.is_none_or(|before| v.entry.version < before));
    let page: Vec<Version> = rest.by_ref().take(limit).collect();
    let next_before = match rest.next() {
        Some(_) => page.last().map(|v| v.entry.version),
        None => None,
    };
    HistoryPage {
        versions: page,
        next_before,
    }
}

#[cfg(test)]
mod tests;
