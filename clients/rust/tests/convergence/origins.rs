//! Origin failover on moto: two origins over the same AWS sources (`instances`), a
//! relay listing both (`--upstream A,B`), and watchers of both languages on the
//! relay, through a proxy that counts the bytes the relay sends them. Changes run
//! the whole time through the relay's API (forwarded to an origin) and directly in
//! DynamoDB and Parameter Store (`changes`). The tenant is made large (200 keys of
//! 1 KiB), so that a full state sent again would show in the bytes.
//!
//! The origin the relay uses (the one holding its upstream Watch) is killed
//! (SIGKILL): the relay moves its Watch to the other and resumes there by digest or
//! resume token (its full syncs do not grow); its watchers stay connected to it,
//! get no initial state again, and receive far less than a full state meanwhile.
//! The killed origin is restarted on its address and the other killed: the relay
//! moves back. Then that one is killed too: with no origin, the relay keeps its
//! watchers' streams and answers a Get with what it holds, and when the other
//! origin is started again it resumes there the same way. At the end every cache
//! equals the store, read from DynamoDB and Parameter Store directly, and no watcher
//! saw a version go back.
//!
//! Boundary: processes, their metrics and the clients' view; nothing of how the
//! relay chooses its upstream beyond the order of its list.

use super::changes::*;
use super::*;

use configwatch_test_support::moto::Moto;
use configwatch_test_support::{PATIENCE, Scrape};
use tokio_util::sync::CancellationToken;

