//! The deployment itself: the CloudFormation template deployed by moto's
//! CloudFormation with one and with two origins (each origin's queue and
//! dead-letter queue, the rule feeding every origin's queue, the server policy, a
//! serve command per origin), two servers started from those commands each taking
//! changes from its own queue and the table's stream; and the test environment's own
//! copy of the resources, whose rule routes exactly the changes under the root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use configwatch::auth::Role;
use configwatch_test_support::moto::{Moto, REGION, ROOT, TABLE, template_event_pattern};
use configwatch_test_support::moto_stack::{Stack, TEMPLATE};
use configwatch_test_support::{Scrape, ServerProcess, eventually};
use serde_json::{Value, json};

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

    let table = moto.describe_table(&res.table).await;
    assert!(table.latest_stream_arn().is_some());
}

/// The template as JSON.
fn template() -> Value {
    serde_json::from_str(&std::fs::read_to_string(TEMPLATE).unwrap()).unwrap()
}

/// The `serve` command the template outputs for the origin reading `queue_url`.
fn serve_output(queue_url: &str) -> String {
    format!(
        "configwatch serve --backend aws --table {TABLE} --queue-url {queue_url} \
         --ssm-root {ROOT} --region {REGION}"
    )
}

/// A queue's name, the last segment of its URL (moto's CloudFormation outputs AWS
/// URLs, its SQS lists its own).
fn queue_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// A queue's ARN, from its attributes.
async fn arn_of(moto: &Moto, queue_url: &str) -> String {
    moto.queue_attributes(queue_url).await["QueueArn"].clone()
}

/// Asserts what a stack of the template with `origins` origins holds on moto: per
/// origin a queue whose redrive policy sends to its own dead-letter queue and a
/// serve command with its queue, no other queue; the rule with the template's
/// pattern targeting exactly the origins' queues; the table's stream; and the
/// managed policy reading exactly the origins' queues and the stream, and
/// doing exactly the table actions configwatch uses. Returns each
/// origin's queue URL.
async fn assert_origins(moto: &Moto, stack: &Stack, origins: usize) -> Vec<String> {
    let mut queues = Vec::new();
    let mut all = Vec::new();
    for n in 1..=origins {
        let queue = stack.output(&format!("Origin{n}QueueUrl")).to_owned();
        let dlq = stack.output(&format!("Origin{n}DeadLetterQueueUrl"));
        let attributes = moto.queue_attributes(&queue).await;
        let redrive: Value = serde_json::from_str(&attributes["RedrivePolicy"]).unwrap();
        assert_eq!(
            redrive["deadLetterTargetArn"],
            arn_of(moto, dlq).await,
            "origin {n}'s queue sends what it cannot deliver to its own dead-letter queue"
        );
        assert_eq!(
            redrive["maxReceiveCount"].to_string().trim_matches('"'),
            "5"
        );
        assert_eq!(attributes["VisibilityTimeout"], "60");
        assert_eq!(attributes["ReceiveMessageWaitTimeSeconds"], "20");
        assert_eq!(
            moto.queue_attributes(dlq).await["MessageRetentionPeriod"],
            "1209600"
        );
        assert_eq!(
            stack.output(&format!("Origin{n}ServeCommand")),
            serve_output(&queue)
        );
        all.extend([queue_name(&queue), queue_name(dlq)]);
        queues.push(queue);
    }
    all.sort();
    let names: Vec<String> = moto
        .queue_urls()
        .await
        .iter()
        .map(|u| queue_name(u))
        .collect();
    assert_eq!(names, all, "one queue and DLQ per origin");
    let mut arns = Vec::new();
    for queue in &queues {
        arns.push(arn_of(moto, queue).await);
    }

    let rule = stack.resource("ParameterChangeRule");
    assert_eq!(moto.rule_pattern(rule).await, template_event_pattern(ROOT));
    let mut targets: Vec<String> = moto
        .rule_targets(rule)
        .await
        .into_iter()
        .map(|(_, arn)| arn)
        .collect();
    targets.sort();
    assert_eq!(targets, arns, "the rule feeds every origin's queue");

    assert_eq!(stack.output("TableName"), TABLE);
    let table = moto.describe_table(TABLE).await;
    let stream = table.latest_stream_arn().unwrap();
    assert_eq!(stack.output("StreamArn"), stream);

    let policy = moto.managed_policy(stack.output("ServerPolicyArn")).await;
    let statement = |sid: &str| {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no statement {sid} in {policy}"))
            .clone()
    };
    assert_eq!(statement("ChangeQueues")["Resource"], json!(arns));
    assert_eq!(
        statement("TenantTable")["Action"],
        json!([
            "dynamodb:DescribeTable",
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem"
        ]),
        "the table's item actions, TransactWriteItems' included, and no more"
    );
    assert_eq!(statement("TenantTableStream")["Resource"], stream);
    // The parameters under the root, their history included.
    assert_eq!(
        statement("Parameters")["Action"],
        json!([
            "ssm:GetParametersByPath",
            "ssm:GetParameter",
            "ssm:GetParameterHistory",
            "ssm:PutParameter",
            "ssm:DeleteParameter"
        ])
    );
    queues
}

