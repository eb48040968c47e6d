//! The embedded store end to end: versions across deletes and reopens, secrets,
//! records and their checks, format-1 stores, lost and replaced databases,
//! identities.

use super::record::RECORD_V1;
use super::*;
use crate::store::history::Audit;
use crate::store::identity;
use crate::store::{Backend, Write};

fn put(v: &str) -> Write {
    Write::Put {
        value: v.to_owned(),
        secret: false,
    }
}

#[tokio::test]
async fn versions_grow_through_deletes_and_survive_reopen() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let a = Scope::tenant("a")?;
    let b = Scope::tenant("b")?;
    {
        let store = EmbeddedStore::open(dir.path())?;
        let e1 = store
            .write(&a, "tenant_config_x", put("1"), None, &Audit::default())
            .await?;
        assert_eq!(e1.version, 1);
        let e2 = store
            .write(&a, "tenant_config_x", put("2"), Some(1), &Audit::default())
            .await?;
        assert_eq!(e2.version, 2);
        let conflict = store
            .write(&a, "tenant_config_x", put("3"), Some(1), &Audit::default())
            .await;
        assert_eq!(
            conflict,
            Err(StoreError::Conflict {
                key: "tenant_config_x".into(),
                expected: 1,
                current: 2
            })
        );
        let gone = store
            .write(
                &a,
                "tenant_config_x",
                Write::Delete,
                None,
                &Audit::default(),
            )
            .await?;
        assert!(gone.deleted && gone.version == 3);
        assert_eq!(
            store
                .write(
                    &a,
                    "tenant_config_x",
                    Write::Delete,
                    None,
                    &Audit::default()
                )
                .await,
            Err(StoreError::NotFound("tenant_config_x".into()))
        );
        // A deleted key counts as absent for compare-and-set, and keeps counting up.
        let again = store
            .write(&a, "tenant_config_x", put("4"), Some(0), &Audit::default())
            .await?;
        assert_eq!(again.version, 4);
        store
            .write(&b, "tenant_config_x", put("\"b\""), None, &Audit::default())
            .await?;
    }
    let store = EmbeddedStore::open(dir.path())?;
    let loaded = store.load(&a, "").await?;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].version, 4);
    assert_eq!(loaded[0].value.as_deref(), Some("4"));
    let other = store.load(&b, "tenant_config_").await?;
    assert_eq!(other[0].value.as_deref(), Some("\"b\""));
    assert!(store.load(&a, "param_config_").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn secrets_are_withheld_except_on_demand() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let s = Scope::tenant("a")?;
    let w = Write::Put {
        value: "\"hunter2\"".into(),
        secret: true,
    };
    let e = store
        .write(&s, "param_config_db/password", w, None, &Audit::default())
        .await?;
    assert!(e.secret && e.value.is_none());
    assert!(store.load(&s, "").await?[0].value.is_none());
    let read = store.read(&s, "param_config_db/password", true).await?;
    assert_eq!(read.and_then(|e| e.value).as_deref(), Some("\"hunter2\""));
    let withheld = store.read(&s, "param_config_db/password", false).await?;
    assert!(withheld.is_some_and(|e| e.secret && e.value.is_none()));
    assert_eq!(store.read(&s, "param_config_never", true).await?, None);
    Ok(())
}

#[test]
fn a_second_process_gets_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let _first = EmbeddedStore::open(dir.path())?;
    match EmbeddedStore::open(dir.path()) {
        Err(OpenError::InUse { .. }) => Ok(()),
        Err(other) => Err(format!("unexpected error: {other}").into()),
        Ok(_) => Err("opened twice".into()),
    }
}

