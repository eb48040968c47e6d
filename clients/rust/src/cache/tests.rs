//! The cache's rules, one behaviour per test.

use super::*;

fn e(key: &str, version: u64, value: &str) -> WireEntry {
    WireEntry {
        key: key.into(),
        version,
        value: value.into(),
        secret: false,
        deleted: false,
        revision: version,
        updated_at: None,
    }
}

fn del(key: &str, version: u64) -> WireEntry {
    WireEntry {
        deleted: true,
        value: String::new(),
        ..e(key, version, "")
    }
}

fn summary(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            format!(
                "{}@{}{}",
                c.key,
                c.version,
                if c.kind == ChangeKind::Delete {
                    "-"
                } else {
                    ""
                }
            )
        })
        .collect()
}

#[test]
fn deltas_apply_only_when_newer_and_tombstones_block_old_messages() {
    let mut c = Cache::default();
    let ch = c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 2, "2")]);
    assert_eq!(summary(&ch), ["a@1", "b@2"]);
    assert_eq!(c.live_count(), 2);

    let ch = c.apply_deltas(
        vec![e("a", 1, "dup"), e("a", 3, "3"), del("b", 3)],
        Cause::Delta,
    );
    assert_eq!(summary(&ch), ["a@3", "b@3-"]);
    assert_eq!(ch[0].previous_version, Some(1));
    assert_eq!(c.live_count(), 1);
    // An old message cannot bring b back.
    assert!(
        c.apply_deltas(vec![e("b", 2, "old")], Cause::Delta)
            .is_empty()
    );
    assert!(c.live("b").is_none());
    assert_eq!(c.version_of("b"), Some(3));
    // A newer one re-creates it.
    let ch = c.apply_deltas(vec![e("b", 4, "\"new\"")], Cause::Delta);
    assert_eq!(summary(&ch), ["b@4"]);
    assert_eq!(ch[0].previous_version, None);
    assert_eq!(
        ch[0].value::<String>().ok().flatten().as_deref(),
        Some("new")
    );
    // Deleting a key never seen stores its tombstone and shows nothing.
    assert!(c.apply_deltas(vec![del("z", 5)], Cause::Delta).is_empty());
    assert_eq!(c.version_of("z"), Some(5));
}

/// The digest as the API defines it: the server's tests check the same values.
#[test]
fn known_digest_matches_the_api_definition() {
    let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut c = Cache::default();
    assert_eq!(hex(c.known_digest()), "00000000000000000000000000000000");
    c.apply_deltas(vec![e("tenant_config_a", 1, "1")], Cause::Delta);
    assert_eq!(hex(c.known_digest()), "1189b337f183118e15d6dc71f6d0d83c");
    let mut secret = e("param_config_db/url", 1_732_406_400_123_456, "");
    secret.secret = true;
    c.apply_deltas(vec![secret], Cause::Delta);
    assert_eq!(hex(c.known_digest()), "00c129ddb1e3f7f8fc7dfd609aecf9f2");
    // Tombstones are not held state.
    c.apply_deltas(
        vec![del("param_config_db/url", 1_732_406_400_123_457)],
        Cause::Delta,
    );
    c.apply_deltas(vec![del("tenant_config_gone", 3)], Cause::Delta);
    assert_eq!(hex(c.known_digest()), "1189b337f183118e15d6dc71f6d0d83c");
}

#[test]
fn full_replaces_everything_held() {
    let mut c = Cache::default();
    c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 1, "1")]);
    let ch = c.apply_initial(SyncMode::Full, vec![e("b", 1, "1"), e("c", 1, "1")]);
    assert_eq!(summary(&ch), ["a@1-", "c@1"]);
    assert_eq!(c.known_versions().len(), 2);
    assert!(c.live("a").is_none());
}

