//! The optional on-disk snapshot of the cache: what a service starts from while the
//! server is unreachable. Written atomically (a temporary file in the same directory,
//! fsync, rename, fsync of the directory), so a reader sees the old snapshot or the
//! new one, never half of one. It records the tenant and the prefixes it was taken
//! for and is ignored when either differs. Secret values are never in it (the cache
//! has none).
//!
//! The format is the TypeScript client's (`configwatch-client-snapshot/1`), so either
//! client can start from the other's file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cache::WireEntry;

pub(crate) const FORMAT: &str = "configwatch-client-snapshot/1";

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapshotData {
    pub tenant: String,
    pub prefixes: Vec<String>,
    pub saved_at: SystemTime,
    pub revision: u64,
    /// The newest resume token when the snapshot was taken ("" when none).
    pub resume_token: String,
    /// The store identity of the state ("" when unknown).
    pub store_id: String,
    /// Live entries (secrets without value).
    pub entries: Vec<WireEntry>,
}

#[derive(Debug)]
pub(crate) enum SnapshotRead {
    Loaded(SnapshotData),
    Absent,
    Ignored(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileEntry {
    key: String,
    version: u64,
    value: String,
    secret: bool,
    revision: u64,
    updated_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileShape {
    format: String,
    tenant: String,
    prefixes: Vec<String>,
    saved_at: String,
    revision: u64,
    resume_token: String,
    /// Absent in files written before store identities (and when unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    store_id: String,
    entries: Vec<FileEntry>,
}

/// Sorted, without duplicates: the form prefixes are compared (and sent) in.
pub(crate) fn normalize_prefixes(prefixes: &[String]) -> Vec<String> {
    let mut out = prefixes.to_vec();
    out.sort();
    out.dedup();
    out
}

fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// Reads a snapshot for `tenant` and `prefixes` (normalized). Never fails: a missing
/// file is `Absent`; an unreadable, malformed or foreign one is `Ignored` with the
/// reason.
pub(crate) fn read(file: &Path, tenant: &str, prefixes: &[String]) -> SnapshotRead {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return SnapshotRead::Absent,
        Err(e) => return SnapshotRead::Ignored(format!("cannot read it: {e}")),
    };
    let doc: serde_json::Value = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return SnapshotRead::Ignored(format!("not JSON: {e}")),
    };
    if doc.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return SnapshotRead::Ignored(format!("not a {FORMAT} file"));
    }
    let file_tenant = doc.get("tenant").cloned().unwrap_or_default();
    if file_tenant.as_str() != Some(tenant) {
        return SnapshotRead::Ignored(format!(
            "it belongs to tenant {file_tenant}, not {}",
            serde_json::Value::from(tenant)
        ));
    }
    let shape: FileShape = match serde_json::from_value(doc) {
        Ok(s) => s,
        Err(e) => return SnapshotRead::Ignored(format!("malformed: {e}")),
    };
    let have = normalize_prefixes(&shape.prefixes);
    if have != prefixes {
        return SnapshotRead::Ignored(format!(
            "it was taken for prefixes {have:?}, not {prefixes:?}"
        ));
    }
    let Some(saved_at) = parse_time(&shape.saved_at) else {
        return SnapshotRead::Ignored(format!("malformed savedAt {:?}", shape.saved_at));
    };
    let entries = shape
        .entries
        .into_iter()
        .map(|e| WireEntry {
            value: if e.secret { String::new() } else { e.value },
            key: e.key,
            version: e.version,
            secret: e.secret,
            deleted: false,
            revision: e.revision,
            updated_at: e.updated_at.as_deref().and_then(parse_time),
        })
        .collect();
    SnapshotRead::Loaded(SnapshotData {
        tenant: shape.tenant,
        prefixes: have,
        saved_at,
        revision: shape.revision,
        resume_token: shape.resume_token,
        store_id: shape.store_id,
        entries,
    })
}

