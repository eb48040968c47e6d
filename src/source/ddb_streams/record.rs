//! Record handling: what one stream record does to the hub. A new image is applied
//! by its version (or the item re-versioned when it changed without a version bump);
//! a REMOVE becomes a tombstone; a record that is not valid configuration is logged,
//! counted and skipped; a record of a history item is passed over. A change another
//! tool made is offered to history once applied.
//!
//! Boundary: reads items only through [`crate::store::dynamodb::item`]; writes to the
//! table only through [`VersionWriter`] and the history sink.

use super::api::{ChangeKind, ChangeRecord, ExternalChange, Image, StreamApi, VersionWriter};
use super::reader::Reader;
use crate::hub::{ChangeSource, Origin};
use crate::model::{Entry, Scope, now_millis};
use crate::source::SourceCounters;
use crate::store::StoreError;
use crate::store::dynamodb::is_history_item;
use crate::store::dynamodb::item::{
    ItemError, ParsedItem, item_active, item_audited, item_version, parse_item, parse_item_keys,
    same_json,
};

/// What a REMOVE record asks of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A tombstone at this version.
    Tombstone {
        scope: Scope,
        key: String,
        version: u64,
    },
    /// A tombstone one above whatever is served: the record has no usable version.
    AboveServed { scope: Scope, key: String },
}

/// Reads a REMOVE record: the key from its old image (or its keys), and the version
/// its tombstone takes.
pub fn removal(record: &ChangeRecord) -> Result<Removal, ItemError> {
    let image = record.old_image.as_ref().unwrap_or(&record.keys);
    let (scope, key) = parse_item_keys(image)?;
    let old = record
        .old_image
        .as_ref()
        .map(|old| Ok::<_, ItemError>((item_version(old)?, item_active(old)?)));
    Ok(match old {
        // An item already soft-deleted: its tombstone is at its own version.
        Some(Ok((Some(version), false))) => Removal::Tombstone {
            scope,
            key,
            version,
        },
        // A live item's tombstone goes one above it; an item already at the highest
        // version has no version left for one, so the record cannot be applied.
        Some(Ok((Some(version), true))) => Removal::Tombstone {
            scope,
            key,
            version: version
                .checked_add(1)
                .ok_or_else(|| ItemError::BadAttribute {
                    name: "version",
                    reason: format!("{version} leaves no version for its tombstone"),
                })?,
        },
        // No version to go by: one above whatever is served.
        _ => Removal::AboveServed { scope, key },
    })
}

impl<S: StreamApi, V: VersionWriter> Reader<S, V> {
    /// Applies one record. Returns false when it must be read again later.
    pub(super) async fn handle_record(&self, record: &ChangeRecord) -> bool {
        // A history item (written with a change, its expiry set, deleted by the
        // retention or TTL) is never configuration.
        if is_history_item(&record.keys) {
            return true;
        }
        let origin = record
            .created
            .and_then(|at| Origin::at_millis(ChangeSource::DynamodbStream, at));
        if let Some(origin) = origin {
            self.hub().freshness().saw(origin);
        }
        match record.kind {
            ChangeKind::Insert | ChangeKind::Modify => {
                let Some(image) = &record.new_image else {
                    tracing::warn!(
                        sequence = %record.sequence,
                        "skipping a record without a new image: the stream must be NEW_AND_OLD_IMAGES"
                    );
                    SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                    return true;
                };
                match parse_item(image) {
                    Ok(parsed) => {
                        let previous = external_previous(&parsed, image, record);
                        self.apply_image(parsed, origin, previous).await
                    }
                    Err(e) => {
                        tracing::warn!(
                            sequence = %record.sequence,
                            pk = ?image.get("pk"),
                            sk = ?image.get("sk"),
                            error = %e,
                            "skipping a stream record that is not valid configuration"
                        );
                        SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                        true
                    }
                }
            }
            ChangeKind::Remove => {
                self.apply_remove(record, origin);
                true
            }
        }
    }

    fn apply_remove(&self, record: &ChangeRecord, origin: Option<Origin>) {
        let applied = match removal(record) {
            Ok(Removal::Tombstone {
                scope,
                key,
                version,
            }) => {
                let tombstone = Entry::tombstone(&key, version, now_millis());
                let applied = self.hub().apply_from(&scope, tombstone.clone(), origin);
                // A live item removed: its removal is a version of its own.
                let old = record.old_image.as_ref();
                if let Some(Ok(Some(previous))) = old.map(item_version)
                    && old.map(item_active) == Some(Ok(true))
                {
                    self.history.offer(ExternalChange {
                        scope,
                        entry: tombstone,
                        previous,
                    });
                }
                applied
            }
            Ok(Removal::AboveServed { scope, key }) => {
                self.hub().remove_if_live(&scope, &key, origin)
            }
            Err(e) => {
                tracing::warn!(sequence = %record.sequence, error = %e, "skipping a REMOVE record that names no configuration key");
                SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                return;
            }
        };
        if applied.is_some() {
            SourceCounters::add(&self.ctx.counters.stream_records_applied, 1);
        }
    }

