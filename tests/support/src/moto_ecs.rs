//! The service template (deploy/configwatch-ecs.cfn.json) deployed on moto's
//! CloudFormation as `aws cloudformation package` and `deploy` deploy it: the data
//! template uploaded to an S3 bucket and the nested stack's `TemplateURL` rewritten to
//! its URL; the VPC and subnets it runs in made first, by a stack of their own; and
//! what moto made, read from moto's own state (`/moto-api/data.json`) for the
//! services the suite has no SDK client for (ECS, Elastic Load Balancing, EC2,
//! CloudWatch Logs), so that no large SDK crate is built for a few reads.
//!
//! moto's CloudFormation (5.2) makes every load balancer an application load
//! balancer (it ignores `Type: network`), whose listeners take HTTP and HTTPS only:
//! it refuses the template's TCP and TLS listeners. [`for_moto`] removes the
//! listeners (and the services' `DependsOn` on them) before deploying; the suite
//! reads them from the template instead. Everything else is deployed as written.
//!
//! Boundary: extends [`Moto`] with S3 (by plain HTTP), moto's state and the
//! service template's deployment; knows the template's path, its nested stack's
//! logical id and which of its parameters name the network; nothing of
//! configwatch's code.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::moto::Moto;
use crate::moto_stack::{Stack, TEMPLATE};

/// The service template, as deployed.
pub const SERVICE_TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/configwatch-ecs.cfn.json"
);

/// The bucket `aws cloudformation package` is given (`--s3-bucket`).
const BUCKET: &str = "configwatch-templates";

/// The service template's nested data stack.
pub const DATA_STACK: &str = "Data";

/// The service template as JSON.
pub fn service_template() -> Value {
    let text = std::fs::read_to_string(SERVICE_TEMPLATE).expect("read the service template");
    serde_json::from_str(&text).expect("the service template is JSON")
}

/// Removes from `template` the resources moto's CloudFormation cannot make (the
/// load balancers' listeners, see the module's doc) and every `DependsOn` naming
/// them; returns their logical ids.
pub fn for_moto(template: &mut Value) -> Vec<String> {
    let resources = template["Resources"]
        .as_object_mut()
        .expect("the template's resources");
    let removed: Vec<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::ElasticLoadBalancingV2::Listener")
        .map(|(id, _)| id.clone())
        .collect();
    for id in &removed {
        resources.remove(id);
    }
    for resource in resources.values_mut() {
        let Some(depends) = resource.get_mut("DependsOn") else {
            continue;
        };
        let kept: Vec<Value> = match depends.take() {
            Value::String(one) => vec![Value::String(one)],
            Value::Array(many) => many,
            other => panic!("DependsOn is {other}"),
        };
        *depends = kept
            .into_iter()
            .filter(|d| !removed.iter().any(|r| d == r.as_str()))
            .collect();
    }
    removed
}

/// A VPC for the service: two private and two public subnets, in two zones.
#[derive(Debug, Clone)]
pub struct Network {
    pub vpc: String,
    pub private: Vec<String>,
    pub public: Vec<String>,
}

/// moto's state: every model of every backend, as moto serialises them.
#[derive(Debug, Clone)]
pub struct MotoState(pub Value);

impl MotoState {
    /// The models of one kind: `service` as moto names its backends (`ecs`,
    /// `elbv2`, `ec2`, `logs`), `model` as it names their classes.
    pub fn models(&self, service: &str, model: &str) -> Vec<&Value> {
        self.0[service][model]
            .as_array()
            .map(|all| all.iter().collect())
            .unwrap_or_default()
    }

    /// The model made for the CloudFormation resource with `physical_id`.
    pub fn resource(&self, service: &str, model: &str, physical_id: &str) -> &Value {
        self.models(service, model)
            .into_iter()
            .find(|m| m["physical_resource_id"] == physical_id)
            .unwrap_or_else(|| panic!("moto has no {service} {model} {physical_id}"))
    }
}