/// The file's bytes.
pub(crate) fn encode(data: &SnapshotData) -> Result<Vec<u8>, serde_json::Error> {
    let shape = FileShape {
        format: FORMAT.to_owned(),
        tenant: data.tenant.clone(),
        prefixes: normalize_prefixes(&data.prefixes),
        saved_at: time_text(data.saved_at),
        revision: data.revision,
        resume_token: data.resume_token.clone(),
        store_id: data.store_id.clone(),
        entries: data
            .entries
            .iter()
            .filter(|e| !e.deleted)
            .map(|e| FileEntry {
                key: e.key.clone(),
                version: e.version,
                value: if e.secret {
                    String::new()
                } else {
                    e.value.clone()
                },
                secret: e.secret,
                revision: e.revision,
                updated_at: e.updated_at.map(time_text),
            })
            .collect(),
    };
    serde_json::to_vec(&shape)
}

/// Writes `bytes` to `file` atomically and durably (blocking).
pub(crate) fn write_atomic(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".to_owned());
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.{nonce:x}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable. Not every platform can open a directory.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SnapshotData {
        SnapshotData {
            tenant: "acme".into(),
            prefixes: vec!["b".into(), "a".into(), "a".into()],
            saved_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            revision: 7,
            resume_token: "tok".into(),
            store_id: "01JDSTORE".into(),
            entries: vec![
                WireEntry {
                    key: "a1".into(),
                    version: 3,
                    value: "{\"x\":1}".into(),
                    secret: false,
                    deleted: false,
                    revision: 5,
                    updated_at: None,
                },
                WireEntry {
                    key: "a2".into(),
                    version: 1,
                    value: "\"must not be written\"".into(),
                    secret: true,
                    deleted: false,
                    revision: 6,
                    updated_at: Some(SystemTime::UNIX_EPOCH),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_foreign_snapshots_are_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("nested").join("snap.json");
        let bytes = encode(&data())?;
        assert!(!String::from_utf8_lossy(&bytes).contains("must not be written"));
        write_atomic(&file, &bytes)?;
        let names: Vec<_> = std::fs::read_dir(dir.path().join("nested"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["snap.json"]);

        let prefixes = vec!["a".to_owned(), "b".to_owned()];
        match read(&file, "acme", &prefixes) {
            SnapshotRead::Loaded(d) => {
                assert_eq!(d.revision, 7);
                assert_eq!(d.resume_token, "tok");
                assert_eq!(d.store_id, "01JDSTORE");
                assert_eq!(d.saved_at, data().saved_at);
                assert_eq!(d.entries.len(), 2);
                assert_eq!(d.entries[1].value, "");
                assert_eq!(d.entries[1].updated_at, Some(SystemTime::UNIX_EPOCH));
            }
            other => panic!("{other:?}"),
        }
        match read(&file, "globex", &prefixes) {
            SnapshotRead::Ignored(why) => assert!(why.contains("tenant \"acme\""), "{why}"),
            other => panic!("{other:?}"),
        }
        match read(&file, "acme", &["a".to_owned()]) {
            SnapshotRead::Ignored(why) => assert!(why.contains("prefixes"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read(&dir.path().join("none"), "acme", &prefixes),
            SnapshotRead::Absent
        ));
        // Without a store identity (unknown, or a file written before identities)
        // the field is absent, and such a file loads with an unknown identity.
        let unknown = SnapshotData {
            store_id: String::new(),
            ..data()
        };
        let bytes = encode(&unknown)?;
        assert!(!String::from_utf8_lossy(&bytes).contains("storeId"));
        write_atomic(&file, &bytes)?;
        match read(&file, "acme", &prefixes) {
            SnapshotRead::Loaded(d) => assert_eq!(d.store_id, ""),
            other => panic!("{other:?}"),
        }
        std::fs::write(&file, "{")?;
        assert!(matches!(
            read(&file, "acme", &prefixes),
            SnapshotRead::Ignored(_)
        ));
        Ok(())
    }
}
