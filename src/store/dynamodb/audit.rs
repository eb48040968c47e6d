//! The history item encoding: one item per version of a key, in the key's own
//! partition, under the sort key `AUDIT#{name}#{version:020}`, and how such an item
//! reads as a [`Version`].
//!
//! Boundary: pure conversion, no client calls. The value, `isActive`, `version` and
//! `updatedAt` attributes are the config item's own ([`super::item`], the one
//! encoding): a history item reads as the config item it recorded. What is added:
//!
//! | attribute | meaning |
//! |---|---|
//! | `sk` | `AUDIT#{name}#{version:020}`: zero-padded, so the versions sort |
//! | `updatedAt` | when the version was written (RFC 3339 UTC) |
//! | `previous` | N: the version this one replaced (0: none) |
//! | `subject`, `clientId`, `instance`, `reason` | S: the writer, for a write through configwatch (`clientId`, `reason` only when known) |
//! | `external` | BOOL true: another tool made the change; `instance` names the server that saw it on the stream |
//! | `expiresAt` | N, epoch seconds: set once the version is superseded; DynamoDB's TTL deletes it after |

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{
    CONFIG, IS_ACTIVE, Item, ItemError, PK, SK, SK_PREFIX, UPDATED_AT, VERSION, json_to_attr,
    key_name, parse_item,
};
use crate::json::{self, Json};
use crate::model::{Entry, Scope};
use crate::store::StoreError;
use crate::store::history::{Audit, Source, Version};

pub(crate) const AUDIT_PREFIX: &str = "AUDIT#";
pub(crate) const PREVIOUS: &str = "previous";
pub(crate) const EXPIRES_AT: &str = "expiresAt";
const SUBJECT: &str = "subject";
const CLIENT_ID: &str = "clientId";
const INSTANCE: &str = "instance";
const REASON: &str = "reason";
const EXTERNAL: &str = "external";

/// Digits of a version in a history sort key (`u64::MAX` has 20).
const VERSION_DIGITS: usize = 20;

/// The part of a history sort key before the version: `AUDIT#{name}#`. Names hold
/// no `#`, so one key's prefix never starts another's.
pub(crate) fn history_prefix(key: &str) -> Result<String, StoreError> {
    Ok(format!("{AUDIT_PREFIX}{}#", key_name(key)?))
}

/// The sort key of `key`'s history item for `version`.
pub(crate) fn history_sort_key(key: &str, version: u64) -> Result<String, StoreError> {
    Ok(format!(
        "{}{version:0VERSION_DIGITS$}",
        history_prefix(key)?
    ))
}

/// Whether a sort key names a history item (anything under `AUDIT#`).
pub fn is_history_sort_key(sk: &str) -> bool {
    sk.starts_with(AUDIT_PREFIX)
}

/// Whether an item (or a stream record's keys) is a history item.
pub fn is_history_item(item: &Item) -> bool {
    matches!(item.get(SK), Some(AttributeValue::S(sk)) if is_history_sort_key(sk))
}

/// The name and version a history sort key holds.
fn parse_history_sort_key(sk: &str) -> Result<(&str, u64), ItemError> {
    let bad = || ItemError::BadSortKey(sk.to_owned());
    let rest = sk.strip_prefix(AUDIT_PREFIX).ok_or_else(bad)?;
    let (name, version) = rest.rsplit_once('#').ok_or_else(bad)?;
    if version.len() != VERSION_DIGITS || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok((name, version.parse().map_err(|_| bad())?))
}

/// The primary key of `key`'s history item for `version`.
pub(crate) fn history_key(
    pk: &AttributeValue,
    key: &str,
    version: u64,
) -> Result<Item, StoreError> {
    Ok(Item::from([
        (PK.to_owned(), pk.clone()),
        (
            SK.to_owned(),
            AttributeValue::S(history_sort_key(key, version)?),
        ),
    ]))
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// The state of a key at one version, as a history item holds it: `config` (absent
/// for a delete), `isActive`, `version`, `updatedAt`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recorded {
    pub version: u64,
    pub previous: u64,
    /// The value as an attribute; `None` for a delete.
    pub config: Option<AttributeValue>,
    /// RFC 3339 UTC.
    pub written_at: String,
}

