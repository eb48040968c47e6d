//! The server's form of a `WatchResponse`: the same bytes on the wire, built from the
//! hub's shared entries instead of owned protobuf messages.
//!
//! A change reaches every watcher of its scope as the same `Arc<SharedEntry>`. Each
//! entry is encoded once, by the first stream that sends it, and kept in the shared
//! entry's slot ([`SharedEntry::slot_or_init`]); every other stream copies those
//! bytes into its message. So a delta costs one encoding per change, not one per
//! watcher, and no watcher copies a key or a value into a message of its own. The
//! hub keeps the slot without knowing what is in it: what goes there, and that it
//! is an encoding at all, is this module's business. Secrets reach here already
//! without their values (the hub drops them before it shares an entry), so no
//! secret is ever encoded into the shared form.
//!
//! `build.rs` generates the server with this type in place of
//! `proto::WatchResponse`; clients keep the generated message, which decodes these
//! bytes as it would any other (the tests below hold the two byte for byte).

use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::hub::SharedEntry;
use crate::model::Millis;
use crate::proto::watch_response::{InitialMode, Kind};

/// One message of a Watch stream.
#[derive(Debug, Clone, Default)]
pub struct WatchFrame {
    pub kind: Kind,
    pub initial_mode: InitialMode,
    pub changes: Vec<Arc<SharedEntry>>,
    pub initial_complete: bool,
    pub revision: u64,
    pub resume_token: Arc<str>,
    /// The store's identity; sent on initial messages (`None` costs nothing on deltas).
    pub store_id: Option<Arc<str>>,
    /// When the instance was cut off from the sources of its data (milliseconds
    /// since the epoch); `None` while it is current.
    pub disconnected_since: Option<Millis>,
}

// Field numbers of `WatchResponse` in proto/configwatch/v1/config.proto.
const KIND: u32 = 1;
const INITIAL_MODE: u32 = 2;
const CHANGES: u32 = 3;
const INITIAL_COMPLETE: u32 = 4;
const REVISION: u32 = 5;
const RESUME_TOKEN: u32 = 6;
const STORE_ID: u32 = 7;
const DISCONNECTED_SINCE: u32 = 8;

/// A time in milliseconds as a `google.protobuf.Timestamp`.
pub(crate) fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn encode(entry: &SharedEntry) -> Vec<u8> {
    prost::Message::encode_to_vec(&super::to_proto(entry))
}

/// The entry's encoded `configwatch.v1.Entry`, made on first use and kept in its
/// slot (this module is the slot's only user).
#[inline]
fn wire(entry: &SharedEntry) -> &[u8] {
    entry.slot_or_init(|| encode(entry))
}

fn bytes_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

