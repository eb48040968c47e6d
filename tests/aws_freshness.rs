//! Freshness on moto, through the binary's `/metrics`: a change made directly in
//! DynamoDB is timed from its stream record's ApproximateCreationDateTime, one made
//! through the API from its commit, and one made in Parameter Store from its
//! EventBridge event's time; each moves its source's applied and delivered delay
//! histograms by exactly one observation, with a plausible delay, and each event
//! source's newest record age and time since its last successful read appear.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use configwatch::auth::Role;
use configwatch_test_support::moto::{Moto, ROOT, Resources};
use configwatch_test_support::{Scrape, ServerProcess, eventually};

/// The server on moto with its admin listener, and moto's resources.
async fn start(moto: &Moto, dir: &std::path::Path) -> (ServerProcess, SocketAddr, Resources) {
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let mut command = serve_command(dir, &["--backend", "aws", "--admin-listen", "127.0.0.1:0"]);
    moto.serve_on(&mut command, &res);
    let server = ServerProcess::start(command).await;
    let admin = server.admin.expect("an admin address");
    // The stream reader's first read of the table: from here records arrive.
    eventually(
        PATIENCE,
        || "the stream reader's first gap".into(),
        || async {
            let gaps = Scrape::take(admin).await.series;
            (gaps.get("configwatch_stream_gaps_total") >= Some(&1.0)).then_some(())
        },
    )
    .await;
    (server, admin, res)
}

/// A delay histogram's count and sum for one source.
fn delays(scrape: &HashMap<String, f64>, which: &str, source: &str) -> (f64, f64) {
    let series = |part: &str| {
        let name =
            format!("configwatch_change_{which}_delay_seconds_{part}{{source=\"{source}\"}}");
        *scrape.get(&name).unwrap_or_else(|| panic!("no {name}"))
    };
    (series("count"), series("sum"))
}

/// Each delay histogram moved by exactly one observation for `source`, of at least
/// 0 s and at most `bound`; nothing moved for the other sources.
fn moved_once(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    source: &str,
    bound: f64,
) {
    for which in ["applied", "delivered"] {
        for other in ["api", "dynamodb-stream", "sqs-events", "reconcile"] {
            let (n0, s0) = delays(before, which, other);
            let (n1, s1) = delays(after, which, other);
            if other != source {
                assert_eq!(n1, n0, "{which} {other} moved");
                continue;
            }
            assert_eq!(n1 - n0, 1.0, "{which} {source}: one observation");
            let delay = s1 - s0;
            assert!(
                (0.0..=bound).contains(&delay),
                "{which} {source}: a delay of {delay} s, the test took at most {bound} s"
            );
        }
    }
    assert_eq!(after.get("configwatch_change_clock_skew_total"), Some(&0.0));
}

/// The gauge `configwatch_source_{which}_age_seconds` of `source` is present,
/// and between 0 and `bound` seconds.
fn age_within(scrape: &HashMap<String, f64>, which: &str, source: &str, bound: f64) {
    let name = format!("configwatch_source_{which}_age_seconds{{source=\"{source}\"}}");
    let age = *scrape.get(&name).unwrap_or_else(|| panic!("no {name}"));
    assert!(
        (0.0..=bound).contains(&age),
        "{name} {age}, at most {bound}"
    );
}

#[tokio::test]
async fn a_dynamodb_change_and_an_api_write_are_timed_from_their_sources() {
    let moto = Moto::start();
    let dir = temp_dir();
    let (server, admin, res) = start(&moto, dir.path()).await;
    let reader = token(dir.path(), "acme", Role::Reader);
    let mut client = connect(server.addr, Some(&reader)).await;
    let mut w = watch(
        &mut client,
        watch_prefixes(&["tenant_config_", "param_config_"]),
    )
    .await;
    initial(&mut w).await;
    let before = Scrape::take(admin).await.series;
    let age = "configwatch_source_newest_record_age_seconds{source=\"dynamodb-stream\"}";
    assert_eq!(before.get(age), None, "absent until a record is seen");

    // Made in the table by another tool: timed from the stream record.
    let started = Instant::now();
    moto.put_config_item(&res.table, "acme", "flag", 1).await;
    let got = changes(&mut w, 1).await;
    assert_eq!(summary(&got), [("tenant_config_flag".into(), 1, false)]);
    let after = Scrape::take(admin).await.series;
    moved_once(
        &before,
        &after,
        "dynamodb-stream",
        started.elapsed().as_secs_f64(),
    );
    let elapsed = started.elapsed().as_secs_f64();
    age_within(&after, "newest_record", "dynamodb-stream", elapsed);
    // It polls every 100 ms: its last success is at most that poll's time ago.
    age_within(&after, "last_success", "dynamodb-stream", elapsed);

    // Through the API (a Parameter Store key: no event brings it back a second way).
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut writer = connect(server.addr, Some(&writer)).await;
    let started = Instant::now();
    put(&mut writer, "param_config_api/flag", "\"on\"").await;
    let got = changes(&mut w, 1).await;
    assert_eq!(got[0].key, "param_config_api/flag");
    let last = Scrape::take(admin).await.series;
    moved_once(&after, &last, "api", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_parameter_store_change_is_timed_from_its_event() {
    let moto = Moto::start();
    let dir = temp_dir();
    let (server, admin, _res) = start(&moto, dir.path()).await;
    let reader = token(dir.path(), "acme", Role::Reader);
    let mut client = connect(server.addr, Some(&reader)).await;
    let mut w = watch(&mut client, watch_prefixes(&["param_config_"])).await;
    initial(&mut w).await;
    let before = Scrape::take(admin).await.series;
    let age = "configwatch_source_newest_record_age_seconds{source=\"sqs-events\"}";
    assert_eq!(before.get(age), None, "absent until an event is seen");

    let started = Instant::now();
    let name = format!("{ROOT}/acme/db/url");
    moto.put_string_parameter(&name, "postgres://a").await;
    moto.ssm_change_event(&name, "Create", "String").await;
    let got = changes(&mut w, 1).await;
    assert_eq!(got[0].key, "param_config_db/url");
    let after = Scrape::take(admin).await.series;
    // An event's time is in whole seconds, rounded down: up to 1 s more than the
    // time the change really took.
    let bound = started.elapsed().as_secs_f64() + 1.0;
    moved_once(&before, &after, "sqs-events", bound);
    age_within(&after, "newest_record", "sqs-events", bound);
    // The receive that brought the event succeeded.
    let elapsed = started.elapsed().as_secs_f64();
    age_within(&after, "last_success", "sqs-events", elapsed);
}
