//! Service scope and tenant isolation on the AWS backends (moto): a service token's
//! writes land in its own DynamoDB partition and Parameter Store subtree, it reads
//! only those, and no token reaches another tenant's items or parameters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::keys;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::store::dynamodb::DynamoBackend;
use configwatch::store::ssm::SsmBackend;
use configwatch::store::{Backend, Router};
use configwatch_test_support::moto::{Moto, ROOT};
use tonic::Code;

fn keys_of(r: proto::GetResponse) -> Vec<String> {
    r.entries.into_iter().map(|e| e.key).collect()
}

/// The parameter at `{ROOT}/{path}`, which must exist.
async fn parameter(ssm: &aws_sdk_ssm::Client, path: &str) -> aws_sdk_ssm::types::Parameter {
    ssm.get_parameter()
        .name(format!("{ROOT}/{path}"))
        .send()
        .await
        .unwrap()
        .parameter
        .unwrap()
}

#[tokio::test]
async fn service_tokens_stay_in_their_partition_and_subtree_and_tenants_never_meet() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(1)).await;
    let ddb = moto.dynamodb().await;
    let ssm = moto.ssm().await;
    let router = Router::new(vec![
        (
            &keys::TENANT_CONFIG,
            Arc::new(DynamoBackend::new(ddb.clone(), &res.table)) as Arc<dyn Backend>,
        ),
        (
            &keys::PARAM_CONFIG,
            Arc::new(SsmBackend::new(ssm.clone(), ROOT)),
        ),
    ]);
    let dir = temp_dir();
    let server = TestServer::start_routed(dir.path(), router, Options::default()).await;
    let (key, _) = LocalKey::load_or_create(dir.path()).unwrap();
    let token = |tenant: &str, service: Option<&str>, role| {
        key.issue(
            &Scope::new(tenant, service).unwrap(),
            role,
            Duration::from_secs(600),
            "t",
        )
        .unwrap()
    };
    let mut orders = connect(
        server.addr,
        Some(&token("acme", Some("orders"), Role::Writer)),
    )
    .await;
    let mut billing = connect(
        server.addr,
        Some(&token("acme", Some("billing"), Role::Writer)),
    )
    .await;
    let mut acme = connect(server.addr, Some(&token("acme", None, Role::Writer))).await;
    let mut globex = connect(server.addr, Some(&token("globex", None, Role::Writer))).await;

    put(&mut orders, "tenant_config_payment", "{\"provider\":\"x\"}").await;
    put(&mut orders, "param_config_db/url", "\"postgres://orders\"").await;
    put(&mut acme, "tenant_config_shared", "true").await;
    put(&mut globex, "tenant_config_payment", "{\"provider\":\"g\"}").await;
    put(&mut globex, "param_config_db/url", "\"postgres://globex\"").await;

    // Where the writes landed.
    let item = ddb
        .get_item()
        .table_name(&res.table)
        .key("pk", AttributeValue::S("TENANT#acme|SERVICE#orders".into()))
        .key("sk", AttributeValue::S("CONFIG#payment".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the service's item is in its own partition");
    assert_eq!(item["version"], AttributeValue::N("1".into()));
    let p = parameter(&ssm, "acme/orders/db/url").await;
    assert_eq!(p.value(), Some("postgres://orders"));
    let p = parameter(&ssm, "globex/db/url").await;
    assert_eq!(p.value(), Some("postgres://globex"));

    // Who sees what.
    let seen = keys_of(
        orders
            .get(proto::GetRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(seen, ["param_config_db/url", "tenant_config_payment"]);
    let seen = keys_of(
        billing
            .get(proto::GetRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(seen.is_empty(), "billing sees nothing of orders: {seen:?}");
    let got = orders
        .get(proto::GetRequest {
            keys: vec!["param_config_db/url".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entries[0].value, "\"postgres://orders\"");
    let got = globex
        .get(proto::GetRequest {
            keys: vec!["param_config_db/url".into(), "tenant_config_shared".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys_of(got.clone()), ["param_config_db/url"]);
    assert_eq!(got.entries[0].value, "\"postgres://globex\"");
    assert_eq!(got.missing_keys, ["tenant_config_shared"]);

    // Keys that try to climb out of the subtree are refused before any AWS call.
    for bad in [
        "param_config_../../globex/db/url",
        "param_config_%2e%2e/globex/db/url",
        "param_config_/config-service/globex/db/url",
        "tenant_config_x|SERVICE#orders",
    ] {
        let err = billing
            .put(proto::PutRequest {
                key: bad.into(),
                value: "\"x\"".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
    // Naming another tenant in the request is refused, whatever the service.
    let err = orders
        .get(proto::GetRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // globex's parameter is untouched by everything above.
    let p = parameter(&ssm, "globex/db/url").await;
    assert_eq!(p.version, 1);
    server.stop().await;
}