impl prost::Message for WatchFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // Fields in number order, defaults left out, as prost writes them.
        if self.kind != Kind::Unspecified {
            encoding::int32::encode(KIND, &(self.kind as i32), buf);
        }
        if self.initial_mode != InitialMode::Unspecified {
            encoding::int32::encode(INITIAL_MODE, &(self.initial_mode as i32), buf);
        }
        for entry in &self.changes {
            put_bytes(CHANGES, wire(entry), buf);
        }
        if self.initial_complete {
            encoding::bool::encode(INITIAL_COMPLETE, &true, buf);
        }
        if self.revision != 0 {
            encoding::uint64::encode(REVISION, &self.revision, buf);
        }
        if !self.resume_token.is_empty() {
            put_bytes(RESUME_TOKEN, self.resume_token.as_bytes(), buf);
        }
        if let Some(id) = self.store_id.as_deref().filter(|id| !id.is_empty()) {
            put_bytes(STORE_ID, id.as_bytes(), buf);
        }
        if let Some(ms) = self.disconnected_since {
            encoding::message::encode(DISCONNECTED_SINCE, &timestamp(ms), buf);
        }
    }

    fn encoded_len(&self) -> usize {
        let mut len = 0;
        if self.kind != Kind::Unspecified {
            len += encoding::int32::encoded_len(KIND, &(self.kind as i32));
        }
        if self.initial_mode != InitialMode::Unspecified {
            len += encoding::int32::encoded_len(INITIAL_MODE, &(self.initial_mode as i32));
        }
        for entry in &self.changes {
            len += bytes_len(CHANGES, wire(entry).len());
        }
        if self.initial_complete {
            len += encoding::bool::encoded_len(INITIAL_COMPLETE, &true);
        }
        if self.revision != 0 {
            len += encoding::uint64::encoded_len(REVISION, &self.revision);
        }
        if !self.resume_token.is_empty() {
            len += bytes_len(RESUME_TOKEN, self.resume_token.len());
        }
        if let Some(id) = self.store_id.as_deref().filter(|id| !id.is_empty()) {
            len += bytes_len(STORE_ID, id.len());
        }
        if let Some(ms) = self.disconnected_since {
            len += encoding::message::encoded_len(DISCONNECTED_SINCE, &timestamp(ms));
        }
        len
    }

    /// The server only sends frames; one it is handed to decode keeps nothing.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        *self = WatchFrame::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Entry;
    use crate::proto;
    use prost::Message;

    fn entry(key: &str, version: u64, value: Option<&str>, revision: u64) -> Arc<SharedEntry> {
        let mut e = match value {
            Some(v) => Entry::live(key, version, v, 1_700_000_123_456),
            None => Entry::tombstone(key, version, -1_500),
        };
        e.revision = revision;
        Arc::new(SharedEntry::new(e))
    }

    fn as_message(frame: &WatchFrame) -> proto::WatchResponse {
        proto::WatchResponse {
            kind: frame.kind as i32,
            initial_mode: frame.initial_mode as i32,
            changes: frame
                .changes
                .iter()
                .map(|e| super::super::to_proto(e))
                .collect(),
            initial_complete: frame.initial_complete,
            revision: frame.revision,
            resume_token: frame.resume_token.to_string(),
            store_id: frame.store_id.as_deref().unwrap_or("").to_owned(),
            disconnected_since: frame.disconnected_since.map(timestamp),
        }
    }

    /// Every shape a stream sends encodes to exactly the bytes prost writes for the
    /// generated message, and decodes back to it.
    #[test]
    fn frames_are_the_generated_message_byte_for_byte() {
        let mut secret = Entry::live("tenant_config_db.password", 3, "x", 5);
        secret.secret = true;
        let secret = Arc::new(SharedEntry::new(secret.without_secret()));
        let big = "v".repeat(70_000);
        let frames = [
            WatchFrame::default(),
            WatchFrame {
                kind: Kind::Initial,
                initial_mode: InitialMode::Full,
                changes: vec![
                    entry("tenant_config_a", 1, Some("{\"on\":true}"), 0),
                    entry("param_config_β/ü", 7, Some("\"ünïcödé\""), 0),
                    secret.clone(),
                ],
                store_id: Some(Arc::from("01HZX3K5N7P9R2T4V6W8Y0A1BC")),
                ..Default::default()
            },
            WatchFrame {
                kind: Kind::Initial,
                initial_mode: InitialMode::Diff,
                changes: vec![],
                initial_complete: true,
                revision: 42,
                resume_token: Arc::from("cw1.abc_DEF-123"),
                store_id: Some(Arc::from("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")),
                disconnected_since: Some(1_700_000_123_456),
            },
            WatchFrame {
                kind: Kind::Delta,
                initial_mode: InitialMode::Unspecified,
                changes: vec![
                    entry("tenant_config_a", 2, Some(""), 43),
                    entry("tenant_config_b", 9, None, 44),
                    entry("tenant_config_big", u64::MAX, Some(&big), u64::MAX),
                ],
                initial_complete: false,
                revision: u64::MAX,
                resume_token: Arc::from("t".repeat(300)),
                store_id: Some(Arc::from("")),
                disconnected_since: None,
            },
            WatchFrame {
                kind: Kind::Progress,
                revision: 1,
                resume_token: Arc::from("p"),
                ..Default::default()
            },
            WatchFrame {
                kind: Kind::Progress,
                revision: 2,
                resume_token: Arc::from("p"),
                disconnected_since: Some(-1_500),
                ..Default::default()
            },
        ];
        for frame in &frames {
            let expected = as_message(frame).encode_to_vec();
            // Twice: the first encoding makes the entries' wire forms, the second uses them.
            for _ in 0..2 {
                assert_eq!(frame.encoded_len(), expected.len(), "{frame:?}");
                assert_eq!(frame.encode_to_vec(), expected, "{frame:?}");
            }
            let decoded = proto::WatchResponse::decode(expected.as_slice()).unwrap();
            assert_eq!(decoded, as_message(frame));
        }
    }

    /// Two frames sharing an entry share its encoding rather than making it twice.
    #[test]
    fn an_entry_is_encoded_once_for_every_frame_that_carries_it() {
        let shared = entry("tenant_config_a", 1, Some("1"), 1);
        let a = WatchFrame {
            kind: Kind::Delta,
            changes: vec![shared.clone()],
            ..Default::default()
        };
        let b = WatchFrame {
            resume_token: Arc::from("other"),
            ..a.clone()
        };
        let _ = a.encode_to_vec();
        let first = wire(&shared).as_ptr();
        let _ = b.encode_to_vec();
        assert_eq!(wire(&shared).as_ptr(), first);
        // A clone of the entry (changed before it is shared) starts without one.
        let mut copy = shared.entry().clone();
        copy.revision = 2;
        let copy = SharedEntry::new(copy);
        assert_ne!(wire(&copy), wire(&shared));
    }
}
