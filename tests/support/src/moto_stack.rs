//! The CloudFormation template (deploy/configwatch.cfn.json) deployed on moto as a
//! stack, as an operator deploys it: its outputs and resources, what they became
//! (queue attributes, a rule's targets, a managed policy's document), and a serve
//! command output turned into a `configwatch serve` process pointed at moto.
//!
//! moto's CloudFormation makes the table with its stream, the queues, the rule with
//! its targets and the managed policy; it skips `AWS::SQS::QueuePolicy` with a
//! warning (and moto does not check queue policies anyway).
//!
//! Boundary: extends [`Moto`] with CloudFormation, IAM, SQS and EventBridge calls;
//! knows the template's path, its `OriginCount` parameter and the form of its serve
//! command outputs; nothing of configwatch's code.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use crate::moto::Moto;

/// The template, as deployed.
pub const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/configwatch.cfn.json"
);

/// A stack made from the template.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    /// Each output's value by its name.
    pub outputs: BTreeMap<String, String>,
    /// Each resource's physical id (a name, a URL or an ARN) by its logical id; only
    /// the resources moto made.
    pub resources: BTreeMap<String, String>,
}

impl Stack {
    /// The output `name`; panics naming the outputs there are.
    pub fn output(&self, name: &str) -> &str {
        self.outputs.get(name).unwrap_or_else(|| {
            panic!(
                "stack {} has no output {name}: {:?}",
                self.name, self.outputs
            )
        })
    }

    /// The physical id of resource `logical`; panics naming the resources there are.
    pub fn resource(&self, logical: &str) -> &str {
        self.resources.get(logical).unwrap_or_else(|| {
            panic!(
                "stack {} has no resource {logical}: {:?}",
                self.name, self.resources
            )
        })
    }
}

impl Moto {
    pub async fn cloudformation(&self) -> aws_sdk_cloudformation::Client {
        aws_sdk_cloudformation::Client::new(&self.sdk_config().await)
    }