impl Recorded {
    /// The state an entry holds (its value as JSON text, converted back to an
    /// attribute with every digit kept).
    pub fn of_entry(entry: &Entry, previous: u64, written_at: String) -> Result<Self, String> {
        let config = match (&entry.value, entry.deleted) {
            (_, true) => None,
            (Some(text), false) => Some(json_to_attr(
                &Json::parse(text, json::MAX_DEPTH).map_err(|e| e.to_string())?,
            )),
            (None, false) => return Err("a live entry without its value".into()),
        };
        Ok(Recorded {
            version: entry.version,
            previous,
            config,
            written_at,
        })
    }
}

/// A history item: `recorded` at `pk`, written through configwatch by `audit`
/// (`Source::Api`) or seen on the stream (`Source::External`).
pub(crate) fn history_item(
    pk: &AttributeValue,
    key: &str,
    recorded: &Recorded,
    source: &Source,
) -> Result<Item, StoreError> {
    let mut item = history_key(pk, key, recorded.version)?;
    item.insert(VERSION.into(), n(recorded.version));
    item.insert(PREVIOUS.into(), n(recorded.previous));
    item.insert(UPDATED_AT.into(), s(&recorded.written_at));
    item.insert(
        IS_ACTIVE.into(),
        AttributeValue::Bool(recorded.config.is_some()),
    );
    if let Some(config) = &recorded.config {
        item.insert(CONFIG.into(), config.clone());
    }
    match source {
        Source::Api(Audit {
            subject,
            client_id,
            instance,
            reason,
        }) => {
            item.insert(SUBJECT.into(), s(subject));
            item.insert(INSTANCE.into(), s(instance));
            if let Some(client_id) = client_id {
                item.insert(CLIENT_ID.into(), s(client_id));
            }
            if let Some(reason) = reason {
                item.insert(REASON.into(), s(reason));
            }
        }
        Source::External {
            instance,
            modified_by: _,
        } => {
            item.insert(EXTERNAL.into(), AttributeValue::Bool(true));
            item.insert(INSTANCE.into(), s(instance));
        }
    }
    Ok(item)
}

fn text(item: &Item, name: &'static str) -> Result<Option<String>, ItemError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ItemError::BadAttribute {
            name,
            reason: "not a string (S)".into(),
        }),
    }
}

fn whole(item: &Item, name: &'static str) -> Result<Option<u64>, ItemError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| ItemError::BadAttribute {
                    name,
                    reason: format!("'{v}' is not a whole number >= 0"),
                })
        }
        Some(_) => Err(ItemError::BadAttribute {
            name,
            reason: "not a number (N)".into(),
        }),
    }
}

/// When a history item expires (epoch seconds), if it was superseded.
pub(crate) fn expires_at(item: &Item) -> Result<Option<u64>, ItemError> {
    whole(item, EXPIRES_AT)
}

/// Reads a history item as a version of its key (the value as the config item
/// would read).
pub(crate) fn parse_history_item(item: &Item) -> Result<(Scope, Version), ItemError> {
    let sk = match item.get(SK) {
        Some(AttributeValue::S(sk)) => sk.as_str(),
        _ => return Err(ItemError::Missing(SK)),
    };
    let (name, version) = parse_history_sort_key(sk)?;
    // The same attributes as a config item: read as one.
    let mut as_config = item.clone();
    as_config.insert(SK.into(), s(&format!("{SK_PREFIX}{name}")));
    let parsed = parse_item(&as_config)?;
    if parsed.entry.version != version {
        return Err(ItemError::BadAttribute {
            name: VERSION,
            reason: format!(
                "{} is not the version its sort key names",
                parsed.entry.version
            ),
        });
    }
    let instance = text(item, INSTANCE)?.unwrap_or_default();
    let source = if matches!(item.get(EXTERNAL), Some(AttributeValue::Bool(true))) {
        Source::External {
            instance,
            modified_by: None,
        }
    } else {
        Source::Api(Audit {
            subject: text(item, SUBJECT)?.unwrap_or_default(),
            client_id: text(item, CLIENT_ID)?,
            instance,
            reason: text(item, REASON)?,
        })
    };
    let version = Version {
        entry: parsed.entry,
        previous: whole(item, PREVIOUS)?.unwrap_or(0),
        source,
    };
    Ok((parsed.scope, version))
}

#[cfg(test)]
mod tests;
