//! Least privilege, read from the service template itself (no moto): who may do
//! what in AWS. Each role's statements are compared whole with the expected ones,
//! so an added action, resource or statement fails here first.

use configwatch_test_support::moto_ecs::service_template;
use configwatch_test_support::moto_stack::TEMPLATE;
use serde_json::{Value, json};

use crate::{of_type, resource};

/// The statements of a role's one inline policy; asserts it has no other policy.
fn statements<'a>(template: &'a Value, role: &str) -> &'a Vec<Value> {
    let properties = &resource(template, role)["Properties"];
    assert!(
        properties.get("ManagedPolicyArns").is_none(),
        "{role} has managed policies"
    );
    assert!(properties.get("PermissionsBoundary").is_none());
    let policies = properties["Policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{role} has one inline policy");
    policies[0]["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap()
}

/// Only ECS tasks of this account may take a role.
fn assert_trusts_only_ecs_tasks(template: &Value, role: &str) {
    assert_eq!(
        resource(template, role)["Properties"]["AssumeRolePolicyDocument"]["Statement"],
        json!([{
            "Effect": "Allow",
            "Principal": { "Service": "ecs-tasks.amazonaws.com" },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "aws:SourceAccount": { "Ref": "AWS::AccountId" } } }
        }]),
        "{role}"
    );
}

/// What origin `n` may do: the table, its stream, the parameters under the root,
/// SecureString encryption through SSM only, and its own queue.
fn origin_statements(queue: &str) -> Value {
    let arn = |rest: &str| json!({ "Fn::Sub": format!("arn:${{AWS::Partition}}:{rest}") });
    json!([
        {
            "Sid": "TenantTable",
            "Effect": "Allow",
            "Action": [
                "dynamodb:DescribeTable",
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem"
            ],
            "Resource": arn("dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}")
        },
        {
            "Sid": "TenantTableStream",
            "Effect": "Allow",
            "Action": [
                "dynamodb:DescribeStream",
                "dynamodb:GetShardIterator",
                "dynamodb:GetRecords",
                "dynamodb:ListStreams"
            ],
            "Resource": arn("dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}/stream/*")
        },
        {
            "Sid": "Parameters",
            "Effect": "Allow",
            "Action": [
                "ssm:GetParametersByPath",
                "ssm:GetParameter",
                "ssm:GetParameterHistory",
                "ssm:PutParameter",
                "ssm:DeleteParameter"
            ],
            "Resource": [
                arn("ssm:${AWS::Region}:${AWS::AccountId}:parameter${SsmRoot}"),
                arn("ssm:${AWS::Region}:${AWS::AccountId}:parameter${SsmRoot}/*")
            ]
        },
        {
            "Sid": "SecureStringDecrypt",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:Encrypt"],
            "Resource": "*",
            "Condition": {
                "StringEquals": { "kms:ViaService": { "Fn::Sub": "ssm.${AWS::Region}.amazonaws.com" } }
            }
        },
        {
            "Sid": "OwnChangeQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes"
            ],
            "Resource": arn(&format!("sqs:${{AWS::Region}}:${{AWS::AccountId}}:{queue}"))
        }
    ])
}

