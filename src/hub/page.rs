//! One page of a `Get`: live entries by key or under prefixes, in key order, served
//! from the view, each continuing page from the first page's revision or not at all.
//!
//! Boundary: what a page holds and what its work under the view's lock is bounded
//! by; the page token's format and the reply are the API's.

use std::sync::Arc;

use super::shared::SharedEntry;
use super::view::SCAN_CHUNK;
use super::{Hub, lock};
use crate::keys::PrefixSet;
use crate::model::Scope;
use crate::store::StoreError;

/// What one page of a `Get` asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// Exact keys to read.
    pub keys: &'a [String],
    /// Prefixes to read; with neither keys nor prefixes, the whole scope.
    pub prefixes: &'a [String],
    /// Continue after this key (the previous page's cursor).
    pub after: Option<&'a str>,
    /// The revision of the first page, when continuing.
    pub at: Option<u64>,
    /// Most entries in the page (at least one is always allowed).
    pub max_entries: usize,
    /// About the most key and value bytes in the page; a single larger entry still
    /// goes alone.
    pub max_bytes: usize,
}

/// One page of a `Get`.
#[derive(Debug)]
pub struct Page {
    /// Live entries, by key; secrets without values.
    pub entries: Vec<Arc<SharedEntry>>,
    /// The revision of the state read: the first page's, on every page.
    pub revision: u64,
    pub resume_token: String,
    /// Every key up to and including this one was considered; more may follow. `None`
    /// on the last page.
    pub cursor: Option<Arc<str>>,
}

/// Why a page cannot continue a paged `Get`.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys not yet returned changed after the first page's revision (or the
    /// history no longer shows whether they did): a later page would mix states.
    #[error(
        "the tenant changed while paging (keys after the last page changed since revision {0}, or too much changed to tell); start again without page_token"
    )]
    Changed(u64),
}

/// Bytes counted for a secret's value in a page (read on demand; Parameter Store
/// values are at most this long).
const SECRET_PAGE_BYTES: usize = 8 * 1024;

/// Bytes counted per entry besides its key and value (version, timestamps, framing).
const ENTRY_PAGE_OVERHEAD: usize = 32;

/// Besides the entries returned, a page looks at no more than this many deleted
/// keys, so a scope full of tombstones costs a bounded time per page.
const PAGE_EXTRA_SCAN: usize = 8 * SCAN_CHUNK;

impl Hub {
    /// One page of live entries with the given keys or under the given prefixes
    /// (neither: all), in key order, and a token that resumes a watch on `prefixes`
    /// from the page's revision.
    ///
    /// A page continuing another (`at` and `after` set) serves the state of the
    /// first page's revision: it is served only if no key after `after` that the
    /// request covers changed since (as the history shows); otherwise
    /// [`PageError::Changed`], never a mix of two states. The work under the lock is
    /// bounded by the page size, the keys asked for and the history limit.
    pub async fn snapshot_page(
        &self,
        scope: &Scope,
        req: PageRequest<'_>,
    ) -> Result<Page, PageError> {
        let view = self.view(scope).await?;
        let mut keys: Vec<&str> = req
            .keys
            .iter()
            .map(String::as_str)
            .filter(|k| req.after.is_none_or(|a| *k > a))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let with_prefixes = req.keys.is_empty() || !req.prefixes.is_empty();
        let set = PrefixSet::new(req.prefixes.iter().cloned());
        let covered =
            |key: &str| (with_prefixes && set.matches(key)) || keys.binary_search(&key).is_ok();
        let st = lock(&view.state);
        let revision = match req.at {
            None => st.revision,
            Some(at) if at == st.revision => at,
            Some(at) if at > st.revision || at < st.history_floor => {
                return Err(PageError::Changed(at));
            }
            Some(at) => {
                let from = st.history.partition_point(|e| e.revision <= at);
                let changed = st
                    .history
                    .range(from..)
                    .any(|e| req.after.is_none_or(|a| &*e.key > a) && covered(&e.key));
                if changed {
                    return Err(PageError::Changed(at));
                }
                at
            }
        };
        let mut by_key = keys.iter().copied().peekable();
        let mut under = with_prefixes
            .then(|| st.under_after(&set, req.after))
            .into_iter()
            .flatten()
            .peekable();
        let max_entries = req.max_entries.max(1);
        let budget = max_entries + PAGE_EXTRA_SCAN;
        let mut entries: Vec<Arc<SharedEntry>> = Vec::new();
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        let mut cursor: Option<Arc<str>> = None;
        let mut more = false;
        loop {
            let (key, entry, from_key, from_under) = match (by_key.peek(), under.peek()) {
                (None, None) => break,
                (Some(k), None) => (*k, st.entries.get(*k), true, false),
                (None, Some(e)) => (&*e.key, Some(*e), false, true),
                (Some(k), Some(e)) => match (*k).cmp(&*e.key) {
                    std::cmp::Ordering::Less => (*k, st.entries.get(*k), true, false),
                    std::cmp::Ordering::Equal => (&*e.key, Some(*e), true, true),
                    std::cmp::Ordering::Greater => (&*e.key, Some(*e), false, true),
                },
            };
            if entries.len() == max_entries || scanned == budget {
                more = true;
                break;
            }
            let live = entry.filter(|e| !e.deleted);
            if let Some(e) = live {
                let size = e.key.len()
                    + ENTRY_PAGE_OVERHEAD
                    + if e.secret {
                        SECRET_PAGE_BYTES
                    } else {
                        e.value.as_deref().map_or(0, str::len)
                    };
                if !entries.is_empty() && bytes + size > req.max_bytes {
                    more = true;
                    break;
                }
                bytes += size;
                entries.push(e.clone());
            }
            cursor = Some(match entry {
                Some(e) => e.key.clone(),
                None => Arc::from(key),
            });
            scanned += 1;
            if from_key {
                by_key.next();
            }
            if from_under {
                under.next();
            }
        }
        drop(by_key);
        drop(under);
        let token_set = if with_prefixes {
            set
        } else {
            PrefixSet::new(req.keys.iter().map(|k| format!("\u{0}{k}")))
        };
        Ok(Page {
            entries,
            revision,
            resume_token: self.token(scope, &token_set, revision).encode(),
            cursor: if more { cursor } else { None },
        })
    }
}
