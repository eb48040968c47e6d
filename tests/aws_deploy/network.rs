//! What moto cannot show, read from the service template: security group rules
//! (moto ignores egress rules), the load balancers' listeners (moto refuses TCP and
//! TLS listeners), target group attributes, deployment settings and autoscaling
//! (moto makes none of them).

use std::collections::BTreeSet;

use configwatch_test_support::moto_ecs::service_template;
use serde_json::{Value, json};

use crate::{container, env, of_type, resource, seconds};

/// The client port: 50051 without a certificate, 443 with one.
const CLIENT_PORTS: [u64; 2] = [50051, 443];

/// An ingress rule: (group, from port, to port, source), the source being `sg:ID`
/// (another group of the template), `ClientCidr`, or the literal CIDR.
type Rule = (String, u64, u64, String);

/// The values `value` may take: both branches of an `Fn::If`, or itself.
fn variants(value: &Value) -> Vec<&Value> {
    match value.get("Fn::If") {
        Some(branches) => vec![&branches[1], &branches[2]],
        None => vec![value],
    }
}

/// Every ingress rule of the template, inline or a resource of its own, each
/// `Fn::If` on a port expanded to both of its cases.
fn ingress_rules(template: &Value) -> BTreeSet<Rule> {
    let mut rules = BTreeSet::new();
    let mut add = |group: &str, rule: &Value| {
        let source = if let Some(sg) = rule.get("SourceSecurityGroupId") {
            format!("sg:{}", sg["Ref"].as_str().unwrap())
        } else if rule["CidrIp"] == json!({ "Ref": "ClientCidr" }) {
            "ClientCidr".to_owned()
        } else {
            assert!(rule.get("CidrIpv6").is_none() && rule.get("SourcePrefixListId").is_none());
            rule["CidrIp"].as_str().unwrap().to_owned()
        };
        for (from, to) in variants(&rule["FromPort"])
            .into_iter()
            .zip(variants(&rule["ToPort"]))
        {
            let (from, to) = (from.as_u64().unwrap(), to.as_u64().unwrap());
            rules.insert((group.to_owned(), from, to, source.clone()));
        }
    };
    for group in of_type(template, "AWS::EC2::SecurityGroup") {
        let inline = &resource(template, &group)["Properties"]["SecurityGroupIngress"];
        for rule in inline.as_array().into_iter().flatten() {
            add(&group, rule);
        }
    }
    for id in of_type(template, "AWS::EC2::SecurityGroupIngress") {
        let rule = &resource(template, &id)["Properties"];
        add(rule["GroupId"]["Ref"].as_str().unwrap(), rule);
    }
    rules
}

fn rule(group: &str, from: u64, to: u64, source: &str) -> Rule {
    (group.to_owned(), from, to, source.to_owned())
}

#[test]
fn the_admin_port_is_reachable_from_the_load_balancers_only() {
    let template = service_template();
    let rules = ingress_rules(&template);
    let load_balancers = [
        "sg:ClientLoadBalancerSecurityGroup",
        "sg:InternalLoadBalancerSecurityGroup",
    ];
    for (group, from, to, source) in &rules {
        if (*from..=*to).contains(&9090) {
            assert!(
                load_balancers.contains(&source.as_str()),
                "{group} opens 9090 to {source}"
            );
        }
        if !source.starts_with("sg:") {
            assert_eq!(group, "ClientLoadBalancerSecurityGroup", "{source}");
            assert_eq!(from, to);
            assert!(
                CLIENT_PORTS.contains(from),
                "{group} opens {from} to {source}"
            );
        }
    }
    let expected: BTreeSet<Rule> = [
        rule(
            "ClientLoadBalancerSecurityGroup",
            50051,
            50051,
            "ClientCidr",
        ),
        rule("ClientLoadBalancerSecurityGroup", 443, 443, "ClientCidr"),
        rule(
            "RelaySecurityGroup",
            50051,
            50051,
            "sg:ClientLoadBalancerSecurityGroup",
        ),
        rule(
            "RelaySecurityGroup",
            9090,
            9090,
            "sg:ClientLoadBalancerSecurityGroup",
        ),
        rule(
            "InternalLoadBalancerSecurityGroup",
            50051,
            50052,
            "sg:RelaySecurityGroup",
        ),
        rule(
            "OriginSecurityGroup",
            50051,
            50051,
            "sg:InternalLoadBalancerSecurityGroup",
        ),
        rule(
            "OriginSecurityGroup",
            9090,
            9090,
            "sg:InternalLoadBalancerSecurityGroup",
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(rules, expected);
}

#[test]
fn each_group_sends_only_to_the_next_tier_and_https() {
    let template = service_template();
    let egress = |group: &str| -> Vec<(u64, u64, String)> {
        resource(&template, group)["Properties"]["SecurityGroupEgress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let to = match r.get("DestinationSecurityGroupId") {
                    Some(sg) => format!("sg:{}", sg["Ref"].as_str().unwrap()),
                    None => r["CidrIp"].as_str().unwrap().to_owned(),
                };
                (
                    r["FromPort"].as_u64().unwrap(),
                    r["ToPort"].as_u64().unwrap(),
                    to,
                )
            })
            .collect()
    };
    let https = (443, 443, "0.0.0.0/0".to_owned());
    let to = |from: u64, to: u64, sg: &str| (from, to, format!("sg:{sg}"));
    assert_eq!(
        egress("ClientLoadBalancerSecurityGroup"),
        [
            to(50051, 50051, "RelaySecurityGroup"),
            to(9090, 9090, "RelaySecurityGroup")
        ]
    );
    assert_eq!(
        egress("RelaySecurityGroup"),
        [
            to(50051, 50052, "InternalLoadBalancerSecurityGroup"),
            https.clone()
        ]
    );
    assert_eq!(
        egress("InternalLoadBalancerSecurityGroup"),
        [
            to(50051, 50051, "OriginSecurityGroup"),
            to(9090, 9090, "OriginSecurityGroup")
        ]
    );
    assert_eq!(egress("OriginSecurityGroup"), [https]);
}

