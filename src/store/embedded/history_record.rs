//! History records: the format of one kept version of a key (the entry's state, the
//! version it replaced, who wrote it and why), checksummed and bound to its tenant,
//! service and key like the entries' records (`record`).
//!
//! Boundary: bytes in and out; the only code that knows the history record layout.
//! Which versions are kept, and who may read them, is not its business.
//!
//! | bytes | field |
//! |---|---|
//! | 0 | record format, 1 |
//! | 1 | flags: bit 0 deleted, bit 1 secret, bit 2 an external change |
//! | 2..10 | version, u64 little endian |
//! | 10..18 | written at, Unix milliseconds, i64 little endian |
//! | 18..26 | the version it replaced (0: none), u64 little endian |
//! | 26..34 | checksum: the first 8 bytes of SHA-256 over the tenant, service and key (as in `record`), bytes 0..26 and bytes 34.. |
//! | 34.. | five texts, each a u32 little-endian length (`u32::MAX`: absent) and its UTF-8 bytes: subject (or modified-by for an external change), client id, instance, reason, then the value (empty for a delete) |

use std::sync::Arc;

use super::record::{CHECKSUM, checksum, damaged};
use crate::model::{Entry, Millis};
use crate::store::StoreError;
use crate::store::history::{Audit, Source, Version};

const HISTORY_V1: u8 = 1;
const FLAG_DELETED: u8 = 1;
const FLAG_SECRET: u8 = 2;
const FLAG_EXTERNAL: u8 = 4;
const HEAD: usize = 26;
const BODY: usize = HEAD + CHECKSUM;
const ABSENT: u32 = u32::MAX;

