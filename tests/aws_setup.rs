//! The test environment itself: moto runs the template's resources, and its
//! EventBridge rule routes exactly the Parameter Store changes under the root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use configwatch_test_support::moto::{Moto, ROOT};

#[tokio::test]
async fn the_template_rule_routes_parameter_changes_under_the_root_to_the_queue() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    moto.ssm_change_event(&format!("{ROOT}/acme/db/url"), "Update", "String")
        .await;
    moto.ssm_change_event("/elsewhere/acme/db/url", "Update", "String")
        .await;
    let sqs = moto.sqs().await;
    let got = sqs
        .receive_message()
        .queue_url(&res.queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let bodies: Vec<serde_json::Value> = got
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(
        bodies.len(),
        1,
        "only the change under the root: {bodies:?}"
    );
    assert_eq!(bodies[0]["source"], "aws.ssm");
    assert_eq!(bodies[0]["detail-type"], "Parameter Store Change");
    assert_eq!(bodies[0]["detail"]["name"], format!("{ROOT}/acme/db/url"));
    assert_eq!(bodies[0]["detail"]["operation"], "Update");

    let ddb = moto.dynamodb().await;
    let table = ddb
        .describe_table()
        .table_name(&res.table)
        .send()
        .await
        .unwrap();
    assert!(table.table().and_then(|t| t.latest_stream_arn()).is_some());
}
