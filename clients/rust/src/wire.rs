//! Protobuf to the cache's entries: the only conversion from generated types.

use std::time::SystemTime;

use crate::cache::{SyncMode, WireEntry};
use crate::proto;
use crate::proto::watch_response::InitialMode;

pub(crate) fn entry(e: proto::Entry) -> WireEntry {
    WireEntry {
        updated_at: e.updated_at.and_then(|t| SystemTime::try_from(t).ok()),
        key: e.key,
        version: e.version,
        value: e.value,
        secret: e.secret,
        deleted: e.deleted,
        revision: e.revision,
    }
}

pub(crate) fn sync_mode(raw: i32) -> Option<SyncMode> {
    match InitialMode::try_from(raw).ok()? {
        InitialMode::Full => Some(SyncMode::Full),
        InitialMode::Diff => Some(SyncMode::Diff),
        InitialMode::Resumed => Some(SyncMode::Resumed),
        InitialMode::Unspecified => None,
    }
}
