//! The whole service on ECS from one stack (deploy/configwatch-ecs.cfn.json):
//!
//! - `on_moto`: the stack deployed on moto's CloudFormation as `aws cloudformation
//!   package` + `deploy` deploy it (the data template nested from S3), with the
//!   cluster, services, task definitions, target groups, load balancers, security
//!   group rules, log groups, roles and outputs moto made asserted.
//! - `privilege`: least privilege, read from the template itself: the relays have
//!   no AWS access, each origin exactly its listed actions on its listed resources
//!   (its own queue only), the execution role only the image, the logs and the one
//!   secret.
//! - `network`: what moto cannot show, read from the template: the admin port never
//!   open to clients, the listeners and target groups, how the services are
//!   replaced and drained, the relays' autoscaling.
//! - `tasks`: an origin's task definition run as a `configwatch serve` process
//!   against moto, reading its own queue; every variable and flag a container sets
//!   is one the server reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod network;
mod on_moto;
mod privilege;
mod tasks;

use serde_json::Value;

/// Resource `id` of `template`; panics naming it when there is none.
fn resource<'a>(template: &'a Value, id: &str) -> &'a Value {
    let resource = &template["Resources"][id];
    assert!(resource.is_object(), "the template has no resource {id}");
    resource
}

/// The one container of task definition `id`.
fn container<'a>(template: &'a Value, id: &str) -> &'a Value {
    let containers = resource(template, id)["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{id} runs one container");
    &containers[0]
}

/// The logical ids of `template`'s resources of `kind`, sorted.
fn of_type(template: &Value, kind: &str) -> Vec<String> {
    let mut ids: Vec<String> = template["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

/// A duration flag's value (`20s`, `30m`) in seconds.
fn seconds(value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 1);
    let number: u64 = number.parse().unwrap();
    match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => panic!("not a duration: {value}"),
    }
}

/// The value of environment variable `name` in container definition `container`
/// (CloudFormation's spelling, `Environment`/`Name`/`Value`).
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == name)
        .map(|e| &e["Value"])
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}