#[tokio::test]
async fn with_one_origin_the_template_makes_one_queue_and_one_serve_command() {
    let moto = Moto::start();
    let stack = moto.deploy_template("configwatch", Some(1)).await;
    let names: Vec<&str> = stack.outputs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Origin1DeadLetterQueueUrl",
            "Origin1QueueUrl",
            "Origin1ServeCommand",
            "ServerPolicyArn",
            "StreamArn",
            "TableName"
        ]
    );
    let queues = assert_origins(&moto, &stack, 1).await;
    assert!(queues[0].ends_with("/configwatch-parameter-changes"));
}

#[tokio::test]
async fn by_default_the_template_makes_two_origins_each_with_its_queue_and_command() {
    let moto = Moto::start();
    let stack = moto.deploy_template("configwatch", None).await;
    for n in 1..=2 {
        for output in ["QueueUrl", "DeadLetterQueueUrl", "ServeCommand"] {
            stack.output(&format!("Origin{n}{output}"));
        }
    }
    assert_eq!(stack.outputs.len(), 9, "{:?}", stack.outputs);
    let queues = assert_origins(&moto, &stack, 2).await;
    assert!(queues[0].ends_with("/configwatch-parameter-changes"));
    assert!(queues[1].ends_with("/configwatch-parameter-changes-2"));
}

