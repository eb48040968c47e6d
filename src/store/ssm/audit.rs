//! A write's audit as a parameter version's `Description`, and back.
//!
//! Parameter Store keeps no field for configwatch's writer, but it keeps each
//! version's `Description` (at most [`MAX_DESCRIPTION_CHARS`] characters), so every
//! `PutParameter` by configwatch writes there a compact JSON object:
//! `{"configwatch":1,"v":3,"p":…,"sub":"…","cid":"…","inst":"…","why":"…"}`, with
//! `v` the Parameter Store `Version` the write was made for and `p` the served
//! version it replaced. `v` tells a version's own description from one Parameter
//! Store carried over from the version before (an overwrite without a description
//! keeps the old one). A field that does not fit is cut short and ends with `…`.
//!
//! Boundary: pure text; knows the [`Audit`] and nothing of the SDK. Whether a
//! description belongs to its version is for the history read to decide.

use serde::{Deserialize, Serialize};

use crate::store::history::Audit;

/// The longest description Parameter Store accepts, in characters.
pub(super) const MAX_DESCRIPTION_CHARS: usize = 1024;

/// The format written under the `configwatch` field.
const FORMAT: u32 = 1;

/// What ends a field that was cut short to fit.
const CUT: char = '…';

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    configwatch: u32,
    v: i64,
    p: u64,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
    inst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

/// A description configwatch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Written {
    pub audit: Audit,
    /// The Parameter Store `Version` the write was made for.
    pub ssm_version: i64,
    /// The served version the write replaced (0: none).
    pub previous: u64,
}

/// The description for a write by `audit` that makes Parameter Store version
/// `ssm_version`, replacing served version `previous`. Never longer than
/// [`MAX_DESCRIPTION_CHARS`]: the longest text field is cut first.
pub(super) fn encode(audit: &Audit, ssm_version: i64, previous: u64) -> String {
    let mut record = Record {
        configwatch: FORMAT,
        v: ssm_version,
        p: previous,
        sub: audit.subject.clone(),
        cid: audit.client_id.clone(),
        inst: audit.instance.clone(),
        why: audit.reason.clone(),
    };
    loop {
        // Serializing plain strings and numbers cannot fail; an empty object is the
        // safe fallback all the same.
        let text = serde_json::to_string(&record).unwrap_or_default();
        if text.chars().count() <= MAX_DESCRIPTION_CHARS {
            return text;
        }
        let longest = [
            Some(&mut record.sub),
            record.cid.as_mut(),
            Some(&mut record.inst),
            record.why.as_mut(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|field| field.chars().count());
        match longest {
            Some(field) => cut_in_half(field),
            None => return String::new(),
        }
    }
}

/// The writer a description names, if configwatch wrote it; `None` for any other
/// description (another tool's, or none).
pub(super) fn decode(description: &str) -> Option<Written> {
    let record: Record = serde_json::from_str(description).ok()?;
    (record.configwatch == FORMAT).then_some(Written {
        audit: Audit {
            subject: record.sub,
            client_id: record.cid,
            instance: record.inst,
            reason: record.why,
        },
        ssm_version: record.v,
        previous: record.p,
    })
}

/// Keeps the first half of `field`'s characters and marks the cut. Always shortens
/// a field of three characters or more (the loop in [`encode`] reaches one only when
/// the description is far over its limit).
fn cut_in_half(field: &mut String) {
    let keep = field.chars().count() / 2;
    let end = field
        .char_indices()
        .nth(keep)
        .map_or(field.len(), |(i, _)| i);
    field.truncate(end);
    field.push(CUT);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(subject: &str, reason: Option<&str>) -> Audit {
        Audit {
            subject: subject.into(),
            client_id: Some("app-client-7".into()),
            instance: "origin-1".into(),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn a_writer_round_trips_through_the_description() {
        let a = audit("3f1c-user", Some("roll back \"the\" flag, see INC-42 ✓"));
        let text = encode(&a, 7, 1_795_000_000_000 * 1024 + 6);
        assert!(text.starts_with("{\"configwatch\":1,\"v\":7,"), "{text}");
        assert_eq!(
            decode(&text),
            Some(Written {
                audit: a,
                ssm_version: 7,
                previous: 1_795_000_000_000 * 1024 + 6
            })
        );
        let bare = Audit {
            subject: "svc".into(),
            instance: "i".into(),
            ..Audit::default()
        };
        let text = encode(&bare, 1, 0);
        assert!(!text.contains("cid") && !text.contains("why"), "{text}");
        assert_eq!(decode(&text).map(|w| w.audit), Some(bare));
    }

    #[test]
    fn a_long_writer_is_cut_to_the_limit_on_character_boundaries() {
        // Multi-byte characters, and quotes that escaping doubles.
        let long_subject = "é\"".repeat(700);
        let a = audit(&long_subject, Some(&"r".repeat(256)));
        let text = encode(&a, 2, 9);
        assert!(
            text.chars().count() <= MAX_DESCRIPTION_CHARS,
            "{}",
            text.len()
        );
        let back = decode(&text).expect("still configwatch's description");
        assert!(back.audit.subject.ends_with(CUT));
        assert!(long_subject.starts_with(back.audit.subject.trim_end_matches(CUT)));
        // The shorter fields survive whole.
        assert_eq!(back.audit.reason, a.reason);
        assert_eq!(back.audit.client_id, a.client_id);
        assert_eq!((back.ssm_version, back.previous), (2, 9));

        // Every field too long at once.
        let huge = "x".repeat(5000);
        let all = Audit {
            subject: huge.clone(),
            client_id: Some(huge.clone()),
            instance: huge.clone(),
            reason: Some(huge),
        };
        let text = encode(&all, 3, 0);
        assert!(text.chars().count() <= MAX_DESCRIPTION_CHARS);
        assert!(decode(&text).is_some());
    }

    #[test]
    fn another_tools_description_is_not_taken_for_a_writer() {
        for foreign in [
            "",
            "Database URL for the orders service",
            "{\"owner\":\"team-a\"}",
            "{\"configwatch\":2,\"v\":1,\"p\":0,\"sub\":\"s\",\"inst\":\"i\"}",
            "{\"configwatch\":1,\"sub\":\"s\"}",
            "{\"configwatch\":1,\"v\":1,\"p\":0,\"sub\":\"s\",\"inst\":\"i\"",
        ] {
            assert_eq!(decode(foreign), None, "{foreign}");
        }
    }
}