/// Watchers per language.
const WATCHERS: usize = 3;
/// The bulk of the tenant: written once in DynamoDB, never changed.
const BULK_KEYS: usize = 200;
const BULK_BYTES: usize = 1024;
/// Changes made in each phase before the next step.
const CHANGES_PER_PHASE: usize = 40;
/// The relay's series of full initial states received from its upstreams.
const FULL_SYNCS: &str = r#"configwatch_relay_upstream_syncs_total{mode="full"}"#;
const DIFF_SYNCS: &str = r#"configwatch_relay_upstream_syncs_total{mode="diff"}"#;
const RESUMED_SYNCS: &str = r#"configwatch_relay_upstream_syncs_total{mode="resumed"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_moves_between_origins_and_its_watchers_see_no_gap_and_no_resend() {
    let driver = typescript_driver();
    let dir = temp_dir();
    let seed = seed_from_env("origins");
    let started = Instant::now();
    let Instances {
        moto,
        res,
        b_queue,
        a,
        b,
    } = Instances::new(dir.path()).await;
    let flags = [aws_flags(&res, &res.queue_url), aws_flags(&res, &b_queue)];
    let mut origins = [a, b];
    let mut addrs = Vec::new();
    for (origin, flags) in origins.iter_mut().zip(&flags) {
        let addr = origin.start_with(4096, flags).await.unwrap();
        // Restarted, it comes back on its address: the one the relay was given.
        origin.port = addr.port();
        addrs.push(addr);
    }
    for origin in &origins {
        ready(origin).await;
    }
    let (token_file, writer_token) = tokens(dir.path()).await;
    let mut relay = start_relay(dir.path(), &addrs).await;
    ready(&relay).await;
    let relay_admin = admin_of(&relay);
    let relay_addr = relay.process.as_ref().map(|p| p.addr).unwrap();

    // Watchers of the whole tenant behind one proxy, watchers of the other tools'
    // keys behind another.
    let proxies = [
        Proxy::start(relay_addr).await.unwrap(),
        Proxy::start(relay_addr).await.unwrap(),
    ];
    // Both languages start on the empty tenant: their first state carries no
    // change, so any change that arrives in a full state later is a resend.
    let mut rust = Vec::new();
    let mut ts = Vec::new();
    for i in 0..WATCHERS {
        let url = format!("http://{}", proxies[i % 2].addr);
        let name = format!("rust-{i}");
        let client = RustClient::start(name, &url, &token_file, watches(i)).await;
        rust.push(client.unwrap());
        let log = dir.path().join(format!("ts-{i}.log"));
        let client = TsClient::start(
            &driver,
            format!("ts-{i}"),
            &url,
            &token_file,
            watches(i),
            &log,
        );
        ts.push(client.await.unwrap());
    }
    let all = 2 * WATCHERS as u64;
    wait_for_streams(relay_admin, all, "every watcher on the relay").await;

    let bulk = write_bulk(&moto, &res.table).await;
    let mut changes = Changes::new(&moto, &res, &writer_token, relay_addr, seed).await;
    let mut held = changes.anchors().await.unwrap();
    held.extend(bulk.iter().cloned());
    hold(&held, &rust, &mut ts).await;
    let others = 2 * (WATCHERS / 2) as u64;
    let full_state = proxies[1].sent() / others;
    eprintln!(
        "origins: every watcher holds the bulk: {full_state} bytes sent to each watcher of the \
         other tools' keys"
    );

    let stop = CancellationToken::new();
    let (progress, mut progress_rx) = watch::channel(0usize);
    let writes = changes.run(watch::channel(None).1, stop.clone(), progress);
    let scenario = async {
        // Whatever happens here, the changes stop with it.
        let _stop = stop.clone().drop_guard();
        let mut phase_end = CHANGES_PER_PHASE;
        let mut after_changes = async |n: usize| {
            progress_rx.wait_for(|w| *w >= n).await.unwrap();
        };
        after_changes(phase_end).await;

        // 1. The origin the relay uses dies: it moves to the other.
        let used = upstream_of(&origins).await;
        let mut watchers = Watchers {
            rust: &rust,
            ts: &mut ts,
            proxies: &proxies,
            full_state,
            relay: relay_addr,
            reader: std::fs::read_to_string(&token_file).unwrap(),
        };
        let mut report = move_off(&mut origins, used, None, relay_admin, &mut watchers).await;
        phase_end += CHANGES_PER_PHASE;
        after_changes(phase_end).await;

        // 2. It comes back on its address; the other dies: the relay moves back.
        restart(&mut origins[used], &flags[used]).await;
        ready(&origins[used]).await;
        phase_end += CHANGES_PER_PHASE;
        after_changes(phase_end).await;
        assert_eq!(
            upstream_of(&origins).await,
            1 - used,
            "the relay stays on the origin it moved to"
        );
        report += &move_off(&mut origins, 1 - used, None, relay_admin, &mut watchers).await;
        phase_end += CHANGES_PER_PHASE;
        after_changes(phase_end).await;

        // 3. Both die: the relay serves what it holds; the other comes back: the
        // relay resumes there.
        let back = Some(flags[1 - used].as_slice());
        report += &move_off(&mut origins, used, back, relay_admin, &mut watchers).await;
        phase_end += CHANGES_PER_PHASE;
        after_changes(phase_end).await;
        report
    };
    let (written, report) = tokio::join!(writes, scenario);
    let logs = || {
        let origins: Vec<String> = origins.iter().map(|o| o.log_tail(20)).collect();
        format!("{}\n{}", origins.join("\n"), relay.log_tail(30))
    };
    written.unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let api = &changes.api.stats;
    eprintln!(
        "origins: {} (A's API is the relay's here); {} API writes unanswered while an origin \
         died, {} of them found applied;{report}",
        changes.stats(),
        api.uncertain,
        api.applied_unanswered
    );

    // The store, read directly, holds every acknowledged write through the relay.
    let truth = changes.store_state().await;
    let api: Truth = truth
        .iter()
        .filter(|(k, _)| k.starts_with(API_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let lost = changes.api.compare_record(&api);
    assert!(lost.is_empty(), "API writes lost:\n  {}", lost.join("\n  "));
    let mut keys = changes.keys();
    keys.extend(bulk);
    converge_on(&truth, &keys, &rust, &mut ts)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // One initial state each, the first (empty): the relay's moves never reached
    // its watchers as a resync, let alone a full one.
    let mut report = String::new();
    for c in &rust {
        let s = c.client.status();
        assert_eq!(s.syncs, 1, "{}: synced again: {s:?}", c.name);
        let _ = write!(
            report,
            " {}: {} sync {:?};",
            c.name, s.syncs, s.last_sync_mode
        );
    }
    for c in &mut ts {
        let counts = c.dump().await.unwrap().counts;
        assert_eq!(counts["syncs"]["full"], json!(1), "{}: {counts}", c.name);
        assert_eq!(counts["disconnects"], json!(0), "{}: {counts}", c.name);
        let _ = write!(report, " {}: {};", c.name, counts["syncs"]);
    }
    eprintln!(
        "origins: passed in {:.1} s;{report}",
        started.elapsed().as_secs_f64()
    );
    close_all(rust, ts).await.unwrap();
    relay.kill().await;
    for origin in &mut origins {
        origin.kill().await;
    }
}

/// A relay on `dir/relay` whose upstreams are `origins` in this order, with a relay
/// token from the origins' key (which its data directory gets a copy of).
async fn start_relay(dir: &Path, origins: &[SocketAddr]) -> Server {
    let data_dir = dir.join("relay");
    std::fs::create_dir_all(&data_dir).unwrap();
    let key = "signing-key.pem";
    std::fs::copy(dir.join("data").join(key), data_dir.join(key)).unwrap();
    let out = Command::new(server_bin())
        .args(["token", "--role", "relay", "--ttl", "10m", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "configwatch token --role relay: {out:?}"
    );
    let token_file = data_dir.join("upstream.token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let logs = dir.join("relay-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut relay = Server::new(data_dir, logs);
    let upstreams: Vec<String> = origins.iter().map(|a| format!("http://{a}")).collect();
    let upstreams = upstreams.join(",");
    let token_file = token_file.to_str().unwrap();
    let flags = [
        "--upstream",
        &upstreams,
        "--upstream-token-file",
        token_file,
        "--admin-listen",
        "127.0.0.1:0",
    ];
    relay.start_with(4096, &flags).await.unwrap();
    relay
}

/// Writes the bulk in DynamoDB directly: `BULK_KEYS` items of `BULK_BYTES` each,
/// under the prefix of the keys other tools write. Returns their keys.
async fn write_bulk(moto: &Moto, table: &str) -> Vec<String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let ddb = moto.dynamodb().await;
    let mut keys = Vec::new();
    for i in 0..BULK_KEYS {
        let name = format!("{}-bulk-{i:03}", &DDB_PREFIX["tenant_config_".len()..]);
        let value = format!("{i:03}{}", "x".repeat(BULK_BYTES - 3));
        ddb.put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("TENANT#{TENANT}")))
            .item("sk", AttributeValue::S(format!("CONFIG#{name}")))
            .item("config", AttributeValue::S(value))
            .item("isActive", AttributeValue::Bool(true))
            .item("version", AttributeValue::N("1".into()))
            .send()
            .await
            .unwrap();
        keys.push(format!("tenant_config_{name}"));
    }
    keys
}

