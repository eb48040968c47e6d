use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use aws_smithy_types::DateTime;

use super::*;
use crate::store::history::Audit;
use crate::store::ssm::served_version;

const NAME: &str = "/r/acme/flag";
const KEY: &str = "param_config_flag";
const T0: i64 = 1_795_000_000_000;

fn writer(subject: &str, reason: &str) -> Audit {
    Audit {
        subject: subject.into(),
        client_id: Some("app".into()),
        instance: "origin-1".into(),
        reason: Some(reason.into()),
    }
}

/// Version `v` written at `T0 + v` seconds.
fn version(
    v: i64,
    kind: ParameterType,
    value: &str,
    description: Option<String>,
) -> ParameterHistory {
    ParameterHistory::builder()
        .name(NAME)
        .r#type(kind)
        .value(value)
        .version(v)
        .last_modified_date(DateTime::from_millis(T0 + v * 1000))
        .last_modified_user("arn:aws:iam::123456789012:user/ops")
        .set_description(description)
        .build()
}

fn served(v: i64) -> u64 {
    served_version(T0 + v * 1000, v)
}

fn external() -> Source {
    Source::External {
        instance: String::new(),
        modified_by: Some("arn:aws:iam::123456789012:user/ops".into()),
    }
}

#[test]
fn versions_come_newest_first_with_served_versions_writers_and_previous() {
    let alice = writer("alice", "first");
    let bob = writer("bob", "fix");
    let d1 = audit::encode(&alice, 1, 0);
    let history = vec![
        version(
            3,
            ParameterType::String,
            "c",
            Some(audit::encode(&bob, 3, served(2))),
        ),
        version(1, ParameterType::String, "a", Some(d1.clone())),
        // Another tool overwrote without a description: Parameter Store kept
        // version 1's, which does not make alice its writer.
        version(2, ParameterType::String, "b", Some(d1)),
        version(
            4,
            ParameterType::String,
            "d",
            Some("set by terraform".into()),
        ),
    ];
    let versions = to_versions(KEY, NAME, history, false);
    let summary: Vec<(u64, Option<&str>, u64, Source)> = versions
        .iter()
        .map(|v| {
            (
                v.entry.version,
                v.entry.value.as_deref(),
                v.previous,
                v.source.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (served(4), Some("\"d\""), served(3), external()),
            (served(3), Some("\"c\""), served(2), Source::Api(bob)),
            (served(2), Some("\"b\""), served(1), external()),
            (served(1), Some("\"a\""), 0, Source::Api(alice)),
        ]
    );
    assert!(
        versions
            .iter()
            .all(|v| !v.entry.deleted && v.entry.revision == 0)
    );
    assert_eq!(versions[0].entry.updated_at, T0 + 4000);
}

#[test]
fn a_configwatch_write_that_lost_a_race_keeps_its_writer() {
    // Made for version 2, landed as 3 after another write slipped in: its
    // description is not version 2's, so it is its own.
    let history = vec![
        version(1, ParameterType::String, "a", None),
        version(
            2,
            ParameterType::String,
            "b",
            Some(audit::encode(&writer("x", "r"), 2, served(1))),
        ),
        version(
            3,
            ParameterType::String,
            "c",
            Some(audit::encode(&writer("y", "r"), 2, served(1))),
        ),
    ];
    let versions = to_versions(KEY, NAME, history, false);
    assert_eq!(versions[0].source, Source::Api(writer("y", "r")));
    assert_eq!(versions[1].source, Source::Api(writer("x", "r")));
    assert_eq!(
        versions[2].source,
        external(),
        "no description: another tool"
    );
}

#[test]
fn the_oldest_kept_version_names_what_it_replaced_when_configwatch_wrote_it() {
    // Parameter Store dropped versions 1 to 4.
    let history = vec![
        version(
            5,
            ParameterType::String,
            "e",
            Some(audit::encode(&writer("a", "r"), 5, 77)),
        ),
        version(6, ParameterType::String, "f", None),
    ];
    let versions = to_versions(KEY, NAME, history, false);
    assert_eq!(
        (versions[1].previous, versions[0].previous),
        (77, served(5))
    );
    let external_oldest = to_versions(
        KEY,
        NAME,
        vec![version(9, ParameterType::String, "x", None)],
        false,
    );
    assert_eq!(external_oldest[0].previous, 0, "unknown once dropped");
}

#[test]
fn secure_string_values_only_when_asked_and_bad_versions_are_skipped() {
    let history = || {
        vec![
            version(1, ParameterType::String, "plain", None),
            version(2, ParameterType::SecureString, "pw", None),
            ParameterHistory::builder().name(NAME).version(3).build(),
        ]
    };
    let hidden = to_versions(KEY, NAME, history(), false);
    assert_eq!(hidden.len(), 2, "the undated, untyped version is skipped");
    assert!(hidden[0].entry.secret && hidden[0].entry.value.is_none());
    assert_eq!(hidden[1].entry.value.as_deref(), Some("\"plain\""));
    let shown = to_versions(KEY, NAME, history(), true);
    assert_eq!(shown[0].entry.value.as_deref(), Some("\"pw\""));
    assert!(to_versions(KEY, NAME, Vec::new(), true).is_empty());
}

fn ten_versions() -> Vec<Version> {
    to_versions(
        KEY,
        NAME,
        (1..=10)
            .map(|v| version(v, ParameterType::String, "x", None))
            .collect(),
        false,
    )
}

fn query(before: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery {
        before,
        limit,
        with_secret: false,
        max_bytes: usize::MAX,
    }
}

fn numbers(page: &HistoryPage) -> Vec<u64> {
    page.versions.iter().map(|v| v.entry.version).collect()
}

#[test]
fn pages_run_newest_first_to_the_oldest_kept() {
    let keep_all = Retention::default();
    let now = T0 + 20_000;
    let first = select(ten_versions(), &query(None, 4), &keep_all, now);
    assert_eq!(
        numbers(&first),
        (7..=10).rev().map(served).collect::<Vec<_>>()
    );
    assert_eq!(first.next_before, Some(served(7)));
    let second = select(ten_versions(), &query(first.next_before, 4), &keep_all, now);
    assert_eq!(
        numbers(&second),
        (3..=6).rev().map(served).collect::<Vec<_>>()
    );
    let last = select(
        ten_versions(),
        &query(second.next_before, 4),
        &keep_all,
        now,
    );
    assert_eq!(numbers(&last), [served(2), served(1)]);
    assert_eq!(last.next_before, None);
    // A page that ends exactly at the oldest has no next page either.
    let exact = select(ten_versions(), &query(None, 10), &keep_all, now);
    assert_eq!((exact.versions.len(), exact.next_before), (10, None));
    // Limits outside 1..=MAX_PAGE_VERSIONS are brought within.
    assert_eq!(
        select(ten_versions(), &query(None, 0), &keep_all, now)
            .versions
            .len(),
        1
    );
    assert_eq!(
        select(Vec::new(), &query(None, 5), &keep_all, now),
        HistoryPage::default()
    );
}

#[test]
fn retention_shows_fewer_versions_but_always_the_current_one() {
    let now = T0 + 20_000;
    let three = Retention {
        max_versions: 3,
        max_age: Duration::from_secs(3600),
    };
    let page = select(ten_versions(), &query(None, 100), &three, now);
    assert_eq!(numbers(&page), [served(10), served(9), served(8)]);
    assert_eq!(page.next_before, None);

    // Version v was superseded at T0 + (v + 1) s; at T0 + 20 s, 13.5 s of age
    // keeps versions superseded at 6.5 s or later: 6 to 10.
    let young = Retention {
        max_versions: 100,
        max_age: Duration::from_millis(13_500),
    };
    let page = select(ten_versions(), &query(None, 100), &young, now);
    assert_eq!(
        numbers(&page),
        (6..=10).rev().map(served).collect::<Vec<_>>()
    );

    // Long past every limit, the current version stays.
    let page = select(ten_versions(), &query(None, 100), &young, now + 86_400_000);
    assert_eq!(numbers(&page), [served(10)]);
    let none = Retention {
        max_versions: 0,
        max_age: Duration::ZERO,
    };
    assert_eq!(
        numbers(&select(ten_versions(), &query(None, 5), &none, now)),
        [served(10)]
    );
}
