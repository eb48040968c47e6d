//! Damaged records: flipped bytes and random garbage are reported by key and never
//! served.

use super::*;

/// Values written to `tenants` x `per` keys, each unique so its bytes can be found
/// in the database file.
fn value_of(t: usize, k: usize) -> String {
    format!("{{\"id\":\"value-{t:02}-{k:02}-{}\"}}", "x".repeat(40))
}

async fn write_reference(dir: &Path, tenants: usize, per: usize) -> String {
    let store = EmbeddedStore::open(dir).unwrap();
    use configwatch::store::history::Audit;
    use configwatch::store::{Backend, Write};
    for t in 0..tenants {
        let scope = Scope::tenant(&format!("t{t}")).unwrap();
        for k in 0..per {
            store
                .write(
                    &scope,
                    &format!("tenant_config_k{k:02}"),
                    Write::Put {
                        value: value_of(t, k),
                        secret: false,
                    },
                    None,
                    &Audit::default(),
                )
                .await
                .unwrap();
        }
    }
    store.id().to_owned()
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Opens a damaged copy, serves it, and reads every tenant: each answer is either
/// exactly what was written or DATA_LOSS. Returns the damaged keys reported.
async fn serve_damaged(
    dir: &Path,
    tenants: usize,
    per: usize,
) -> (BTreeMap<(String, String), String>, usize) {
    let store = match EmbeddedStore::open(dir) {
        Ok(store) => store,
        // Too damaged to open at all: refused cleanly, which is fine.
        Err(e) => {
            assert!(e.to_string().contains("damaged"), "{e}");
            return (BTreeMap::new(), tenants);
        }
    };
    let report = store.verify_report().clone();
    let damaged: BTreeMap<_, _> = report
        .damaged
        .iter()
        .map(|d| ((d.tenant.clone(), d.key.clone()), d.reason.clone()))
        .collect();
    let server =
        TestServer::start_routed(dir, Router::single(Arc::new(store)), Options::default()).await;
    let mut refused = 0;
    for t in 0..tenants {
        let tenant = format!("t{t}");
        let mut c = server.client(&tenant, Role::Reader).await;
        match get_all(&mut c).await {
            Ok(resp) => {
                assert_eq!(resp.entries.len(), per, "{tenant}: {resp:?}");
                for e in &resp.entries {
                    let k: usize = e.key["tenant_config_k".len()..].parse().unwrap();
                    assert_eq!(e.value, value_of(t, k), "{tenant} served a wrong value");
                    assert!(
                        !damaged.contains_key(&(tenant.clone(), e.key.clone())),
                        "{tenant}/{} was reported damaged yet served",
                        e.key
                    );
                }
            }
            Err(s) => {
                assert_eq!(s.code(), Code::DataLoss, "{tenant}: {s:?}");
                refused += 1;
            }
        }
    }
    server.stop().await;
    (damaged, refused)
}

#[tokio::test]
async fn flipped_bytes_are_reported_and_never_served() {
    let (tenants, per) = (4, 10);
    let reference = temp_dir();
    write_reference(reference.path(), tenants, per).await;
    let original = std::fs::read(reference.path().join(DB_FILE)).unwrap();

    // One byte flipped in the middle of 12 of the 40 values (every stored copy).
    let dir = temp_dir();
    let mut bytes = original.clone();
    let mut flipped = Vec::new();
    for n in 0..12 {
        let (t, k) = (n % tenants, (n * 3) % per);
        let at = find_all(&original, value_of(t, k).as_bytes());
        assert!(!at.is_empty(), "value {t}/{k} not found in the file");
        for i in at {
            bytes[i + 20] ^= 0x01;
        }
        flipped.push((format!("t{t}"), format!("tenant_config_k{k:02}")));
    }
    std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
    std::fs::copy(
        reference
            .path()
            .join(configwatch::store::identity::MARKER_FILE),
        dir.path().join(configwatch::store::identity::MARKER_FILE),
    )
    .unwrap();
    let (damaged, refused) = serve_damaged(dir.path(), tenants, per).await;
    for key in &flipped {
        assert!(
            damaged.contains_key(key),
            "{key:?} not reported: {damaged:?}"
        );
        assert!(damaged[key].contains("checksum"), "{:?}", damaged[key]);
    }
    assert_eq!(damaged.len(), flipped.len(), "{damaged:?}");
    assert_eq!(refused, tenants, "every tenant has a damaged key");
}

#[tokio::test]
async fn four_kib_of_random_bytes_never_panic_or_serve_wrong_values() {
    let (tenants, per) = (4, 10);
    let reference = temp_dir();
    write_reference(reference.path(), tenants, per).await;
    let original = std::fs::read(reference.path().join(DB_FILE)).unwrap();
    let marker = std::fs::read(
        reference
            .path()
            .join(configwatch::store::identity::MARKER_FILE),
    )
    .unwrap();
    // Several places, so the damage lands on tree pages as well as on values.
    let step = (original.len() / 8).max(4096);
    let mut at = 4096;
    let mut detected = 0;
    while at + 4096 <= original.len() {
        let dir = temp_dir();
        let mut bytes = original.clone();
        for b in &mut bytes[at..at + 4096] {
            *b = rand::random();
        }
        std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
        std::fs::write(
            dir.path().join(configwatch::store::identity::MARKER_FILE),
            &marker,
        )
        .unwrap();
        let (damaged, refused) = serve_damaged(dir.path(), tenants, per).await;
        println!(
            "4 KiB at {at}: {} damaged records reported, {refused} of {tenants} tenants refused",
            damaged.len()
        );
        if !damaged.is_empty() || refused > 0 {
            detected += 1;
        }
        at += step;
    }
    assert!(
        detected > 0,
        "no run met the damage: the test proves nothing"
    );
}

#[tokio::test]
async fn serve_names_the_damaged_keys_at_start() {
    let reference = temp_dir();
    write_reference(reference.path(), 2, 5).await;
    let db = reference.path().join(DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    for i in find_all(&bytes.clone(), value_of(1, 3).as_bytes()) {
        bytes[i + 10] ^= 0x20;
    }
    std::fs::write(&db, &bytes).unwrap();
    let log = reference.path().join("stderr.log");
    let mut command = serve_command(reference.path(), &[]);
    command.stderr(std::fs::File::create(&log).unwrap());
    let server = ServerProcess::start(command).await;
    let t = token(reference.path(), "t1", Role::Reader);
    let mut c = connect(server.addr, Some(&t)).await;
    let refused = get_all(&mut c).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss);
    assert!(
        refused.message().contains("tenant_config_k03"),
        "{refused:?}"
    );
    // A client resuming with the versions it holds is refused too: the damaged key
    // is never sent to it as a removal.
    let known = (0..5)
        .map(|k| (format!("tenant_config_k{k:02}"), 1))
        .collect();
    let resumed = c
        .watch(proto::WatchRequest {
            known_versions: known,
            ..Default::default()
        })
        .await;
    let status = match resumed {
        Err(s) => s,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("no message may come from a damaged tenant"),
    };
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let t0 = token(reference.path(), "t0", Role::Reader);
    let mut c0 = connect(server.addr, Some(&t0)).await;
    assert_eq!(get_all(&mut c0).await.unwrap().entries.len(), 5);
    server.kill9().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("tenant_config_k03"), "{text}");
    assert!(text.contains("damaged"), "{text}");
}
