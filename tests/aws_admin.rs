//! The admin listener of `configwatch serve --backend aws`, on moto: `/readyz` once
//! every source has made its first poll, and `/metrics` showing each source up and the source
//! counters moving as DynamoDB stream records and SQS messages arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use configwatch::auth::Role;
use configwatch_test_support::moto::Moto;
use configwatch_test_support::{Scrape, ServerProcess, eventually, http_get};

/// Waits until the series `name` reaches `at_least`.
async fn reaches(admin: SocketAddr, name: &str, at_least: f64) {
    eventually(
        PATIENCE,
        || format!("{name} to reach {at_least}"),
        || async {
            let value = Scrape::take(admin)
                .await
                .series
                .get(name)
                .copied()
                .unwrap_or(0.0);
            (value >= at_least).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn sources_are_up_ready_and_counted() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let dir = temp_dir();
    let mut command = serve_command(dir.path(), &["--backend", "aws"]);
    command.args(["--admin-listen", "127.0.0.1:0"]);
    moto.serve_on(&mut command, &res);
    let server = ServerProcess::start(command).await;
    let admin = server.admin.expect("an admin address");

    // Ready once the stream and the queue have each answered a first poll.
    eventually(
        PATIENCE,
        || "/readyz to answer 200".into(),
        || async { (http_get(admin, "/readyz").await.status == 200).then_some(()) },
    )
    .await;
    let scrape = Scrape::take(admin).await.series;
    for source in ["dynamodb-stream", "sqs-events", "reconcile"] {
        let up = format!("configwatch_source_up{{source=\"{source}\"}}");
        assert_eq!(scrape.get(&up), Some(&1.0), "{up}");
        let restarts = format!("configwatch_source_restarts_total{{source=\"{source}\"}}");
        assert_eq!(scrape.get(&restarts), Some(&0.0), "{restarts}");
    }

    // The stream reader's first start is a gap (it reads the table); after it, a
    // change made in the table by another tool arrives by the stream.
    reaches(admin, "configwatch_stream_gaps_total", 1.0).await;
    // Records apply to the tenants the server holds: a Get loads acme.
    let reader = token(dir.path(), "acme", Role::Reader);
    let mut client = connect(server.addr, Some(&reader)).await;
    get_keys(&mut client, &["tenant_config_flag"]).await;
    moto.dynamodb()
        .await
        .put_item()
        .table_name(&res.table)
        .item("pk", AttributeValue::S("TENANT#acme".into()))
        .item("sk", AttributeValue::S("CONFIG#tenant_config_flag".into()))
        .item("config", AttributeValue::Bool(true))
        .item("version", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    reaches(admin, "configwatch_stream_records_read_total", 1.0).await;
    reaches(admin, "configwatch_stream_records_applied_total", 1.0).await;

    // A message that is not an event is counted as malformed.
    moto.sqs()
        .await
        .send_message()
        .queue_url(&res.queue_url)
        .message_body("not an event")
        .send()
        .await
        .unwrap();
    reaches(admin, "configwatch_sqs_messages_malformed_total", 1.0).await;
}