    /// Applies a new image, or re-versions the item when it changed without a
    /// version bump. Returns false when the table was unavailable for that. An
    /// image applied with `previous` set is offered to history (the re-versioned
    /// image comes back through the stream and is offered then).
    async fn apply_image(
        &self,
        parsed: ParsedItem,
        origin: Option<Origin>,
        previous: Option<u64>,
    ) -> bool {
        let ParsedItem {
            scope,
            entry,
            versioned,
        } = parsed;
        if self.hub().is_loaded(&scope) {
            let held = self.hub().held(&scope, &entry.key);
            if needs_new_version(held.as_deref().map(|h| h.entry()), &entry, versioned) {
                let to = held.as_ref().map_or(0, |h| h.version).max(entry.version) + 1;
                let seen = versioned.then_some(entry.version);
                return match self
                    .versions
                    .bump_version(&scope, &entry.key, seen, to)
                    .await
                {
                    Ok(true) => {
                        SourceCounters::add(&self.ctx.counters.stream_reversioned, 1);
                        tracing::info!(%scope, key = %entry.key, ?seen, to, "item changed without a version bump; re-versioned it");
                        true
                    }
                    Ok(false) => {
                        tracing::debug!(%scope, key = %entry.key, "item changed again or another server re-versioned it");
                        true
                    }
                    Err(StoreError::Unavailable(e)) => {
                        tracing::warn!(%scope, key = %entry.key, error = %e, "cannot re-version an item now; will read the record again");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(%scope, key = %entry.key, error = %e, "cannot re-version an item; skipping the record");
                        true
                    }
                };
            }
        }
        let change = previous.map(|previous| ExternalChange {
            scope: scope.clone(),
            entry: entry.clone(),
            previous,
        });
        if self.hub().apply_from(&scope, entry, origin).is_some() {
            SourceCounters::add(&self.ctx.counters.stream_records_applied, 1);
        }
        if let Some(change) = change {
            self.history.offer(change);
        }
        true
    }
}

/// For a new image another tool made (versioned, and not written by configwatch
/// with its history item), the version it replaced (the old image's; 0: none).
/// `None` for images history holds already, or cannot hold (no version).
fn external_previous(parsed: &ParsedItem, image: &Image, record: &ChangeRecord) -> Option<u64> {
    if !parsed.versioned || parsed.entry.version == 0 || item_audited(image) {
        return None;
    }
    let old = record.old_image.as_ref().map(item_version);
    Some(match old {
        Some(Ok(Some(version))) => version,
        _ => 0,
    })
}

/// Whether a record shows a change that came without a version bump: different
/// content from what is held at a version not above it, or no version at all.
fn needs_new_version(held: Option<&Entry>, record: &Entry, versioned: bool) -> bool {
    match held {
        None => !versioned,
        Some(held) => (!versioned || record.version <= held.version) && !same_content(held, record),
    }
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    if a.deleted || b.deleted {
        return a.deleted == b.deleted;
    }
    match (a.value.as_deref(), b.value.as_deref()) {
        (Some(x), Some(y)) => same_json(x, y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ddb_streams::fake::put_record;

    /// A REMOVE of a live item at version u64::MAX overflowed computing its
    /// tombstone's version (a panic with overflow checks; wrapped to version 0, a
    /// delete every cache ignores, without). It is refused as a bad record.
    #[test]
    fn a_remove_at_the_highest_version_is_refused_not_overflowed() {
        let mut record = put_record("9", "a", Some(u64::MAX), "1");
        record.kind = ChangeKind::Remove;
        record.old_image = record.new_image.take();
        let refused = removal(&record);
        assert!(
            matches!(
                &refused,
                Err(ItemError::BadAttribute {
                    name: "version",
                    ..
                })
            ),
            "{refused:?}"
        );
        let mut record = put_record("10", "a", Some(7), "1");
        record.kind = ChangeKind::Remove;
        record.old_image = record.new_image.take();
        assert!(matches!(
            removal(&record),
            Ok(Removal::Tombstone { version: 8, .. })
        ));
    }

    #[test]
    fn a_new_version_is_needed_only_for_other_content_at_an_old_version() {
        let held = Entry::live("tenant_config_a", 2, "1", 0);
        let same = Entry::live("tenant_config_a", 2, "1.0", 0);
        let other = Entry::live("tenant_config_a", 2, "2", 0);
        assert!(!needs_new_version(Some(&held), &same, true));
        assert!(needs_new_version(Some(&held), &other, true));
        assert!(!needs_new_version(
            Some(&held),
            &Entry::live("tenant_config_a", 3, "2", 0),
            true
        ));
        assert!(needs_new_version(None, &other, false));
        assert!(!needs_new_version(None, &other, true));
        let tombstone = Entry::tombstone("tenant_config_a", 2, 0);
        assert!(needs_new_version(Some(&tombstone), &other, true));
    }
}