    pub async fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config().await)
    }

    /// Creates stack `name` from the template with `OriginCount` set to `origins`
    /// (the template's default when `None`), waits for it to be complete, and
    /// reads its outputs and resources.
    pub async fn deploy_template(&self, name: &str, origins: Option<u8>) -> Stack {
        let body = std::fs::read_to_string(TEMPLATE).expect("read the template");
        let origins = origins.map(|n| n.to_string());
        let parameters: Vec<(&str, &str)> = origins
            .iter()
            .map(|n| ("OriginCount", n.as_str()))
            .collect();
        self.create_stack(name, &body, &parameters).await
    }

    /// Creates stack `name` from template `body` with `parameters` (name, value;
    /// the others take their defaults), waits for it to be complete, and reads its
    /// outputs and resources.
    pub async fn create_stack(&self, name: &str, body: &str, parameters: &[(&str, &str)]) -> Stack {
        let cfn = self.cloudformation().await;
        let parameters = parameters
            .iter()
            .map(|(key, value)| {
                Parameter::builder()
                    .parameter_key(*key)
                    .parameter_value(*value)
                    .build()
            })
            .collect();
        cfn.create_stack()
            .stack_name(name)
            .template_body(body)
            .set_parameters(Some(parameters))
            .capabilities(Capability::CapabilityIam)
            .send()
            .await
            .expect("create stack");
        crate::eventually(
            crate::PATIENCE,
            || format!("stack {name} to be created"),
            || async {
                let stack = self.described(name).await;
                match stack.stack_status() {
                    Some(StackStatus::CreateComplete) => Some(()),
                    Some(StackStatus::CreateInProgress) => None,
                    other => panic!(
                        "stack {name} is {other:?}: {:?}",
                        stack.stack_status_reason()
                    ),
                }
            },
        )
        .await;
        self.stack(name).await
    }

    /// Stack `name` as it is: its outputs and resources (a nested stack's name is
    /// its physical id in its parent).
    pub async fn stack(&self, name: &str) -> Stack {
        let outputs = self
            .described(name)
            .await
            .outputs()
            .iter()
            .map(|o| {
                let key = o.output_key().expect("an output's name").to_owned();
                let value = o.output_value().expect("an output's value").to_owned();
                (key, value)
            })
            .collect();
        let resources = self
            .cloudformation()
            .await
            .describe_stack_resources()
            .stack_name(name)
            .send()
            .await
            .expect("describe stack resources")
            .stack_resources()
            .iter()
            .filter_map(|r| {
                Some((
                    r.logical_resource_id()?.to_owned(),
                    r.physical_resource_id()?.to_owned(),
                ))
            })
            .collect();
        Stack {
            name: name.to_owned(),
            outputs,
            resources,
        }
    }

    /// Stack `name` as CloudFormation describes it.
    async fn described(&self, name: &str) -> aws_sdk_cloudformation::types::Stack {
        let described = self
            .cloudformation()
            .await
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .expect("describe stacks");
        described.stacks().first().cloned().expect("the stack")
    }

    /// Deletes stack `name` (resources with a `Retain` deletion policy stay).
    pub async fn delete_stack(&self, name: &str) {
        self.cloudformation()
            .await
            .delete_stack()
            .stack_name(name)
            .send()
            .await
            .expect("delete stack");
    }

    /// The document of the default version of managed policy `arn`.
    pub async fn managed_policy(&self, arn: &str) -> Value {
        let iam = self.iam().await;
        let policy = iam
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .expect("get policy")
            .policy
            .expect("the policy");
        let version = iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(policy.default_version_id().expect("a default version"))
            .send()
            .await
            .expect("get policy version")
            .policy_version
            .expect("the policy version");
        let document = version.document().expect("the policy's document");
        serde_json::from_str(document).expect("the policy document is JSON")
    }

    /// The targets of EventBridge rule `rule` on the default bus: (id, ARN).
    pub async fn rule_targets(&self, rule: &str) -> Vec<(String, String)> {
        self.events()
            .await
            .list_targets_by_rule()
            .rule(rule)
            .send()
            .await
            .expect("list targets by rule")
            .targets()
            .iter()
            .map(|t| (t.id().to_owned(), t.arn().to_owned()))
            .collect()
    }

    /// The event pattern of EventBridge rule `rule`, as JSON.
    pub async fn rule_pattern(&self, rule: &str) -> Value {
        let rule = self
            .events()
            .await
            .describe_rule()
            .name(rule)
            .send()
            .await
            .expect("describe rule");
        serde_json::from_str(rule.event_pattern().expect("an event pattern"))
            .expect("the pattern is JSON")
    }

    /// Every attribute of the queue at `url`, by name.
    pub async fn queue_attributes(&self, url: &str) -> BTreeMap<String, String> {
        self.sqs()
            .await
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name.as_str().to_owned(), value))
            .collect()
    }

    /// The URLs of every queue.
    pub async fn queue_urls(&self) -> Vec<String> {
        let mut urls = self
            .sqs()
            .await
            .list_queues()
            .send()
            .await
            .expect("list queues")
            .queue_urls
            .unwrap_or_default();
        urls.sort();
        urls
    }

    /// A stack's serve command output (`configwatch serve ARGS`) as the operator
    /// runs it: `bin serve ARGS` on 127.0.0.1 port 0 with `data_dir`, the AWS SDK
    /// pointed at this moto.
    pub fn output_command(&self, bin: &Path, data_dir: &Path, output: &str) -> Command {
        let args = output
            .strip_prefix("configwatch serve ")
            .unwrap_or_else(|| panic!("not a serve command: {output:?}"));
        let mut command = crate::serve_command(bin, data_dir, 0);
        command.args(args.split_whitespace());
        self.aws_env(&mut command);
        command
    }
}