#[test]
fn the_relays_have_no_aws_access() {
    let template = service_template();
    let relay = &resource(&template, "RelayTaskDefinition")["Properties"];
    assert!(
        relay.get("TaskRoleArn").is_none(),
        "a relay task has no role, so its containers get no AWS credentials: {relay}"
    );
    // The relay's refresh token reaches it through ECS (the execution role), as an
    // environment variable: the container itself calls no AWS API for it.
    assert_eq!(
        crate::container(&template, "RelayTaskDefinition")["Secrets"],
        json!([{
            "Name": "CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN",
            "ValueFrom": { "Ref": "RelayRefreshTokenSecretArn" }
        }])
    );
    // No other role, policy or profile exists that could reach a relay.
    let iam: Vec<&String> = template["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str().unwrap().starts_with("AWS::IAM::"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(iam, ["ExecutionRole", "Origin1TaskRole", "Origin2TaskRole"]);
    for (task, role) in [
        ("Origin1TaskDefinition", Some("Origin1TaskRole")),
        ("Origin2TaskDefinition", Some("Origin2TaskRole")),
        ("RelayTaskDefinition", None),
    ] {
        let properties = &resource(&template, task)["Properties"];
        assert_eq!(
            properties["ExecutionRoleArn"],
            json!({ "Fn::GetAtt": ["ExecutionRole", "Arn"] })
        );
        let expected = role.map(|r| json!({ "Fn::GetAtt": [r, "Arn"] }));
        assert_eq!(properties.get("TaskRoleArn"), expected.as_ref(), "{task}");
    }
}

#[test]
fn each_origin_may_use_the_table_the_parameters_and_only_its_own_queue() {
    let template = service_template();
    for (role, queue, other) in [
        ("Origin1TaskRole", "${QueueName}", "${QueueName}-2"),
        ("Origin2TaskRole", "${QueueName}-2", "${QueueName}\""),
    ] {
        assert_trusts_only_ecs_tasks(&template, role);
        let statements = statements(&template, role);
        assert_eq!(json!(statements), origin_statements(queue), "{role}");
        let text = json!(statements).to_string();
        assert!(!text.contains(other), "{role} names another origin's queue");
        for statement in statements {
            assert_eq!(statement["Effect"], "Allow");
            if statement["Resource"] == "*" {
                assert_eq!(statement["Sid"], "SecureStringDecrypt", "{role}");
                assert!(
                    statement["Condition"]["StringEquals"]["kms:ViaService"].is_object(),
                    "{role}: KMS only through SSM"
                );
            }
        }
    }
}

/// The origins' roles allow what the data template's `ServerPolicy` allows (the
/// policy users of the data template alone attach), queue for queue: the two
/// templates cannot drift apart.
#[test]
fn the_origins_may_do_what_the_data_templates_server_policy_allows() {
    let template = service_template();
    let data: Value = serde_json::from_str(&std::fs::read_to_string(TEMPLATE).unwrap()).unwrap();
    let server = data["Resources"]["ServerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    let actions = |statements: &[Value], sid: &str| {
        statements
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no statement {sid}"))["Action"]
            .clone()
    };
    for role in ["Origin1TaskRole", "Origin2TaskRole"] {
        let origin = statements(&template, role);
        assert_eq!(origin.len(), server.len());
        for (sid, server_sid) in [
            ("TenantTable", "TenantTable"),
            ("TenantTableStream", "TenantTableStream"),
            ("Parameters", "Parameters"),
            ("SecureStringDecrypt", "SecureStringDecrypt"),
            ("OwnChangeQueue", "ChangeQueues"),
        ] {
            assert_eq!(
                actions(origin, sid),
                actions(server, server_sid),
                "{role} {sid}"
            );
        }
    }
    // The service template names the data stack's resources by the names it gives
    // them: the same parameters, passed through.
    let nested = &resource(&template, "Data")["Properties"]["Parameters"];
    for name in ["TableName", "SsmRoot", "QueueName", "MaxReceiveCount"] {
        assert_eq!(nested[name], json!({ "Ref": name }));
        assert_eq!(
            template["Parameters"][name]["Default"], data["Parameters"][name]["Default"],
            "{name}"
        );
    }
    assert_eq!(nested["OriginCount"], "2");
}

#[test]
fn the_execution_role_pulls_the_image_writes_the_logs_and_reads_only_the_relay_secret() {
    let template = service_template();
    assert_trusts_only_ecs_tasks(&template, "ExecutionRole");
    let log_group = |id: &str| json!({ "Fn::GetAtt": [id, "Arn"] });
    assert_eq!(
        json!(statements(&template, "ExecutionRole")),
        json!([
            {
                "Sid": "PullImage",
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage"
                ],
                "Resource": "*"
            },
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [
                    log_group("Origin1LogGroup"),
                    log_group("Origin2LogGroup"),
                    log_group("RelayLogGroup")
                ]
            },
            {
                "Sid": "RelayRefreshToken",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": { "Ref": "RelayRefreshTokenSecretArn" }
            }
        ])
    );
    assert_eq!(
        of_type(&template, "AWS::Logs::LogGroup"),
        ["Origin1LogGroup", "Origin2LogGroup", "RelayLogGroup"]
    );
}
