//! The write path on an origin: a Put or Delete committed through the store and
//! handed to the hub as one task, and the hand-over itself (shared with a relay,
//! which applies what its upstream answered).
//!
//! Boundary: one write's commit and apply; validation and the caller's rights are
//! the handlers' (`mod.rs`), the store's compare-and-set the backend's.

use std::sync::Arc;

use tonic::Status;

use super::ConfigApi;
use crate::hub::{ChangeSource, Hub, Origin, ScopeView};
use crate::model::{Entry, Scope};
use crate::store::history::Audit;
use crate::store::{StoreError, Write};

impl ConfigApi {
    /// Writes through the store and hands the committed entry to the hub, as one
    /// task of its own: a call dropped in between (its client reset the stream or
    /// went away; a relay's forwarded write when the relay's own caller did) must
    /// not leave a write committed and never applied, which the embedded store,
    /// having no change feed, would never bring to the view. The task is one bounded
    /// write; `view` is held until it is applied (not dropped as idle meanwhile).
    pub(super) async fn commit(
        &self,
        view: Arc<ScopeView>,
        scope: Scope,
        key: String,
        write: Write,
        expected: Option<u64>,
        audit: Audit,
    ) -> Result<Entry, Status> {
        let backend = self.router.route(&key)?.1.clone();
        let hub = self.hub.clone();
        let task = tokio::spawn(async move {
            let entry = backend.write(&scope, &key, write, expected, &audit).await?;
            let entry = apply(&hub, &scope, entry);
            drop(view);
            Ok::<_, StoreError>(entry)
        });
        match task.await {
            Ok(done) => Ok(done?),
            Err(e) => Err(Status::internal(format!("the write failed: {e}"))),
        }
    }
}

/// Hands a committed write to the hub; returns it with the revision at which it
/// was applied (by this call, or first by a source that saw the same change).
pub(super) fn apply(hub: &Hub, scope: &Scope, entry: Entry) -> Entry {
    // Just committed: its freshness is timed from now.
    let origin = Origin::now(ChangeSource::Api);
    match hub.apply_from(scope, entry.clone(), Some(origin)) {
        Some(applied) => Entry {
            value: entry.value,
            ..applied.entry().clone()
        },
        None => {
            let revision = hub
                .applied_revision(scope, &entry.key, entry.version)
                .unwrap_or(entry.revision);
            Entry { revision, ..entry }
        }
    }
}
