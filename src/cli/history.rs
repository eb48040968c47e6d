//! The client commands `history` (a key's kept versions, newest first, one JSON
//! object per line, every page read) and `rollback` (an earlier version written
//! again as a new version, with compare-and-set on the current one, so a write in
//! between fails the rollback instead of being overwritten).
//!
//! Boundary: talks to a server only through its gRPC API, as `commands` does.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use super::commands::{Client, connect, json_value, written_json};
use super::{Failure, HistoryArgs, RollbackArgs};
use crate::proto;
use crate::store::history::MAX_PAGE_VERSIONS;

/// A printed version: the proto's fields, the value as JSON (absent for a delete
/// or a secret whose value was not given).
#[derive(Serialize)]
struct Line<'a> {
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Box<RawValue>>,
    deleted: bool,
    secret: bool,
    /// Absent when the store does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    written_at: Option<String>,
    previous_version: u64,
    source: &'a str,
    subject: &'a str,
    client_id: &'a str,
    instance: &'a str,
    reason: &'a str,
    modified_by: &'a str,
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    let since = Duration::new(
        u64::try_from(t.seconds).unwrap_or(0),
        u32::try_from(t.nanos).unwrap_or(0),
    );
    humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string()
}

/// The line printed for a version.
pub fn version_json(v: &proto::KeyVersion) -> String {
    let value = (!v.deleted && !v.value.is_empty())
        .then(|| RawValue::from_string(json_value(&v.value)).ok())
        .flatten();
    let line = Line {
        version: v.version,
        value,
        deleted: v.deleted,
        secret: v.secret,
        written_at: v.written_at.as_ref().map(rfc3339),
        previous_version: v.previous_version,
        source: &v.source,
        subject: &v.subject,
        client_id: &v.client_id,
        instance: &v.instance,
        reason: &v.reason,
        modified_by: &v.modified_by,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// One History call for `key`.
async fn history_page(
    client: &mut Client,
    key: &str,
    page_size: u32,
    page_token: String,
    version: u64,
) -> Result<proto::HistoryResponse, tonic::Status> {
    Ok(client
        .history(proto::HistoryRequest {
            key: key.to_owned(),
            page_size,
            page_token,
            version,
            ..Default::default()
        })
        .await?
        .into_inner())
}

pub(super) async fn run_history(args: HistoryArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut left = args.limit.unwrap_or(usize::MAX);
    let mut page_token = String::new();
    while left > 0 {
        let size = u32::try_from(left.min(MAX_PAGE_VERSIONS)).unwrap_or(u32::MAX);
        let page = history_page(&mut client, &args.key, size, page_token, 0).await?;
        for v in page.versions.iter().take(left) {
            println!("{}", version_json(v));
        }
        left = left.saturating_sub(page.versions.len());
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

pub(super) async fn run_rollback(args: RollbackArgs) -> Result<(), Failure> {
    if args.to_version == 0 {
        return Err(Failure::usage("--to-version must be a version, 1 or more"));
    }
    let mut client = connect(&args.client).await?;
    let target = history_page(&mut client, &args.key, 1, String::new(), args.to_version)
        .await?
        .versions
        .into_iter()
        .next()
        .ok_or_else(|| {
            Failure::error(format!(
                "the server did not return version {} of '{}'",
                args.to_version, args.key
            ))
        })?;
    let expected = match args.expect_version {
        Some(v) => v,
        None => {
            let newest = history_page(&mut client, &args.key, 1, String::new(), 0).await?;
            // A deleted key counts as version 0 for compare-and-set.
            match newest.versions.first() {
                Some(v) if !v.deleted => v.version,
                _ => 0,
            }
        }
    };
    let reason = args
        .reason
        .unwrap_or_else(|| format!("rollback to version {}", args.to_version));
    if target.secret && !target.deleted && target.value.is_empty() {
        return Err(Failure::error(format!(
            "version {} of '{}' is a secret whose value this token may not read; roll it back with a token of its tenant",
            args.to_version, args.key
        )));
    }
    let entry = if target.deleted {
        let request = proto::DeleteRequest {
            key: args.key,
            expected_version: Some(expected),
            reason,
            ..Default::default()
        };
        client.delete(request).await?.into_inner().entry
    } else {
        let request = proto::PutRequest {
            key: args.key,
            value: target.value,
            expected_version: Some(expected),
            secret: target.secret,
            reason,
            ..Default::default()
        };
        client.put(request).await?.into_inner().entry
    };
    if let Some(e) = entry {
        println!("{}", written_json(&e));
    }
    Ok(())
}