fn put_text(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(t) => {
            // Texts are bounded far below 4 GiB (keys' values, reasons).
            out.extend_from_slice(&u32::try_from(t.len()).unwrap_or(ABSENT - 1).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Encodes a version; `value` is the value written (`None` for a delete).
pub(super) fn encode(
    tenant: &str,
    service: &str,
    version: &Version,
    value: Option<&str>,
) -> Vec<u8> {
    let e = &version.entry;
    let mut flags = 0;
    if e.deleted {
        flags |= FLAG_DELETED;
    }
    if e.secret {
        flags |= FLAG_SECRET;
    }
    let (who, client_id, instance, reason) = match &version.source {
        Source::Api(a) => (
            Some(a.subject.as_str()),
            a.client_id.as_deref(),
            a.instance.as_str(),
            a.reason.as_deref(),
        ),
        Source::External {
            instance,
            modified_by,
        } => {
            flags |= FLAG_EXTERNAL;
            (modified_by.as_deref(), None, instance.as_str(), None)
        }
    };
    let mut out = Vec::with_capacity(BODY + 64 + value.map_or(0, str::len));
    out.push(HISTORY_V1);
    out.push(flags);
    out.extend_from_slice(&e.version.to_le_bytes());
    out.extend_from_slice(&e.updated_at.to_le_bytes());
    out.extend_from_slice(&version.previous.to_le_bytes());
    out.extend_from_slice(&[0; CHECKSUM]);
    for text in [who, client_id, Some(instance), reason, value] {
        put_text(&mut out, text);
    }
    let sum = checksum(tenant, service, &e.key, &out[..HEAD], &out[BODY..]);
    out[HEAD..BODY].copy_from_slice(&sum);
    out
}

/// Reads the texts after the header, each checked for its bounds and UTF-8.
fn texts(mut rest: &[u8]) -> Option<[Option<&str>; 5]> {
    let mut out = [None; 5];
    for slot in &mut out {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len == ABSENT {
            continue;
        }
        let len = usize::try_from(len).ok()?;
        *slot = Some(std::str::from_utf8(rest.get(..len)?).ok()?);
        rest = &rest[len..];
    }
    rest.is_empty().then_some(out)
}

fn word(bytes: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    w
}

/// Decodes and checks a history record of `key`. A secret's value is withheld
/// unless `with_secret`. A record that fails is [`StoreError::Damaged`], never
/// served.
pub(super) fn decode(
    tenant: &str,
    service: &str,
    key: &str,
    bytes: &[u8],
    with_secret: bool,
) -> Result<Version, StoreError> {
    let damaged = |why: &str| damaged("a history record", tenant, service, key, why);
    if bytes.first() != Some(&HISTORY_V1) || bytes.len() < BODY {
        return Err(damaged("is of an unknown format"));
    }
    let sum = checksum(tenant, service, key, &bytes[..HEAD], &bytes[BODY..]);
    if sum[..] != bytes[HEAD..BODY] {
        return Err(damaged("fails its checksum"));
    }
    let flags = bytes[1];
    if flags & !(FLAG_DELETED | FLAG_SECRET | FLAG_EXTERNAL) != 0 {
        return Err(damaged("has unknown flags"));
    }
    let [who, client_id, instance, reason, value] =
        texts(&bytes[BODY..]).ok_or_else(|| damaged("has malformed texts"))?;
    let deleted = flags & FLAG_DELETED != 0;
    let secret = flags & FLAG_SECRET != 0;
    let instance = instance.unwrap_or("").to_owned();
    let source = if flags & FLAG_EXTERNAL != 0 {
        Source::External {
            instance,
            modified_by: who.map(str::to_owned),
        }
    } else {
        Source::Api(Audit {
            subject: who.unwrap_or("").to_owned(),
            client_id: client_id.map(str::to_owned),
            instance,
            reason: reason.map(str::to_owned),
        })
    };
    let value = match value {
        _ if deleted => None,
        _ if secret && !with_secret => None,
        Some(v) => Some(Arc::from(v)),
        None => return Err(damaged("has no value")),
    };
    Ok(Version {
        entry: Entry {
            key: Arc::from(key),
            version: u64::from_le_bytes(word(bytes, 2)),
            value,
            secret,
            deleted,
            updated_at: Millis::from_le_bytes(word(bytes, 10)),
            revision: 0,
        },
        previous: u64::from_le_bytes(word(bytes, 18)),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::record::{every_flip_is_damaged, others_are_damaged};
    use super::*;

    fn version(entry: Entry, previous: u64, source: Source) -> Version {
        Version {
            entry,
            previous,
            source,
        }
    }

    fn audited() -> Source {
        Source::Api(Audit {
            subject: "alice".into(),
            client_id: Some("app-1".into()),
            instance: "cw-1".into(),
            reason: Some("raise the limit".into()),
        })
    }

    #[test]
    fn a_version_comes_back_as_written_with_its_writer() {
        let e = Entry::live("tenant_config_a", 7, "{\"n\":1}", 1_700_000_000_000);
        let v = version(e.clone(), 6, audited());
        let bytes = encode("t", "svc", &v, e.value.as_deref());
        assert_eq!(decode("t", "svc", "tenant_config_a", &bytes, false), Ok(v));

        let gone = version(
            Entry::tombstone("tenant_config_a", 8, 5),
            7,
            Source::External {
                instance: "cw-2".into(),
                modified_by: None,
            },
        );
        let bytes = encode("t", "", &gone, None);
        assert_eq!(decode("t", "", "tenant_config_a", &bytes, true), Ok(gone));
    }

    #[test]
    fn a_secret_value_is_read_only_when_asked_for() {
        let mut e = Entry::live("param_config_db", 1, "\"hunter2\"", 9);
        e.secret = true;
        let bytes = encode(
            "t",
            "",
            &version(e.clone(), 0, audited()),
            e.value.as_deref(),
        );
        let hidden = decode("t", "", "param_config_db", &bytes, false).map(|v| v.entry.value);
        assert_eq!(hidden, Ok(None));
        let shown = decode("t", "", "param_config_db", &bytes, true).map(|v| v.entry.value);
        assert_eq!(shown, Ok(e.value));
    }

    #[test]
    fn every_damage_and_every_other_key_is_caught() {
        let e = Entry::live("tenant_config_a", 2, "[1,2]", 10);
        let bytes = encode(
            "t",
            "",
            &version(e.clone(), 1, audited()),
            e.value.as_deref(),
        );
        every_flip_is_damaged(&bytes, |bad| decode("t", "", "tenant_config_a", bad, true));
        others_are_damaged(|t, s, k| decode(t, s, k, &bytes, true));
        let mut short = bytes.clone();
        short.truncate(bytes.len() - 1);
        assert!(matches!(
            decode("t", "", "tenant_config_a", &short, true),
            Err(StoreError::Damaged(_))
        ));
    }
}
