//! Protobuf to the cache's entries: the only conversion from generated types; and the
//! `known_digest` a Watch request carries, as the API defines it.

use std::time::SystemTime;

use crate::cache::{SyncMode, WireEntry};
use crate::proto;
use crate::proto::watch_response::InitialMode;

pub(crate) fn entry(e: proto::Entry) -> WireEntry {
    WireEntry {
        updated_at: time(e.updated_at),
        key: e.key,
        version: e.version,
        value: e.value,
        secret: e.secret,
        deleted: e.deleted,
        revision: e.revision,
    }
}

/// A timestamp of the API as a time; `None` when absent or out of range.
pub(crate) fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

pub(crate) fn sync_mode(raw: i32) -> Option<SyncMode> {
    match InitialMode::try_from(raw).ok()? {
        InitialMode::Full => Some(SyncMode::Full),
        InitialMode::Diff => Some(SyncMode::Diff),
        InitialMode::Resumed => Some(SyncMode::Resumed),
        InitialMode::Unspecified => None,
    }
}

/// Watch's `known_digest` over `(key, version)` pairs, as the API defines it
/// (proto/configwatch/v1): for each pair, SHA-256 over the key, a zero byte and the
/// version as 8 big-endian bytes; the first 16 bytes of each XORed together. The
/// order of the pairs does not matter.
pub fn known_digest<'a>(held: impl IntoIterator<Item = (&'a str, u64)>) -> [u8; 16] {
    use sha2::Digest as _;
    let mut acc = [0u8; 16];
    for (key, version) in held {
        let mut h = sha2::Sha256::new();
        h.update(key.as_bytes());
        h.update([0u8]);
        h.update(version.to_be_bytes());
        for (a, b) in acc.iter_mut().zip(h.finalize().iter()) {
            *a ^= b;
        }
    }
    acc
}