#[test]
fn a_diff_never_takes_a_key_back_but_removes_what_the_server_does_not_know() {
    let mut c = Cache::default();
    c.apply_initial(SyncMode::Full, vec![e("a", 5, "5"), e("b", 5, "5")]);
    c.apply_deltas(vec![del("d", 9)], Cause::Delta);
    // A server that lags behind the instance the cache came from: a at 1 and d
    // live at 8 are older than held; b it does not know at all (version 0).
    let ch = c.apply_initial(
        SyncMode::Diff,
        vec![e("a", 1, "1"), del("b", 0), e("d", 8, "8")],
    );
    // b is gone: its tombstone keeps the version held.
    assert_eq!(summary(&ch), ["b@5-"]);
    assert_eq!(c.version_of("a"), Some(5));
    assert!(c.live("d").is_none());
    assert_eq!(c.version_of("b"), Some(5));
    // What is newer applies.
    let ch = c.apply_initial(
        SyncMode::Diff,
        vec![e("a", 6, "6"), e("d", 10, "10"), e("b", 5, "old")],
    );
    assert_eq!(summary(&ch), ["a@6", "d@10"]);
    let ch = c.apply_deltas(vec![e("b", 6, "x")], Cause::Delta);
    assert_eq!(summary(&ch), ["b@6"]);
}

#[test]
fn a_state_that_removes_everything_held_is_recognised() {
    let mut c = Cache::default();
    // Nothing held: nothing to protect.
    assert_eq!(c.mass_removal(SyncMode::Full, &[]), None);
    c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 1, "1")]);
    let counts = |held, removed, remaining| {
        Some(RemovalCounts {
            held,
            removed,
            remaining,
        })
    };
    // An empty FULL state (a new, empty store).
    assert_eq!(c.mass_removal(SyncMode::Full, &[]), counts(2, 2, 0));
    // A FULL state of other keys removes everything held too.
    assert_eq!(
        c.mass_removal(SyncMode::Full, &[e("z", 1, "1")]),
        counts(2, 2, 1)
    );
    // One key kept: a partial removal.
    assert_eq!(c.mass_removal(SyncMode::Full, &[e("b", 1, "1")]), None);
    // A DIFF removing every key held (an empty store diffed against the versions).
    assert_eq!(
        c.mass_removal(SyncMode::Diff, &[del("a", 0), del("b", 0)]),
        counts(2, 2, 0)
    );
    // A DIFF that removes some, or changes the others, is a partial removal.
    assert_eq!(c.mass_removal(SyncMode::Diff, &[del("a", 2)]), None);
    assert_eq!(
        c.mass_removal(SyncMode::Diff, &[del("a", 2), e("b", 2, "2")]),
        None
    );
    assert_eq!(c.mass_removal(SyncMode::Diff, &[]), None);
    // RESUMED states are changes that happened, applied by version.
    assert_eq!(
        c.mass_removal(SyncMode::Resumed, &[del("a", 2), del("b", 2)]),
        None
    );
    // Tombstones are not held: deleting the last live key is still everything.
    c.apply_deltas(vec![del("a", 2)], Cause::Delta);
    assert_eq!(
        c.mass_removal(SyncMode::Diff, &[del("b", 2)]),
        counts(1, 1, 0)
    );
}

#[test]
fn resumed_applies_like_deltas() {
    let mut c = Cache::default();
    c.apply_initial(SyncMode::Full, vec![e("a", 2, "2")]);
    let ch = c.apply_initial(SyncMode::Resumed, vec![e("a", 2, "2"), e("a", 3, "3")]);
    assert_eq!(summary(&ch), ["a@3"]);
    assert_eq!(ch[0].cause, Cause::Resumed);
}

#[test]
fn secrets_never_hold_a_value() {
    let mut c = Cache::default();
    let mut s = e("param_config_pw", 1, "\"leaked\"");
    s.secret = true;
    let ch = c.apply_initial(SyncMode::Full, vec![s]);
    assert!(ch[0].secret);
    assert_eq!(ch[0].raw_value(), None);
    let held = c.live("param_config_pw");
    assert!(held.is_some_and(|h| h.secret && h.raw.is_none()));
}

#[test]
fn prefix_iteration() {
    let mut c = Cache::default();
    c.apply_initial(
        SyncMode::Full,
        vec![e("p_a", 1, "1"), e("p_b", 1, "1"), e("q", 1, "1")],
    );
    c.apply_deltas(vec![del("p_b", 2)], Cause::Delta);
    let keys: Vec<&String> = c.iter_live_under("p_").map(|(k, _)| k).collect();
    assert_eq!(keys, ["p_a"]);
}
