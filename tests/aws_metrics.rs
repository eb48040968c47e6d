//! The metrics of `configwatch serve --backend aws`, on moto, after a known
//! sequence: a Watch, puts through the API that it receives, a change written
//! directly in DynamoDB that arrives by the stream, a refused token and a
//! malformed queue message. Every counter moved by exactly what happened (a scrape
//! before and after, compared series by series), and the scrape passes
//! `promtool check metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use configwatch::auth::Role;
use configwatch_test_support::moto::Moto;
use configwatch_test_support::{Scrape, ServerProcess, eventually, promtool_check};

/// Waits for a scrape in which `ready` holds.
async fn scrape_when(admin: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually(
        PATIENCE,
        || what.to_owned(),
        || async {
            let s = Scrape::take(admin).await;
            ready(&s).then_some(s)
        },
    )
    .await
}

#[tokio::test]
async fn every_counter_moves_by_exactly_what_happened() {
    let moto = Moto::start();
    // A long visibility timeout: the malformed message is not received twice.
    let res = moto.create_resources(Duration::from_secs(600)).await;
    let dir = temp_dir();
    let command = aws_serve_command(dir.path(), &moto, &res, &OBSERVED_SOURCES);
    let server = ServerProcess::start(command).await;
    let admin = server.admin.expect("an admin address");
    // The stream reader is reading its shard (after its first-start gap).
    let before = scrape_when(admin, "the stream's shard to be read", |s| {
        s.value("configwatch_stream_shards") == 1.0
            && s.value("configwatch_stream_gaps_total") == 1.0
    })
    .await;

    // A Watch, then three puts through the API that it receives.
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut client = connect(server.addr, Some(&writer)).await;
    let mut stream = watch(&mut client, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut stream).await;
    assert!(entries.is_empty());
    for i in 0..3 {
        put(&mut client, &format!("tenant_config_k{i}"), "1").await;
    }
    assert_eq!(changes(&mut stream, 3).await.len(), 3);
    // A change written directly in the table arrives by the stream.
    moto.put_config_item(&res.table, "acme", "direct", 1).await;
    let direct = changes(&mut stream, 1).await;
    assert_eq!(
        summary(&direct),
        [("tenant_config_direct".into(), 1, false)]
    );
    drop(stream);
    // A refused token.
    refused_get(server.addr).await;
    // A message on the queue that is not an event.
    moto.send_raw_message(&res.queue_url, "not an event").await;

    // What arrives asynchronously: the stream records of the four writes, the
    // message, and the end of the Watch as the server sees it. moto streams an
    // UpdateItem that creates an item as two records, the key alone and then the
    // item (AWS streams one): the API's three puts are six records of their items,
    // three of them skipped as not configuration, and three the hub already holds,
    // and three of their history items, passed over. The direct write is another
    // tool's: the server records it in history, one more record.
    let watch_ended = r#"configwatch_rpc_calls_total{method="Watch",code="CANCELLED"}"#;
    let gone = r#"configwatch_watch_streams_ended_total{reason="client_gone"}"#;
    let after = scrape_when(admin, "the records, the message and the Watch's end", |s| {
        s.delta(&before, "configwatch_stream_records_read_total") == 11.0
            && s.delta(&before, "configwatch_sqs_messages_malformed_total") == 1.0
            && s.delta(&before, watch_ended) == 1.0
            && s.delta(&before, gone) == 1.0
    })
    .await;
    after.assert_moved(
        &before,
        &[
            // Calls.
            (
                r#"configwatch_rpc_calls_total{method="Put",code="OK"}"#,
                3.0,
            ),
            (watch_ended, 1.0),
            (
                r#"configwatch_rpc_calls_total{method="Get",code="UNAUTHENTICATED"}"#,
                1.0,
            ),
            (
                r#"configwatch_auth_refusals_total{reason="malformed"}"#,
                1.0,
            ),
            // The Watch's first call verified the writer's token; the puts found it
            // cached; the refused token was looked up and verified.
            ("configwatch_auth_token_cache_hits_total", 3.0),
            ("configwatch_auth_token_cache_misses_total", 2.0),
            ("configwatch_jwks_fetches_total", 0.0),
            ("configwatch_jwks_fetch_failures_total", 0.0),
            // The Watch.
            (r#"configwatch_watch_initial_syncs_total{mode="full"}"#, 1.0),
            ("configwatch_watch_deltas_sent_total", 4.0),
            ("configwatch_watch_changes_coalesced_total", 0.0),
            (gone, 1.0),
            ("configwatch_watch_streams_open", 0.0),
            ("configwatch_watch_backlog_largest", 0.0),
            // The hub: acme's view loaded by the Watch, and kept.
            ("configwatch_views_loaded_total", 1.0),
            ("configwatch_views_dropped_total", 0.0),
            ("configwatch_views", 1.0),
            ("configwatch_hub_resyncs_total", 0.0),
            // The stream: eleven records (three of them not configuration, four
            // history items), and the direct write recorded in history.
            ("configwatch_stream_records_read_total", 11.0),
            ("configwatch_stream_records_skipped_total", 3.0),
            ("configwatch_stream_history_recorded_total", 1.0),
            ("configwatch_stream_history_failed_total", 0.0),
            ("configwatch_stream_gaps_total", 0.0),
            ("configwatch_stream_reversioned_total", 0.0),
            ("configwatch_stream_iterator_renewals_total", 0.0),
            ("configwatch_stream_shards", 0.0),
            // The queue: one message, malformed.
            ("configwatch_sqs_messages_received_total", 1.0),
            ("configwatch_sqs_messages_malformed_total", 1.0),
            ("configwatch_sqs_messages_applied_total", 0.0),
            ("configwatch_sqs_messages_outside_root_total", 0.0),
            ("configwatch_reconcile_runs_total", 0.0),
            ("configwatch_reconcile_drift_total", 0.0),
        ],
    );
    // The direct write is applied by the stream. A put's own record may reach
    // the hub before the put's reply applies it (whichever comes first applies;
    // the hub sends it once: four deltas above).
    let applied = after.delta(&before, "configwatch_stream_records_applied_total");
    assert!((1.0..=4.0).contains(&applied), "{applied}\n{}", after.text);
    // Nothing else moved: the sums over every label.
    after.assert_families_moved(
        &before,
        &[
            ("configwatch_rpc_calls_total", 5.0),
            ("configwatch_auth_refusals_total", 1.0),
            ("configwatch_watch_streams_ended_total", 1.0),
            ("configwatch_watch_initial_syncs_total", 1.0),
            ("configwatch_source_restarts_total", 0.0),
        ],
    );
    promtool_check(&after.text);
}
