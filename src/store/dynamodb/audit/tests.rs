use super::*;

fn pk() -> AttributeValue {
    s("TENANT#acme|SERVICE#orders")
}

#[test]
fn history_sort_keys_sort_by_version_and_stay_inside_their_key()
-> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(
        history_sort_key("tenant_config_db/url", 7)?,
        "AUDIT#db/url#00000000000000000007"
    );
    assert_eq!(
        history_sort_key("tenant_config_a", u64::MAX)?,
        "AUDIT#a#18446744073709551615"
    );
    // Zero padding: text order is version order.
    assert!(history_sort_key("tenant_config_a", 9)? < history_sort_key("tenant_config_a", 10)?);
    // One key's prefix never starts another key's items.
    assert!(
        !history_sort_key("tenant_config_ab", 1)?.starts_with(&history_prefix("tenant_config_a")?)
    );
    assert!(history_prefix("param_config_a").is_err());
    assert_eq!(
        parse_history_sort_key("AUDIT#db/url#00000000000000000007")?,
        ("db/url", 7)
    );
    for bad in [
        "AUDIT#a#7",
        "AUDIT#a",
        "CONFIG#a",
        "AUDIT#a#0000000000000000000x",
    ] {
        assert!(parse_history_sort_key(bad).is_err(), "{bad}");
    }
    assert!(is_history_sort_key("AUDIT#a#00000000000000000001"));
    assert!(!is_history_sort_key("CONFIG#a"));
    Ok(())
}

#[test]
fn a_write_through_configwatch_reads_back_with_its_writer() -> Result<(), Box<dyn std::error::Error>>
{
    let entry = Entry::live("tenant_config_flags", 3, r#"{"on":true,"n":1.50}"#, 0);
    let recorded = Recorded::of_entry(&entry, 2, "2026-01-02T03:04:05Z".into())?;
    let audit = Audit {
        subject: "alice".into(),
        client_id: Some("app-1".into()),
        instance: "origin-1".into(),
        reason: Some("turn it on".into()),
    };
    let item = history_item(
        &pk(),
        "tenant_config_flags",
        &recorded,
        &Source::Api(audit.clone()),
    )?;
    assert_eq!(item.get("sk"), Some(&s("AUDIT#flags#00000000000000000003")));
    assert_eq!(item.get("previous"), Some(&n(2)));
    assert!(
        !item.contains_key("expiresAt"),
        "a new version never expires"
    );
    let (scope, version) = parse_history_item(&item)?;
    assert_eq!(scope, Scope::new("acme", Some("orders"))?);
    assert_eq!(version.entry.key.as_ref(), "tenant_config_flags");
    assert_eq!(version.entry.version, 3);
    assert_eq!(
        version.entry.value.as_deref(),
        Some(r#"{"n":1.50,"on":true}"#)
    );
    assert_eq!(version.entry.updated_at, 1_767_323_045_000);
    assert_eq!(version.previous, 2);
    assert_eq!(version.source, Source::Api(audit));
    Ok(())
}

#[test]
fn an_external_delete_reads_back_as_a_tombstone_seen_by_its_instance()
-> Result<(), Box<dyn std::error::Error>> {
    let entry = Entry::tombstone("tenant_config_flags", 9, 0);
    let recorded = Recorded::of_entry(&entry, 8, "2026-01-02T03:04:05Z".into())?;
    let source = Source::External {
        instance: "origin-2".into(),
        modified_by: None,
    };
    let mut item = history_item(&pk(), "tenant_config_flags", &recorded, &source)?;
    assert!(!item.contains_key("config"));
    let (_, version) = parse_history_item(&item)?;
    assert!(version.entry.deleted && version.entry.value.is_none());
    assert_eq!((version.entry.version, version.previous), (9, 8));
    assert_eq!(version.source, source);
    item.insert("expiresAt".into(), n(1_800_000_000));
    assert_eq!(expires_at(&item)?, Some(1_800_000_000));
    // A version that is not the one its sort key names is refused.
    item.insert("version".into(), n(10));
    assert!(parse_history_item(&item).is_err());
    Ok(())
}
