//! A moto server (AWS emulator) per test, on 127.0.0.1 port 0, with the resources of
//! deploy/configwatch.cfn.json: the table with its stream, the change queue with its
//! dead-letter queue, and the EventBridge rule (the template's own pattern) that
//! sends Parameter Store changes to the queue.
//!
//! moto_server is found through `CONFIGWATCH_MOTO_SERVER`, else on PATH;
//! `tests/run` installs it into a virtualenv and sets the variable. This module knows
//! the template's resources, the AWS SDK and the flags that point `configwatch serve`
//! at them; nothing of configwatch's code.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use serde_json::{Value, json};

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";
pub const TABLE: &str = "configwatch-tenant-config";
pub const ROOT: &str = "/config-service";
/// The EventBridge rule that sends Parameter Store changes to the queue(s).
pub const RULE: &str = "configwatch-parameter-changes";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS resources a test works with.
pub struct Resources {
    pub table: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
}

impl Moto {
    /// Starts a private moto server and waits until it answers.
    pub fn start() -> Moto {
        let program =
            std::env::var("CONFIGWATCH_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto server '{program}': {e}. Run tests/run (it installs \
                     moto into a virtualenv), or `pip install 'moto[server]'`, or set \
                     CONFIGWATCH_MOTO_SERVER to its moto_server"
                )
            });
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("moto server exited before announcing its port")
                .expect("read moto output");
            if let Some(at) = line.find("Running on http://") {
                break line[at + "Running on ".len()..].trim().to_owned();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Moto { child, endpoint }
    }

    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .load()
            .await
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    pub async fn streams(&self) -> aws_sdk_dynamodbstreams::Client {
        aws_sdk_dynamodbstreams::Client::new(&self.sdk_config().await)
    }

    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    pub async fn events(&self) -> aws_sdk_eventbridge::Client {
        aws_sdk_eventbridge::Client::new(&self.sdk_config().await)
    }

    /// Points a `configwatch serve --backend aws` command at this moto: the
    /// resources, the root, the region, static credentials, and a stream poll
    /// every 100 ms.
    pub fn serve_on(&self, command: &mut Command, res: &Resources) {
        command
            .args(["--table", &res.table, "--queue-url", &res.queue_url])
            .args(["--ssm-root", ROOT, "--region", REGION])
            .args(["--stream-poll-interval", "100ms"]);
        self.aws_env(command);
    }

    /// Points the AWS SDK of `command` at this moto: its endpoint, static
    /// credentials, no instance metadata.
    pub fn aws_env(&self, command: &mut Command) {
        command
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// Creates the template's table, queues and rule. `visibility` is the queue's
    /// visibility timeout: short in tests, so a refused message is redelivered (and
    /// moved to the dead-letter queue) quickly.
    pub async fn create_resources(&self, visibility: Duration) -> Resources {
        let ddb = self.dynamodb().await;
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .unwrap()
        };
        ddb.create_table()
            .table_name(TABLE)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("create table");
        // As the template: history items expire by TTL on `expiresAt`.
        ddb.update_time_to_live()
            .table_name(TABLE)
            .time_to_live_specification(
                aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                    .attribute_name("expiresAt")
                    .enabled(true)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("enable TTL");

        let sqs = self.sqs().await;
        let dlq_url = sqs
            .create_queue()
            .queue_name("configwatch-parameter-changes-dlq")
            .send()
            .await
            .expect("create dlq")
            .queue_url
            .unwrap();
        let dlq_arn = self.queue_arn(&dlq_url).await;
        let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"});
        let queue_url = sqs
            .create_queue()
            .queue_name("configwatch-parameter-changes")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                redrive.to_string(),
            )
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().max(1).to_string(),
            )
            .send()
            .await
            .expect("create queue")
            .queue_url
            .unwrap();
        let queue_arn = self.queue_arn(&queue_url).await;

        let events = self.events().await;
        let rule_arn = events
            .put_rule()
            .name(RULE)
            .event_pattern(template_event_pattern(ROOT).to_string())
            .state(aws_sdk_eventbridge::types::RuleState::Enabled)
            .send()
            .await
            .expect("put rule")
            .rule_arn
            .unwrap();
        events
            .put_targets()
            .rule(RULE)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("configwatch-queue")
                    .arn(&queue_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("put targets");
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}
            }]
        });
        sqs.set_queue_attributes()
            .queue_url(&queue_url)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::Policy,
                policy.to_string(),
            )
            .send()
            .await
            .expect("queue policy");
        Resources {
            table: TABLE.into(),
            queue_url,
            queue_arn,
            dlq_url,
        }
    }

    pub(crate) async fn queue_arn(&self, url: &str) -> String {
        self.sqs()
            .await
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .expect("queue arn")
    }

    /// Emits the "Parameter Store Change" event AWS emits for a parameter change
    /// (moto's SSM emits none), through EventBridge and the rule, to the queue.
    pub async fn ssm_change_event(&self, name: &str, operation: &str, kind: &str) {
        let detail = json!({
            "name": name,
            "type": kind,
            "operation": operation,
            "description": "",
        });
        let out = self
            .events()
            .await
            .put_events()
            .entries(
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .source("aws.ssm")
                    .detail_type("Parameter Store Change")
                    .detail(detail.to_string())
                    .resources(format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"))
                    .build(),
            )
            .send()
            .await
            .expect("put events");
        assert_eq!(out.failed_entry_count, 0, "event refused: {out:?}");
    }

    /// Table `name` as DynamoDB describes it (its ARN, its stream's ARN).
    pub async fn describe_table(&self, name: &str) -> aws_sdk_dynamodb::types::TableDescription {
        self.dynamodb()
            .await
            .describe_table()
            .table_name(name)
            .send()
            .await
            .expect("describe table")
            .table
            .expect("the table")
    }

    /// Writes a configuration item in `table` directly, as another tool would:
    /// tenant `tenant`, key `tenant_config_{name}`, value `true`, at `version`.
    pub async fn put_config_item(&self, table: &str, tenant: &str, name: &str, version: u64) {
        use aws_sdk_dynamodb::types::AttributeValue;
        self.dynamodb()
            .await
            .put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("TENANT#{tenant}")))
            .item("sk", AttributeValue::S(format!("CONFIG#{name}")))
            .item("config", AttributeValue::Bool(true))
            .item("version", AttributeValue::N(version.to_string()))
            .send()
            .await
            .expect("put item");
    }

    /// Writes the String parameter `name` (a full Parameter Store name) in SSM
    /// directly, as another tool would, creating or overwriting it. moto emits no
    /// event for it: send one with [`Moto::ssm_change_event`].
    pub async fn put_string_parameter(&self, name: &str, value: &str) {
        self.ssm()
            .await
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("put parameter");
    }

    /// Sends `body` to the queue as it is.
    pub async fn send_raw_message(&self, queue_url: &str, body: &str) {
        self.sqs()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send message");
    }
}

/// The EventBridge pattern of the template's rule, with its root filled in.
pub fn template_event_pattern(root: &str) -> Value {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::moto_stack::TEMPLATE).expect("read template"),
    )
    .expect("template is JSON");
    let mut pattern =
        template["Resources"]["ParameterChangeRule"]["Properties"]["EventPattern"].clone();
    pattern["detail"]["name"][0]["prefix"] = Value::String(format!("{root}/"));
    pattern
}