#[test]
fn the_listeners_send_clients_to_relays_and_relays_to_each_origin() {
    let template = service_template();
    let listener = |id: &str| &resource(&template, id)["Properties"];
    let forwards_to = |id: &str| {
        assert_eq!(
            listener(id)["DefaultActions"].as_array().unwrap().len(),
            1,
            "{id}"
        );
        listener(id)["DefaultActions"][0]["TargetGroupArn"]["Ref"].clone()
    };
    for (id, port, group) in [
        ("Origin1Listener", 50051, "Origin1TargetGroup"),
        ("Origin2Listener", 50052, "Origin2TargetGroup"),
    ] {
        assert_eq!(
            listener(id)["LoadBalancerArn"],
            json!({ "Ref": "InternalLoadBalancer" })
        );
        assert_eq!(listener(id)["Protocol"], "TCP");
        assert_eq!(listener(id)["Port"], port);
        assert_eq!(forwards_to(id), group);
    }
    let client = listener("ClientListener");
    assert_eq!(
        client["LoadBalancerArn"],
        json!({ "Ref": "ClientLoadBalancer" })
    );
    assert_eq!(
        client["Protocol"],
        json!({ "Fn::If": ["Tls", "TLS", "TCP"] })
    );
    assert_eq!(client["Port"], json!({ "Fn::If": ["Tls", 443, 50051] }));
    let if_tls = |value: Value| json!({ "Fn::If": ["Tls", value, { "Ref": "AWS::NoValue" }] });
    assert_eq!(client["AlpnPolicy"], if_tls(json!(["HTTP2Only"])));
    assert_eq!(
        client["Certificates"],
        if_tls(json!([{ "CertificateArn": { "Ref": "CertificateArn" } }]))
    );
    assert_eq!(forwards_to("ClientListener"), "RelayTargetGroup");
    assert_eq!(
        template["Conditions"]["Tls"],
        json!({ "Fn::Not": [{ "Fn::Equals": [{ "Ref": "CertificateArn" }, ""] }] })
    );
    assert_eq!(
        of_type(&template, "AWS::ElasticLoadBalancingV2::Listener"),
        ["ClientListener", "Origin1Listener", "Origin2Listener"],
        "no listener reaches the admin port"
    );
    for (lb, scheme) in [
        ("InternalLoadBalancer", json!("internal")),
        (
            "ClientLoadBalancer",
            json!({ "Ref": "ClientLoadBalancerScheme" }),
        ),
    ] {
        let properties = &resource(&template, lb)["Properties"];
        assert_eq!(properties["Type"], "network");
        assert_eq!(properties["Scheme"], scheme);
        assert_eq!(
            properties["LoadBalancerAttributes"],
            json!([{ "Key": "load_balancing.cross_zone.enabled", "Value": "true" }]),
            "{lb}: a single origin task is reached from every zone"
        );
    }
}