#[tokio::test]
async fn a_data_directory_that_lost_its_database_is_refused()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let s = Scope::tenant("a")?;
    let first_id = {
        let store = EmbeddedStore::open(dir.path())?;
        store
            .write(&s, "tenant_config_x", put("1"), None, &Audit::default())
            .await?;
        store.id().to_owned()
    };
    assert_eq!(
        identity::read_marker(dir.path())?.map(|m| m.to_string()),
        Some(first_id.clone())
    );
    // Reopening keeps the identity.
    assert_eq!(EmbeddedStore::open(dir.path())?.id(), first_id);
    let db_path = dir.path().join(DB_FILE);
    let saved = std::fs::read(&db_path)?;

    for (damage, state) in [("delete", "missing"), ("truncate", "empty")] {
        if damage == "delete" {
            std::fs::remove_file(&db_path)?;
        } else {
            std::fs::write(&db_path, b"")?;
        }
        match EmbeddedStore::open(dir.path()) {
            Err(e @ OpenError::Lost { .. }) => {
                let text = e.to_string();
                assert!(text.contains(state), "{text}");
                assert!(text.contains("--new-store"), "{text}");
                assert!(text.contains(&first_id), "{text}");
            }
            Err(other) => return Err(format!("unexpected error: {other}").into()),
            Ok(_) => return Err(format!("opened a {state} database").into()),
        }
        std::fs::write(&db_path, &saved)?;
    }

    // A database of another store in its place.
    let other = tempfile::tempdir()?;
    drop(EmbeddedStore::open(other.path())?);
    std::fs::copy(other.path().join(DB_FILE), &db_path)?;
    match EmbeddedStore::open(dir.path()) {
        Err(e @ OpenError::Replaced { .. }) => {
            assert!(e.to_string().contains("replaced"), "{e}")
        }
        Err(other) => return Err(format!("unexpected error: {other}").into()),
        Ok(_) => return Err("opened a replaced database".into()),
    }

    // Starting afresh on purpose gives a new identity.
    std::fs::remove_file(&db_path)?;
    let opts = OpenOptions {
        new_store: true,
        ..OpenOptions::default()
    };
    let fresh = EmbeddedStore::open_with(dir.path(), &opts)?;
    assert_ne!(fresh.id(), first_id);
    assert!(fresh.load(&s, "").await?.is_empty());
    drop(fresh);
    // ... which is then kept: the flag does nothing to an intact store.
    let id = identity::read_marker(dir.path())?.map(|m| m.to_string());
    assert_eq!(
        EmbeddedStore::open_with(dir.path(), &opts)?.id(),
        id.as_deref().unwrap_or("")
    );
    Ok(())
}

#[test]
fn a_signing_key_without_a_database_is_a_lost_database() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("signing-key.pem");
    std::fs::write(&key, "key")?;
    let opts = OpenOptions {
        new_store: false,
        initialised_by: vec![key],
    };
    match EmbeddedStore::open_with(dir.path(), &opts) {
        Err(e @ OpenError::Lost { .. }) => {
            assert!(e.to_string().contains("signing-key.pem exists"), "{e}")
        }
        Err(other) => return Err(format!("unexpected error: {other}").into()),
        Ok(_) => return Err("opened".into()),
    }
    Ok(())
}

#[tokio::test]
async fn a_store_from_before_identities_adopts_one_and_keeps_its_records()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(DB_FILE);
    // A database as configwatch wrote it before: format 1, no identity.
    {
        let db = Database::create(&path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?.insert(FORMAT_KEY, 1)?;
            let mut v1 = vec![RECORD_V1, 0];
            v1.extend_from_slice(&2u64.to_le_bytes());
            v1.extend_from_slice(&5i64.to_le_bytes());
            v1.extend_from_slice(b"\"old\"");
            txn.open_table(ENTRIES)?
                .insert(("a", "", "tenant_config_x"), v1.as_slice())?;
        }
        txn.commit()?;
    }
    std::fs::write(dir.path().join("signing-key.pem"), "key")?;
    let opts = OpenOptions {
        new_store: false,
        initialised_by: vec![dir.path().join("signing-key.pem")],
    };
    let store = EmbeddedStore::open_with(dir.path(), &opts)?;
    assert!(store.verify_report().is_clean());
    let id = store.id().to_owned();
    let s = Scope::tenant("a")?;
    let loaded = store.load(&s, "").await?;
    assert_eq!(loaded[0].value.as_deref(), Some("\"old\""));
    // Written again, it continues its versions in format 2.
    let e = store
        .write(
            &s,
            "tenant_config_x",
            put("\"new\""),
            Some(2),
            &Audit::default(),
        )
        .await?;
    assert_eq!(e.version, 3);
    drop(store);
    let store = EmbeddedStore::open_with(dir.path(), &opts)?;
    assert_eq!(store.id(), id);
    assert_eq!(
        store.load(&s, "").await?[0].value.as_deref(),
        Some("\"new\"")
    );
    Ok(())
}
