//! The service stack deployed on moto's CloudFormation, as `aws cloudformation
//! package` + `deploy` deploy it: the data template uploaded to S3 and nested, in a
//! VPC made first; then what moto made, asserted.
//!
//! What moto's CloudFormation (5.2) does with the template's resource types:
//! - makes `AWS::CloudFormation::Stack` (from S3), `AWS::ECS::Cluster`,
//!   `AWS::ECS::TaskDefinition`, `AWS::ECS::Service`, `AWS::ElasticLoadBalancingV2::
//!   LoadBalancer` and `TargetGroup`, `AWS::EC2::SecurityGroup` and
//!   `SecurityGroupIngress`, `AWS::Logs::LogGroup` and `AWS::IAM::Role`;
//! - skips `AWS::ApplicationAutoScaling::ScalableTarget` and `ScalingPolicy` (and the
//!   data template's `AWS::SQS::QueuePolicy`) with a warning: not supported;
//! - refuses `AWS::ElasticLoadBalancingV2::Listener` with TCP or TLS: it makes every
//!   load balancer an application one, ignoring `Type: network`; the listeners are
//!   removed before deploying (`moto_ecs::for_moto`);
//! - cannot resolve a nested stack's outputs (`Fn::GetAtt [Stack, Outputs.X]` fails
//!   the stack with an internal error): the template names the data stack's table
//!   and queues by the names it passes to it, which these tests compare with what
//!   the nested stack made;
//! - keeps only some properties: a task definition's family, containers, volumes
//!   and memory (not its cpu, network mode, roles or platform); a service's
//!   cluster, task definition and count (not its network, load balancers or
//!   deployment settings); no cluster settings, no target group attributes, no
//!   security group egress rules. `network.rs` and `privilege.rs` read those from
//!   the template.

use std::collections::BTreeMap;

use configwatch_test_support::moto::{ACCOUNT, Moto, REGION, ROOT, TABLE};
use configwatch_test_support::moto_ecs::{DATA_STACK, MotoState, Network};
use configwatch_test_support::moto_stack::Stack;
use serde_json::{Value, json};

const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/configwatch:1.4.0";
const POOL: &str = "us-east-1_Pool1";
const SECRET: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:configwatch-relay-AbCdEf";
const QUEUE: &str = "configwatch-parameter-changes";

/// The parameters of a stack without a certificate: logs kept 14 days, origins
/// with 2 GiB.
fn parameters() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Image", IMAGE),
        ("CognitoUserPoolId", POOL),
        ("CognitoAppClientIds", "appclient1,appclient2"),
        ("RelayCognitoClientId", "relayclient"),
        ("RelayRefreshTokenSecretArn", SECRET),
        ("LogRetentionDays", "14"),
        ("OriginMemory", "2048"),
    ]
}