/// A replaced or scaled-in task is drained, not cut: the load balancer stops
/// sending it new connections for longer than the server's own shutdown grace, and
/// ECS waits past that grace before it kills the container.
#[test]
fn tasks_are_drained_longer_than_the_servers_shutdown_grace() {
    let template = service_template();
    for (task, group) in [
        ("Origin1TaskDefinition", "Origin1TargetGroup"),
        ("Origin2TaskDefinition", "Origin2TargetGroup"),
        ("RelayTaskDefinition", "RelayTargetGroup"),
    ] {
        let container = container(&template, task);
        let grace = env(container, "CONFIGWATCH_SHUTDOWN_GRACE");
        let grace = seconds(grace.as_str().unwrap());
        let stop = container["StopTimeout"].as_u64().unwrap();
        assert!(
            stop > grace && stop <= 120,
            "{task}: stopTimeout {stop} vs grace {grace}"
        );
        let attributes = &resource(&template, group)["Properties"]["TargetGroupAttributes"];
        let delay = attributes
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["Key"] == "deregistration_delay.timeout_seconds")
            .unwrap()["Value"]
            .as_str()
            .unwrap();
        assert!(delay.parse::<u64>().unwrap() >= grace, "{group}");
    }
    let relay = container(&template, "RelayTaskDefinition");
    assert_eq!(
        env(relay, "CONFIGWATCH_MAX_CONNECTION_AGE"),
        &json!({ "Ref": "RelayMaxConnectionAge" }),
        "relays move their clients after a while, so a scale-out gets clients"
    );
    assert_eq!(
        template["Parameters"]["RelayMaxConnectionAge"]["Default"],
        "30m"
    );
}

/// An origin is replaced by stopping its one task before starting the next, and
/// origin 2 only once origin 1 is stable again (the relays last): never two tasks
/// on one queue (an SQS message goes to one consumer) nor three readers of the
/// table's stream (two per shard at most), and always one origin serving the
/// relays.
#[test]
fn origins_are_replaced_one_at_a_time_and_relays_with_room_to_spare() {
    let template = service_template();
    let service = |id: &str| &resource(&template, id)["Properties"];
    for id in ["Origin1Service", "Origin2Service"] {
        assert_eq!(service(id)["DesiredCount"], 1);
        assert_eq!(
            service(id)["DeploymentConfiguration"],
            json!({
                "MinimumHealthyPercent": 0,
                "MaximumPercent": 100,
                "DeploymentCircuitBreaker": { "Enable": true, "Rollback": true }
            }),
            "{id}"
        );
    }
    assert_eq!(
        resource(&template, "Origin2Service")["DependsOn"],
        json!(["Data", "Origin2Listener", "Origin1Service"])
    );
    // The relays start (and are updated) once both origins are stable, so they
    // find an upstream ready and are never newer than the origins they read.
    assert_eq!(
        resource(&template, "RelayService")["DependsOn"],
        json!(["ClientListener", "Origin2Service"])
    );
    assert_eq!(
        service("RelayService")["DeploymentConfiguration"],
        json!({
            "MinimumHealthyPercent": 100,
            "MaximumPercent": 200,
            "DeploymentCircuitBreaker": { "Enable": true, "Rollback": true }
        })
    );
    for id in ["Origin1Service", "Origin2Service", "RelayService"] {
        assert_eq!(service(id)["LaunchType"], "FARGATE");
        let network = &service(id)["NetworkConfiguration"]["AwsvpcConfiguration"];
        assert_eq!(
            network["Subnets"],
            json!({ "Ref": "PrivateSubnetIds" }),
            "{id}"
        );
    }
    assert_eq!(
        resource(&template, "Cluster")["Properties"]["ClusterSettings"],
        json!([{ "Name": "containerInsights", "Value": "enabled" }])
    );
}

#[test]
fn relays_scale_on_cpu_between_the_min_and_max_counts() {
    let template = service_template();
    assert_eq!(
        resource(&template, "RelayScalableTarget")["Properties"],
        json!({
            "ServiceNamespace": "ecs",
            "ScalableDimension": "ecs:service:DesiredCount",
            "ResourceId": { "Fn::Sub": "service/${Cluster}/${RelayService.Name}" },
            "MinCapacity": { "Ref": "RelayMinCount" },
            "MaxCapacity": { "Ref": "RelayMaxCount" }
        })
    );
    let policy = &resource(&template, "RelayCpuScaling")["Properties"];
    assert_eq!(policy["PolicyType"], "TargetTrackingScaling");
    assert_eq!(
        policy["ScalingTargetId"],
        json!({ "Ref": "RelayScalableTarget" })
    );
    let tracking = &policy["TargetTrackingScalingPolicyConfiguration"];
    assert_eq!(
        tracking["PredefinedMetricSpecification"]["PredefinedMetricType"],
        "ECSServiceAverageCPUUtilization"
    );
    assert_eq!(tracking["TargetValue"], json!({ "Ref": "RelayTargetCpu" }));
    // The relay service names no count: CloudFormation would set the service back
    // to it on every update, stopping every relay autoscaling had added (and
    // moving their clients at once). Registering the scalable target brings a new
    // service up to RelayMinCount; an update leaves the count alone.
    assert!(
        resource(&template, "RelayService")["Properties"]
            .get("DesiredCount")
            .is_none()
    );
    assert_eq!(
        of_type(&template, "AWS::ApplicationAutoScaling::ScalingPolicy"),
        ["RelayCpuScaling"],
        "the origins are never scaled"
    );
}