impl Moto {
    /// moto's address, for plain HTTP.
    fn addr(&self) -> SocketAddr {
        let host = self
            .endpoint
            .strip_prefix("http://")
            .expect("moto's endpoint is http://");
        host.parse().expect("moto's endpoint is an address")
    }

    /// Puts `body` as object `key` of `bucket` (made if missing) in moto's S3, by
    /// path-style requests; moto takes the service from the credential scope and
    /// does not check signatures.
    pub async fn put_object(&self, bucket: &str, key: &str, body: &str) {
        let authorization = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0";
        let headers = [("Authorization", authorization)];
        for (path, body) in [
            (format!("/{bucket}"), ""),
            (format!("/{bucket}/{key}"), body),
        ] {
            let answer = crate::http::http_request(self.addr(), "PUT", &path, &headers, body).await;
            assert!(
                answer.status == 200 || answer.status == 409,
                "PUT {path}: {} {}",
                answer.status,
                answer.body
            );
        }
    }

    /// Everything moto holds (`GET /moto-api/data.json`).
    pub async fn state(&self) -> MotoState {
        let answer = crate::http::http_get(self.addr(), "/moto-api/data.json").await;
        assert_eq!(answer.status, 200, "moto's state: {}", answer.body);
        MotoState(serde_json::from_str(&answer.body).expect("moto's state is JSON"))
    }

    /// Makes a VPC with two private and two public subnets (stack `network`).
    pub async fn network(&self) -> Network {
        let subnet = |cidr: &str, zone: &str| {
            json!({
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": { "Ref": "Vpc" },
                    "CidrBlock": cidr,
                    "AvailabilityZone": zone
                }
            })
        };
        let ids = |a: &str, b: &str| json!({ "Fn::Join": [",", [{ "Ref": a }, { "Ref": b }]] });
        let template = json!({
            "Resources": {
                "Vpc": { "Type": "AWS::EC2::VPC", "Properties": { "CidrBlock": "10.20.0.0/16" } },
                "PrivateA": subnet("10.20.0.0/24", "us-east-1a"),
                "PrivateB": subnet("10.20.1.0/24", "us-east-1b"),
                "PublicA": subnet("10.20.10.0/24", "us-east-1a"),
                "PublicB": subnet("10.20.11.0/24", "us-east-1b")
            },
            "Outputs": {
                "Vpc": { "Value": { "Ref": "Vpc" } },
                "Private": { "Value": ids("PrivateA", "PrivateB") },
                "Public": { "Value": ids("PublicA", "PublicB") }
            }
        });
        let stack = self
            .create_stack("network", &template.to_string(), &[])
            .await;
        let list = |name: &str| {
            stack
                .output(name)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        Network {
            vpc: stack.output("Vpc").to_owned(),
            private: list("Private"),
            public: list("Public"),
        }
    }

    /// Deploys the service template as stack `name` in `network` with
    /// `parameters`, as `aws cloudformation package` + `deploy` would: the data
    /// template uploaded to S3 and the nested stack pointed at it; minus what
    /// [`for_moto`] removes.
    pub async fn deploy_service(
        &self,
        name: &str,
        network: &Network,
        parameters: &[(&str, &str)],
    ) -> Stack {
        let data = std::fs::read_to_string(TEMPLATE).expect("read the data template");
        let key = "configwatch.cfn.json";
        self.put_object(BUCKET, key, &data).await;
        let mut template = service_template();
        let nested = &mut template["Resources"][DATA_STACK]["Properties"]["TemplateURL"];
        assert_eq!(
            nested, "configwatch.cfn.json",
            "the local path package uploads"
        );
        *nested = json!(format!("https://{BUCKET}.s3.amazonaws.com/{key}"));
        for_moto(&mut template);

        let private = network.private.join(",");
        let public = network.public.join(",");
        let mut all = vec![
            ("VpcId", network.vpc.as_str()),
            ("PrivateSubnetIds", private.as_str()),
            ("PublicSubnetIds", public.as_str()),
        ];
        all.extend_from_slice(parameters);
        self.create_stack(name, &template.to_string(), &all).await
    }
}
