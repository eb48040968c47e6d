//! A full disk on a small tmpfs (needs root): writes fail with UNAVAILABLE, health
//! says NOT_SERVING, and both recover without a restart.

use super::*;

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = temp_dir();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_unavailable_and_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount("2m") else {
        println!("SKIPPED: mounting a tmpfs needs root (mount -t tmpfs); this test did not run");
        return;
    };
    let dir = fs.path.join("data");
    let server = TestServer::start(&dir).await;
    let mut writer = server.client("a", Role::Writer).await;
    let mut bystander = server.client("b", Role::Writer).await;
    put(&mut bystander, "tenant_config_kept", "\"b\"").await;
    let mut bw = watch(&mut bystander, proto::WatchRequest::default()).await;
    initial(&mut bw).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;

    // Fill the disk.
    let filler = fs.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Writes fail with UNAVAILABLE (the first may fit in pages redb already has).
    let big = format!("\"{}\"", "v".repeat(100_000));
    let mut failure = None;
    for i in 0..50 {
        let r = writer
            .put(proto::PutRequest {
                key: format!("tenant_config_big{i}"),
                value: big.clone(),
                ..Default::default()
            })
            .await;
        if let Err(s) = r {
            failure = Some(s);
            break;
        }
    }
    let failure = failure.expect("a write failed on the full disk");
    println!("full disk: {}", failure.message());
    assert_eq!(failure.code(), Code::Unavailable, "{failure:?}");
    assert!(failure.message().contains("disk is full"), "{failure:?}");
    assert!(failure.message().contains("retry"), "{failure:?}");
    // Every later write too, for every tenant, at once and with the same answer.
    let small = writer
        .put(proto::PutRequest {
            key: "tenant_config_small".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(small.code(), Code::Unavailable, "{small:?}");
    wait_for_health(server.addr, ServingStatus::NotServing).await;
    // The bystander still reads.
    let kept = get_all(&mut bystander).await.unwrap();
    assert_eq!(kept.entries[0].value, "\"b\"");

    // Space comes back: writes work again by themselves.
    std::fs::remove_file(&filler).unwrap();
    let entry = eventually(
        PATIENCE,
        || "writes to work again (each refusal meanwhile UNAVAILABLE)".into(),
        || {
            let mut writer = writer.clone();
            async move {
                match writer
                    .put(proto::PutRequest {
                        key: "tenant_config_small".into(),
                        value: "2".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => Some(r.into_inner().entry.unwrap()),
                    Err(s) => {
                        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                        None
                    }
                }
            }
        },
    )
    .await;
    assert_eq!(entry.version, 1);
    wait_for_health(server.addr, ServingStatus::Serving).await;
    // The bystander's watch sees its own next write.
    put(&mut bystander, "tenant_config_kept", "\"b2\"").await;
    let change = changes(&mut bw, 1).await;
    assert_eq!(change[0].value, "\"b2\"");
    server.stop().await;
    drop(fs);
}