/// The origin holding the relay's upstream Watch (the tenant is its one scope).
async fn upstream_of(origins: &[Server; 2]) -> usize {
    let seen = RefCell::new((0, 0));
    let found = poll(PATIENCE, || async {
        let a = streams_open(admin_of(&origins[0])).await;
        let b = streams_open(admin_of(&origins[1])).await;
        *seen.borrow_mut() = (a, b);
        match (a, b) {
            (1, 0) => Some(0),
            (0, 1) => Some(1),
            _ => None,
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "one origin should hold the relay's one upstream Watch; Watch streams open on A \
             and B: {:?}",
            seen.into_inner()
        )
    })
}

/// The relay's watchers; the proxies in front of the relay, for the watchers of the
/// whole tenant and for those of the other tools' keys; what a full state costs one
/// of the latter.
struct Watchers<'a> {
    rust: &'a [RustClient],
    ts: &'a mut [TsClient],
    proxies: &'a [Proxy; 2],
    full_state: u64,
    /// The relay, and a reader's token for a Get of it.
    relay: SocketAddr,
    reader: String,
}

/// Kills origin `used` (SIGKILL) under the relay and checks the move: the relay's
/// upstream Watch on the other origin (when it is down too, the relay serves what it
/// holds until the other is started again with flags `back`), resumed there by digest or resume token (no
/// full sync), its watchers connected throughout and sent less than a full state
/// until the relay is back in sync. The bytes are bounded for the watchers of the
/// other tools' keys, whose changes are small; those of the whole tenant also get
/// the API writes, tens of KiB at times (the writer's large values), so their bytes
/// are reported and their sync counts checked. Returns a line for the report.
async fn move_off(
    origins: &mut [Server; 2],
    used: usize,
    back: Option<&[&str]>,
    relay_admin: SocketAddr,
    watchers: &mut Watchers<'_>,
) -> String {
    let name = match back {
        None => ["A", "B"][used],
        Some(_) => ["A (B down)", "B (A down)"][used],
    };
    let before = Scrape::take(relay_admin).await;
    let sent_before = watchers.proxies.each_ref().map(Proxy::sent);
    let t = Instant::now();
    origins[used].kill().await;
    if let Some(flags) = back {
        serves_alone(watchers, name).await;
        restart(&mut origins[1 - used], flags).await;
    }
    let other = &origins[1 - used];
    let resynced = poll(PATIENCE, || async {
        let now = Scrape::take(relay_admin).await;
        let moved = now.delta(&before, DIFF_SYNCS) + now.delta(&before, RESUMED_SYNCS);
        (moved >= 1.0 && streams_open(admin_of(other)).await == 1).then_some(now)
    })
    .await;
    let after = resynced.unwrap_or_else(|_| {
        panic!(
            "{name} was killed: the relay's upstream Watch did not resume on the other \
             origin within {PATIENCE:?}\n{}",
            other.log_tail(20)
        )
    });
    let took = t.elapsed();
    assert_eq!(
        after.delta(&before, FULL_SYNCS),
        0.0,
        "{name} was killed: the relay took a full state from the other origin"
    );
    // Every watcher hears from the relay after the move, on the stream it had.
    let after_move = SystemTime::now();
    heard_from_after(after_move, watchers.rust, watchers.ts)
        .await
        .unwrap();
    let sent = [0, 1].map(|i| watchers.proxies[i].sent() - sent_before[i]);
    for c in watchers.rust {
        let s = c.client.status();
        assert!(
            s.connected && s.syncs == 1,
            "{}: reconnected or resynced when {name} was killed: {s:?}",
            c.name
        );
    }
    assert!(
        sent[1] < watchers.full_state / 4,
        "{name} was killed: the relay sent the watchers of the other tools' keys {} bytes \
         until it was back in sync; a full state is {} bytes for each",
        sent[1],
        watchers.full_state
    );
    format!(
        " {name} killed: the relay resumed on the other origin in {} ms ({} diff, {} resumed); \
         until its watchers heard from it after that, it sent {} bytes to those of the whole \
         tenant and {} to those of the other tools' keys (a full state is {} bytes for one);",
        took.as_millis(),
        after.delta(&before, DIFF_SYNCS),
        after.delta(&before, RESUMED_SYNCS),
        sent[0],
        sent[1],
        watchers.full_state
    )
}

/// With both origins down, the relay keeps its watchers' streams (each hears from
/// it) and answers a Get with what it holds: the whole tenant, bulk included.
async fn serves_alone(watchers: &mut Watchers<'_>, name: &str) {
    heard_from_after(SystemTime::now(), watchers.rust, watchers.ts)
        .await
        .unwrap_or_else(|e| panic!("{name} was killed: {e}"));
    let (_, relay) = watch::channel(watchers.relay);
    let mut reader = Writer::new(relay, watchers.reader.trim(), &[]);
    let held = reader
        .truth()
        .await
        .unwrap_or_else(|e| panic!("{name} was killed: a Get of the relay: {e}"));
    assert!(
        held.len() > BULK_KEYS,
        "{name} was killed: the relay answered a Get with {} keys",
        held.len()
    );
}