/// A container's environment (as moto holds it), by name.
pub(crate) fn environment(container: &Value) -> BTreeMap<String, String> {
    container["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap().to_owned();
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// The environment every container has: where it listens, its data volume, JSON
/// logs, the shutdown grace, and the identity provider.
fn common_environment(audience: &str) -> BTreeMap<String, String> {
    let jwks = format!("https://cognito-idp.{REGION}.amazonaws.com/{POOL}/.well-known/jwks.json");
    [
        ("CONFIGWATCH_LISTEN", "0.0.0.0:50051"),
        ("CONFIGWATCH_ADMIN_LISTEN", "0.0.0.0:9090"),
        ("CONFIGWATCH_DATA_DIR", "/var/lib/configwatch"),
        ("CONFIGWATCH_LOG_FORMAT", "json"),
        ("CONFIGWATCH_SHUTDOWN_GRACE", "20s"),
        ("CONFIGWATCH_JWKS_URL", jwks.as_str()),
        ("CONFIGWATCH_AUDIENCE", audience),
        ("CONFIGWATCH_TOKEN_USE", "any"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Asserts what every container of the stack shares: the image, its ports, the
/// health check of the image's contract, a read-only root with the data directory
/// a volume, its own log group, and a stop timeout.
fn assert_container_basics(container: &Value, log_group: &str, prefix: &str) {
    assert_eq!(container["image"], IMAGE);
    assert_eq!(container["essential"], true);
    assert_eq!(
        container["portMappings"],
        json!([
            { "name": "grpc", "containerPort": 50051, "protocol": "tcp" },
            { "name": "admin", "containerPort": 9090, "protocol": "tcp" }
        ])
    );
    assert_eq!(
        container["healthCheck"],
        json!({
            "command": ["CMD", "/usr/local/bin/configwatch", "health"],
            "interval": 10, "timeout": 5, "retries": 3, "startPeriod": 30
        })
    );
    assert_eq!(container["readonlyRootFilesystem"], true);
    assert_eq!(
        container["mountPoints"],
        json!([{ "sourceVolume": "data", "containerPath": "/var/lib/configwatch", "readOnly": false }])
    );
    assert_eq!(container["stopTimeout"], 40);
    assert_eq!(
        container["logConfiguration"],
        json!({
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": REGION,
                "awslogs-stream-prefix": prefix
            }
        })
    );
}

/// The physical ids of the stack's security groups by their logical ids, and back.
fn group_names(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .resources
        .iter()
        .filter(|(id, _)| id.ends_with("SecurityGroup"))
        .map(|(id, physical)| (physical.clone(), id.clone()))
        .collect()
}

/// The ingress rules moto holds for the stack's groups: (group, from, to, source),
/// by logical ids.
fn ingress(state: &MotoState, stack: &Stack) -> Vec<(String, u64, u64, String)> {
    let names = group_names(stack);
    let mut rules: Vec<_> = state
        .models("ec2", "SecurityGroupRule")
        .into_iter()
        .filter(|r| r["is_egress"] == false)
        .filter_map(|r| {
            let group = names.get(r["group_id"].as_str()?)?.clone();
            let source = match r["source_group"]["GroupId"].as_str() {
                Some(id) => format!("sg:{}", names[id]),
                None => r["cidr_ipv4"].as_str().unwrap().to_owned(),
            };
            let port = |key: &str| r[key].as_u64().unwrap();
            Some((group, port("from_port"), port("to_port"), source))
        })
        .collect();
    rules.sort();
    rules
}

/// The stack deployed on `moto` in a network of its own, with the parameters above
/// and `extra`.
pub(crate) async fn deploy(
    moto: &Moto,
    extra: &[(&'static str, &'static str)],
) -> (Network, Stack) {
    let network = moto.network().await;
    let mut parameters = parameters();
    parameters.extend_from_slice(extra);
    let stack = moto
        .deploy_service("configwatch", &network, &parameters)
        .await;
    (network, stack)
}

#[tokio::test]
async fn the_service_stack_deploys_its_origins_relays_load_balancers_and_outputs() {
    let moto = Moto::start();
    let (network, stack) = deploy(&moto, &[]).await;
    let state = moto.state().await;

    // The load balancers, and the outputs naming them.
    let lb = |id: &str| state.resource("elbv2", "FakeLoadBalancer", stack.resource(id));
    let (internal, client) = (lb("InternalLoadBalancer"), lb("ClientLoadBalancer"));
    assert_eq!(internal["scheme"], "internal");
    assert_eq!(client["scheme"], "internet-facing");
    let groups = |lb: &Value| lb["security_groups"].clone();
    assert_eq!(
        groups(internal),
        json!([stack.resource("InternalLoadBalancerSecurityGroup")])
    );
    assert_eq!(
        groups(client),
        json!([stack.resource("ClientLoadBalancerSecurityGroup")])
    );
    let internal_dns = internal["dns_name"].as_str().unwrap();
    let client_dns = client["dns_name"].as_str().unwrap();
    let origin = |port: u16| format!("http://{internal_dns}:{port}");
    let cluster = stack.resource("Cluster");
    let service_name = |id: &str| stack.resource(id).rsplit('/').next().unwrap().to_owned();
    let group_name = |service: &str| format!("/configwatch/configwatch/{service}");
    let expected: BTreeMap<String, String> = [
        ("ClientEndpoint", format!("http://{client_dns}:50051")),
        ("Origin1Endpoint", origin(50051)),
        ("Origin2Endpoint", origin(50052)),
        ("ClusterName", cluster.to_owned()),
        ("Origin1ServiceName", service_name("Origin1Service")),
        ("Origin2ServiceName", service_name("Origin2Service")),
        ("RelayServiceName", service_name("RelayService")),
        ("Origin1LogGroupName", group_name("origin-1")),
        ("Origin2LogGroupName", group_name("origin-2")),
        ("RelayLogGroupName", group_name("relay")),
        ("TableName", TABLE.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(stack.outputs, expected);

    // Target groups: TCP to the gRPC port of IP targets, health checked on /readyz.
    for id in [
        "Origin1TargetGroup",
        "Origin2TargetGroup",
        "RelayTargetGroup",
    ] {
        let group = state.resource("elbv2", "FakeTargetGroup", stack.resource(id));
        assert_eq!(
            (&group["protocol"], &group["port"], &group["target_type"]),
            (&json!("TCP"), &json!(50051), &json!("ip")),
            "{id}"
        );
        assert_eq!(group["health_check_protocol"], "HTTP");
        assert_eq!(group["health_check_port"], "9090");
        assert_eq!(group["health_check_path"], "/readyz");
        assert_eq!(group["vpc_id"], network.vpc.as_str());
    }

    // Security groups: who may reach what.
    let sg = |id: &str| format!("sg:{id}");
    let rule =
        |group: &str, from: u64, to: u64, source: String| (group.to_owned(), from, to, source);
    let mut expected = vec![
        rule(
            "ClientLoadBalancerSecurityGroup",
            50051,
            50051,
            "0.0.0.0/0".into(),
        ),
        rule(
            "InternalLoadBalancerSecurityGroup",
            50051,
            50052,
            sg("RelaySecurityGroup"),
        ),
        rule(
            "OriginSecurityGroup",
            50051,
            50051,
            sg("InternalLoadBalancerSecurityGroup"),
        ),
        rule(
            "OriginSecurityGroup",
            9090,
            9090,
            sg("InternalLoadBalancerSecurityGroup"),
        ),
        rule(
            "RelaySecurityGroup",
            50051,
            50051,
            sg("ClientLoadBalancerSecurityGroup"),
        ),
        rule(
            "RelaySecurityGroup",
            9090,
            9090,
            sg("ClientLoadBalancerSecurityGroup"),
        ),
    ];
    expected.sort();
    assert_eq!(ingress(&state, &stack), expected);

    // Log groups, kept as long as asked.
    for service in ["origin-1", "origin-2", "relay"] {
        let group = state.resource("logs", "LogGroup", &group_name(service));
        assert_eq!(group["retention_in_days"], 14, "{service}");
    }

    // The services, each running its task definition in the cluster: one task per
    // origin. The relay service names no count (autoscaling's minimum sets it, and
    // moto makes no scalable target), which moto takes as none.
    for (id, task, count) in [
        ("Origin1Service", "Origin1TaskDefinition", 1),
        ("Origin2Service", "Origin2TaskDefinition", 1),
        ("RelayService", "RelayTaskDefinition", 0),
    ] {
        let service = state.resource("ecs", "Service", stack.resource(id));
        assert_eq!(service["cluster_name"], cluster);
        assert_eq!(service["desired_count"], count, "{id}");
        assert_eq!(service["task_definition"], stack.resource(task), "{id}");
    }

    // The data stack, nested: the table and each origin's queue it made are the
    // ones the origins are given and allowed to use.
    let data = moto.stack(stack.resource(DATA_STACK)).await;
    let table = moto.describe_table(TABLE).await;
    let stream = table.latest_stream_arn().unwrap();
    let role = |id: &str| {
        let role = state.resource("iam", "Role", stack.resource(id));
        let policies = role["policies"].as_object().unwrap();
        assert_eq!(policies.len(), 1, "{id}: one inline policy");
        assert_eq!(role["attached_managed_policies"], json!([]), "{id}");
        policies.values().next().unwrap()["Statement"].clone()
    };
    let resource_of = |statements: &Value, sid: &str| {
        statements
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap()["Resource"]
            .clone()
    };
    for n in 1..=2 {
        let queue_url = data.output(&format!("Origin{n}QueueUrl"));
        let queue_arn = moto.queue_attributes(queue_url).await["QueueArn"].clone();
        let task = state.resource(
            "ecs",
            "TaskDefinition",
            stack.resource(&format!("Origin{n}TaskDefinition")),
        );
        assert_eq!(task["memory"], "2048");
        let container = &task["container_definitions"][0];
        assert_eq!(
            container["command"],
            json!([
                "serve",
                "--backend",
                "aws",
                "--table",
                TABLE,
                "--queue-url",
                queue_url,
                "--ssm-root",
                ROOT,
                "--region",
                REGION
            ]),
            "origin {n} reads its own queue"
        );
        assert_eq!(
            environment(container),
            common_environment("appclient1,appclient2,relayclient"),
            "origin {n} accepts the clients' and the relays' tokens"
        );
        assert!(container.get("secrets").is_none_or(Value::is_null));
        assert_container_basics(
            container,
            &group_name(&format!("origin-{n}")),
            &format!("origin-{n}"),
        );

        let statements = role(&format!("Origin{n}TaskRole"));
        assert_eq!(
            resource_of(&statements, "OwnChangeQueue"),
            queue_arn.as_str()
        );
        assert_eq!(
            resource_of(&statements, "TenantTable"),
            table.table_arn().unwrap()
        );
        let streams = resource_of(&statements, "TenantTableStream");
        let streams = streams.as_str().unwrap().strip_suffix('*').unwrap();
        assert!(stream.starts_with(streams), "{stream} is one of {streams}*");
        assert_eq!(
            resource_of(&statements, "Parameters"),
            json!([
                format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{ROOT}"),
                format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{ROOT}/*")
            ])
        );
    }
    assert!(
        data.output("Origin1QueueUrl")
            .ends_with(&format!("/{QUEUE}"))
    );

    // The relay: upstreams through the internal load balancer, the Cognito
    // credential (its refresh token from the secret), client connections that
    // move after 30 minutes.
    let task = state.resource(
        "ecs",
        "TaskDefinition",
        stack.resource("RelayTaskDefinition"),
    );
    let container = &task["container_definitions"][0];
    assert_eq!(container["command"], json!(["serve"]));
    let mut expected = common_environment("appclient1,appclient2");
    for (name, value) in [
        (
            "CONFIGWATCH_UPSTREAM",
            format!("{},{}", origin(50051), origin(50052)),
        ),
        (
            "CONFIGWATCH_UPSTREAM_COGNITO_CLIENT_ID",
            "relayclient".to_owned(),
        ),
        ("CONFIGWATCH_UPSTREAM_COGNITO_REGION", REGION.to_owned()),
        ("CONFIGWATCH_MAX_CONNECTION_AGE", "30m".to_owned()),
    ] {
        expected.insert(name.to_owned(), value);
    }
    assert_eq!(environment(container), expected);
    assert_eq!(
        container["secrets"],
        json!([{ "name": "CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN", "valueFrom": SECRET }])
    );
    assert_container_basics(container, &group_name("relay"), "relay");

    // Roles: the execution role and one per origin; none for the relays.
    let mut roles: Vec<&str> = state
        .models("iam", "Role")
        .into_iter()
        .map(|r| r["logical_resource_id"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        ["ExecutionRole", "Origin1TaskRole", "Origin2TaskRole"]
    );
    let execution = role("ExecutionRole");
    assert_eq!(resource_of(&execution, "RelayRefreshToken"), SECRET);
    let log_arn =
        |service: &str| state.resource("logs", "LogGroup", &group_name(service))["arn"].clone();
    assert_eq!(
        resource_of(&execution, "WriteLogs"),
        json!([log_arn("origin-1"), log_arn("origin-2"), log_arn("relay")])
    );
}

#[tokio::test]
async fn with_a_certificate_clients_reach_the_relays_by_tls_on_443_from_their_cidr_only() {
    let moto = Moto::start();
    let certificate =
        "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-0000-4000-8000-000000000000";
    let (_, stack) = deploy(
        &moto,
        &[
            ("CertificateArn", certificate),
            ("ClientCidr", "203.0.113.0/24"),
            ("ClientLoadBalancerScheme", "internal"),
            ("CognitoRegion", "eu-west-1"),
        ],
    )
    .await;
    let state = moto.state().await;
    let client = state.resource(
        "elbv2",
        "FakeLoadBalancer",
        stack.resource("ClientLoadBalancer"),
    );
    assert_eq!(client["scheme"], "internal");
    assert_eq!(
        stack.output("ClientEndpoint"),
        format!("https://{}:443", client["dns_name"].as_str().unwrap())
    );
    let clients: Vec<_> = ingress(&state, &stack)
        .into_iter()
        .filter(|(group, ..)| group == "ClientLoadBalancerSecurityGroup")
        .collect();
    assert_eq!(
        clients,
        [(
            "ClientLoadBalancerSecurityGroup".to_owned(),
            443,
            443,
            "203.0.113.0/24".to_owned()
        )]
    );
    // The pool lives in another region than the stack: every instance fetches
    // that region's keys, and the relays sign in there.
    for task in ["Origin1TaskDefinition", "RelayTaskDefinition"] {
        let task = state.resource("ecs", "TaskDefinition", stack.resource(task));
        let env = environment(&task["container_definitions"][0]);
        assert_eq!(
            env["CONFIGWATCH_JWKS_URL"],
            format!("https://cognito-idp.eu-west-1.amazonaws.com/{POOL}/.well-known/jwks.json")
        );
    }
    let task = state.resource(
        "ecs",
        "TaskDefinition",
        stack.resource("RelayTaskDefinition"),
    );
    let env = environment(&task["container_definitions"][0]);
    assert_eq!(env["CONFIGWATCH_UPSTREAM_COGNITO_REGION"], "eu-west-1");
}