#[tokio::test]
async fn a_parameter_change_event_reaches_every_origins_queue() {
    let moto = Moto::start();
    let stack = moto.deploy_template("configwatch", Some(2)).await;
    let name = format!("{ROOT}/acme/db/url");
    moto.ssm_change_event(&name, "Update", "String").await;
    moto.ssm_change_event("/elsewhere/acme/db/url", "Update", "String")
        .await;
    let sqs = moto.sqs().await;
    for n in 1..=2 {
        let got = sqs
            .receive_message()
            .queue_url(stack.output(&format!("Origin{n}QueueUrl")))
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        let names: Vec<String> = got
            .messages()
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                body["detail"]["name"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(names, [name.as_str()], "origin {n}'s queue");
    }
}

#[tokio::test]
async fn deleting_the_stack_keeps_the_table_and_its_configuration() {
    let moto = Moto::start();
    let stack = moto.deploy_template("configwatch", Some(2)).await;
    moto.put_config_item(TABLE, "acme", "flags", 1).await;
    moto.delete_stack(&stack.name).await;
    let item = moto
        .dynamodb()
        .await
        .get_item()
        .table_name(TABLE)
        .key("pk", AttributeValue::S("TENANT#acme".into()))
        .key("sk", AttributeValue::S("CONFIG#flags".into()))
        .send()
        .await
        .expect("the table is still there");
    assert!(item.item().is_some(), "the configuration is still there");
    assert_eq!(
        moto.queue_urls().await,
        Vec::<String>::new(),
        "the queues go"
    );
}

/// moto's CloudFormation does not apply a table's `TimeToLiveSpecification`, so it
/// is read from the template: history items expire by DynamoDB's TTL on
/// `expiresAt`, which configwatch sets on versions once they are superseded.
#[test]
fn the_table_expires_history_items_by_ttl_on_expires_at() {
    let template = template();
    let table = &template["Resources"]["ConfigTable"]["Properties"];
    assert_eq!(
        table["TimeToLiveSpecification"],
        json!({ "AttributeName": "expiresAt", "Enabled": true })
    );
}

/// moto's CloudFormation does not make `AWS::SQS::QueuePolicy` resources, so the
/// queue policies are read from the template itself: each origin's queue lets
/// EventBridge send to it for the template's rule only, and exists exactly when its
/// queue does. The origin count allows no more readers than a stream shard has.
#[test]
fn each_origins_queue_lets_only_the_rule_send_to_it() {
    let template = template();
    let resources = &template["Resources"];
    for (policy, queue, dlq, condition) in [
        (
            "ChangeQueuePolicy",
            "ChangeQueue",
            "ChangeDeadLetterQueue",
            None,
        ),
        (
            "ChangeQueuePolicy2",
            "ChangeQueue2",
            "ChangeDeadLetterQueue2",
            Some("TwoOrigins"),
        ),
    ] {
        for resource in [policy, queue, dlq] {
            assert_eq!(
                resources[resource]["Condition"].as_str(),
                condition,
                "{resource}"
            );
        }
        let properties = &resources[policy]["Properties"];
        assert_eq!(resources[policy]["Type"], "AWS::SQS::QueuePolicy");
        assert_eq!(properties["Queues"], json!([{ "Ref": queue }]));
        assert_eq!(
            properties["PolicyDocument"]["Statement"],
            json!([{
                "Sid": "EventBridgeRuleSends",
                "Effect": "Allow",
                "Principal": { "Service": "events.amazonaws.com" },
                "Action": "sqs:SendMessage",
                "Resource": { "Fn::GetAtt": [queue, "Arn"] },
                "Condition": {
                    "ArnEquals": {
                        "aws:SourceArn": { "Fn::GetAtt": ["ParameterChangeRule", "Arn"] }
                    }
                }
            }]),
            "{policy}"
        );
    }
    let count = &template["Parameters"]["OriginCount"];
    assert_eq!(count["AllowedValues"], json!(["1", "2"]));
    assert_eq!(count["Default"], "2");
    assert!(
        count["Description"]
            .as_str()
            .unwrap()
            .contains("at most two readers per shard"),
        "{count}"
    );
}

#[tokio::test]
async fn two_origins_started_from_the_outputs_each_apply_changes_from_their_own_queue() {
    let moto = Moto::start();
    let stack = moto.deploy_template("configwatch", None).await;
    let mut origins = Vec::new();
    for n in 1..=2 {
        let dir = temp_dir();
        let output = stack.output(&format!("Origin{n}ServeCommand"));
        let mut command = moto.output_command(Path::new(BIN), dir.path(), output);
        command.args(OBSERVED_SOURCES);
        let server = ServerProcess::start(command).await;
        let reader = token(dir.path(), "acme", Role::Reader);
        let mut client = connect(server.addr, Some(&reader)).await;
        let mut stream = watch(&mut client, watch_prefixes(&[])).await;
        let (entries, _) = initial(&mut stream).await;
        assert!(entries.is_empty(), "origin {n}: {entries:?}");
        origins.push((server, stream, dir));
    }

    // A parameter changed in Parameter Store, with the event AWS emits for it, and
    // an item written in the table by another tool.
    let name = format!("{ROOT}/acme/db/url");
    moto.put_string_parameter(&name, "postgres://a").await;
    moto.ssm_change_event(&name, "Create", "String").await;
    moto.put_config_item(TABLE, "acme", "flags", 3).await;

    for (n, (server, stream, _)) in origins.iter_mut().enumerate() {
        let mut got = changes(stream, 2).await;
        got.sort_by(|a, b| a.key.cmp(&b.key));
        let got: Vec<(&str, &str)> = got.iter().map(|e| (&*e.key, &*e.value)).collect();
        assert_eq!(
            got,
            [
                ("param_config_db/url", "\"postgres://a\""),
                ("tenant_config_flags", "true")
            ],
            "origin {}",
            n + 1
        );
        // Each origin took one message from a queue and reads the table's stream.
        let admin = server.admin.unwrap();
        let scrape = eventually(
            PATIENCE,
            || format!("origin {} to count its queue's message", n + 1),
            || async {
                let s = Scrape::take(admin).await;
                (s.value("configwatch_sqs_messages_applied_total") == 1.0).then_some(s)
            },
        )
        .await;
        assert_eq!(scrape.value("configwatch_sqs_messages_received_total"), 1.0);
        assert_eq!(scrape.value("configwatch_stream_shards"), 1.0);
    }
    // Both messages are gone, one from each queue: each origin read its own.
    for n in 1..=2 {
        let attributes = moto
            .queue_attributes(stack.output(&format!("Origin{n}QueueUrl")))
            .await;
        assert_eq!(attributes["ApproximateNumberOfMessages"], "0", "queue {n}");
        assert_eq!(
            attributes["ApproximateNumberOfMessagesNotVisible"], "0",
            "queue {n}"
        );
    }
}

/// `cfn-lint`, the CloudFormation linter (PyPI): `tests/run` installs it beside moto
/// and names it in `CONFIGWATCH_CFN_LINT`; otherwise one on the PATH.
fn cfn_lint() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("CONFIGWATCH_CFN_LINT") {
        return Some(path.into());
    }
    let found = std::process::Command::new("cfn-lint")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| "cfn-lint".into())
}

#[test]
fn every_template_passes_cfn_lint() {
    let Some(lint) = cfn_lint() else {
        eprintln!(
            "aws_setup::every_template_passes_cfn_lint: SKIPPED: cfn-lint is not installed (tests/run installs it; or `pip install cfn-lint`)"
        );
        return;
    };
    let deploy = Path::new(TEMPLATE).parent().expect("the deploy directory");
    let templates: Vec<_> = std::fs::read_dir(deploy)
        .expect("deploy/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".cfn.json"))
        .collect();
    assert!(!templates.is_empty(), "no template in {}", deploy.display());
    for template in templates {
        let out = std::process::Command::new(&lint)
            .arg(&template)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lint.display()));
        assert!(
            out.status.success(),
            "cfn-lint finds problems in {}:\n{}{}",
            template.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
