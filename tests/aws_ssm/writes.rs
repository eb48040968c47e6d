//! Writes through configwatch landing in SSM with versions and compare-and-set, and
//! tenants loaded through every page of SSM.

use super::*;

fn conflict_version(status: &tonic::Status) -> u64 {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .metadata()
        .get(CURRENT_VERSION_METADATA)
        .expect("current version metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn put_expecting(
    c: &mut Client,
    key: &str,
    value: &str,
    expected: Option<u64>,
    secret: bool,
) -> Result<proto::Entry, tonic::Status> {
    c.put(proto::PutRequest {
        key: key.into(),
        value: value.into(),
        expected_version: expected,
        secret,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().entry.unwrap())
}

async fn delete_expecting(
    c: &mut Client,
    key: &str,
    expected: Option<u64>,
) -> Result<proto::Entry, tonic::Status> {
    c.delete(proto::DeleteRequest {
        key: key.into(),
        expected_version: expected,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().entry.unwrap())
}

#[tokio::test]
async fn puts_and_deletes_through_configwatch_land_in_ssm_with_versions_and_conflicts_are_refused()
{
    let env = start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    let key = "param_config_db/url";
    let url = name("acme/db/url");

    let v1 = put_expecting(&mut c, key, "\"a\"", Some(0), false)
        .await
        .unwrap();
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::String, "a".into(), v1.version))
    );
    let v2 = put_expecting(&mut c, key, "\"b\"", Some(v1.version), false)
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(v2.value, "\"b\"");

    // Stale and create-only writes are refused and change nothing.
    let stale = put_expecting(&mut c, key, "\"c\"", Some(v1.version), false)
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&stale), v2.version);
    let exists = put_expecting(&mut c, key, "\"c\"", Some(0), false)
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&exists), v2.version);
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::String, "b".into(), v2.version))
    );

    // A list, and a type change from String to StringList.
    put(&mut c, "param_config_db/hosts", "[\"h1\", \"h2\"]").await;
    assert_eq!(
        env.param(&name("acme/db/hosts")).await.map(|p| (p.0, p.1)),
        Some((ParameterType::StringList, "h1,h2".into()))
    );
    let v3 = put_expecting(&mut c, key, "[\"x\",\"y\"]", Some(v2.version), false)
        .await
        .unwrap();
    assert_eq!(
        env.param(&url).await,
        Some((ParameterType::StringList, "x,y".into(), v3.version))
    );

    // A secret: SecureString in SSM, never in the response, read by Get.
    let secret = put_expecting(&mut c, "param_config_db/password", "\"pw\"", None, true)
        .await
        .unwrap();
    assert!(secret.secret && secret.value.is_empty());
    assert_eq!(
        env.param(&name("acme/db/password")).await,
        Some((ParameterType::SecureString, "pw".into(), secret.version))
    );
    let read = get_key(&mut c, "param_config_db/password").await;
    assert_eq!(read.entries[0].value, "\"pw\"");

    // Deletes: compare-and-set, then a tombstone above the last version.
    let stale = delete_expecting(&mut c, key, Some(v2.version))
        .await
        .unwrap_err();
    assert_eq!(conflict_version(&stale), v3.version);
    assert!(env.param(&url).await.is_some());
    let gone = delete_expecting(&mut c, key, Some(v3.version))
        .await
        .unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.version, v3.version + 1);
    assert_eq!(env.param(&url).await, None);
    let missing = delete_expecting(&mut c, key, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = put_expecting(&mut c, key, "\"d\"", Some(gone.version), false)
        .await
        .unwrap_err();
    assert_eq!(
        conflict_version(&missing),
        0,
        "a deleted key counts as absent"
    );

    // Created again: SSM's Version restarts, configwatch's keeps growing.
    let again = put_expecting(&mut c, key, "\"d\"", Some(0), false)
        .await
        .unwrap();
    assert!(again.version > gone.version);
    assert_eq!(env.param(&url).await.map(|p| p.2 % 1024), Some(1));
    env.stop().await;
}

#[tokio::test]
async fn a_tenant_loads_through_every_page_and_only_its_own_valid_names() {
    let env = start().await;
    for i in 0..23 {
        env.put_param(&name(&format!("acme/p/{i:02}")), "v", ParameterType::String)
            .await;
    }
    env.put_param(&name("acme/db/password"), "pw", ParameterType::SecureString)
        .await;
    let too_deep = name(&format!("acme/{}", ["d"; 13].join("/")));
    env.put_param(&too_deep, "v", ParameterType::String).await;
    env.put_param(&name("acme2/x"), "v", ParameterType::String)
        .await;
    env.put_param(&name("other/x"), "v", ParameterType::String)
        .await;
    env.put_param("/elsewhere/acme/x", "v", ParameterType::String)
        .await;

    let acme = Scope::tenant("acme").unwrap();
    let loaded = env.backend.load(&acme, "param_config_").await.unwrap();
    let keys: BTreeSet<String> = loaded.iter().map(|e| e.key.to_string()).collect();
    let mut expected: BTreeSet<String> =
        (0..23).map(|i| format!("param_config_p/{i:02}")).collect();
    expected.insert("param_config_db/password".into());
    assert_eq!(keys, expected);
    let secret = loaded.iter().find(|e| e.secret).expect("the SecureString");
    assert!(secret.value.is_none(), "loaded without its value");
    assert!(
        env.backend
            .load(&acme, "tenant_config_")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.backend
            .load(&acme, "param_config_p/1")
            .await
            .unwrap()
            .len(),
        10
    );

    let mut c = env.server.client("acme", Role::Reader).await;
    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 24);
    env.stop().await;
}
