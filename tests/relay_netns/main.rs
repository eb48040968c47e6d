//! Servers and clients in network namespaces of their own, on links that a test
//! takes down: a real partition (packets dropped, nothing reset), with delay and
//! loss from lossy proxies in the host namespace (this kernel has no `netem`).
//!
//! Needs root and iproute2; where namespaces cannot be made, every test prints one
//! line saying why on stderr and passes. Each test makes its own namespaces
//! (`cwns-PID-N`) and removes them, on a failure too.
//!
//! Layout: `tiers.rs` the servers (one namespace each, and their upstream proxies),
//! `clients.rs` the client processes of both libraries and what they hold,
//! `writes.rs` the writes at the origin and its state, `cutoff.rs` a Watch that
//! reads what a server says of being cut off from its sources. Clients live in one
//! namespace of their own and reach each server through a proxy on the host end of
//! their link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod cutoff;
mod tiers;
mod writes;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use clients::{Client, TsClient, TsDriver, Watcher};
use configwatch_test_support::{Lossy, LossyProxy, Netns, PATIENCE, temp_dir};
use cutoff::CutOff;
use tiers::Tier;
use writes::{State, Writer};

/// The tenant every client watches.
pub const TENANT: &str = "acme";
/// The prefix every client watches.
const PREFIX: &str = "tenant_config_";
/// How long every cache has to converge after a round of writes (paths are slow
/// and lossy, and a client may be waiting out its backoff).
const CONVERGE: Duration = Duration::from_secs(45);
/// How long a partition lasts: longer than the TypeScript client's idle timeout,
/// so it notices and retries into the cut; shorter than the Rust client's (30 s),
/// whose connection lives through it.
const PARTITION: Duration = Duration::from_secs(4);
/// The TypeScript client's idle timeout (the servers send progress every second).
const TS_IDLE: Duration = Duration::from_secs(3);

/// A path between a client and a server: some delay and stalls, no resets (a reset
/// lost in a partition would leave a client on a dead connection until its idle
/// timeout, 30 s for the Rust watcher).
fn client_path(seed: u64) -> Lossy {
    Lossy {
        delay: Duration::from_millis(10),
        stall_probability: 0.05,
        stall: Duration::from_millis(200),
        reset_rate: 0.0,
        seed,
    }
}

/// A path between two tiers: more delay, stalls, and now and then a reset (the
/// relay reconnects and resumes).
fn tier_path(seed: u64) -> Lossy {
    Lossy {
        delay: Duration::from_millis(20),
        stall_probability: 0.05,
        stall: Duration::from_millis(200),
        reset_rate: 0.2,
        seed,
    }
}

/// How long a relay may take to notice that its upstream is gone, and that it is
/// back.
const NOTICE: Duration = Duration::from_secs(40);

/// Whether namespaces can be made here; when not, says so on stderr (past the
/// test harness's capture, so the skip is never silent) and the test passes.
fn namespaces_or_skip(test: &str) -> bool {
    match Netns::available() {
        Ok(()) => true,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "relay_netns::{test}: SKIPPED: {why}");
            false
        }
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_configwatch"))
}

/// The clients of one server, both libraries, in the clients' namespace, each
/// through its own proxy on the host end of the clients' link.
struct ClientsOf {
    proxies: Vec<LossyProxy>,
    clients: Vec<Client>,
}

impl ClientsOf {
    async fn start(
        tier: &Tier,
        clients_ns: &Netns,
        clients_link: &configwatch_test_support::Link,
        driver: &TsDriver,
        logs: &Path,
        seed: u64,
    ) -> ClientsOf {
        // Signed with the key in the tier's data directory: a relay holds a copy of
        // the origin's.
        let token = tiers::token(bin(), tier.dir.path(), "reader").await;
        let token_file = logs.join(format!("{}-token", tier.name));
        std::fs::write(&token_file, &token).unwrap();
        let mut proxies = Vec::new();
        let mut clients = Vec::new();
        let rust_path = LossyProxy::start(
            clients_link.host_addr(0),
            tier.server.addr,
            client_path(seed),
        )
        .await;
        let name = format!("rust@{}", tier.name);
        let log = logs.join(format!("{name}.log"));
        let watcher = Watcher::start(
            clients_ns,
            bin(),
            &name,
            &rust_path.url(),
            &token,
            PREFIX,
            log,
        );
        clients.push(Client::Rust(watcher));
        proxies.push(rust_path);
        let ts_path = LossyProxy::start(
            clients_link.host_addr(0),
            tier.server.addr,
            client_path(seed + 1),
        )
        .await;
        let name = format!("ts@{}", tier.name);
        let log = logs.join(format!("{name}.log"));
        let ts = TsClient::start(
            clients_ns,
            driver,
            &name,
            &ts_path.url(),
            &token_file,
            PREFIX,
            TS_IDLE,
            log,
        )
        .await;
        clients.push(Client::Ts(ts));
        proxies.push(ts_path);
        ClientsOf { proxies, clients }
    }
}

/// Waits until every client holds `state`; fails with what each still lacks.
async fn converge(clients: &mut [&mut Client], state: &State, when: &str) {
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        let mut behind = Vec::new();
        for client in clients.iter_mut() {
            let cache = client.cache().await.unwrap_or_else(|e| panic!("{e}"));
            if let Some(diff) = clients::difference(&cache, state) {
                behind.push(format!("{}: {diff}", client.name()));
            }
        }
        if behind.is_empty() {
            return;
        }
        last = behind.join("\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<_> = clients.iter().map(|c| c.log_tail()).collect();
    panic!(
        "{when}: the caches did not converge within {CONVERGE:?}:\n{last}\n{}",
        logs.join("\n")
    );
}

/// Asserts that no client holds `state`, the origin's after writes made during a
/// partition: the partition really cut them off.
async fn assert_none_holds(clients: &mut [&mut Client], state: &State) {
    for client in clients.iter_mut() {
        let cache = client.cache().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            clients::difference(&cache, state).is_some(),
            "{} got the writes made during the partition: the link was not cut",
            client.name()
        );
    }
}

/// Waits until every client reports what `expected` gives for it (asked again at
/// each check): its server cut off since that time (to the second: the Rust
/// watcher prints whole seconds), or current (`None`).
async fn until_clients_report(
    clients: &mut [&mut Client],
    expected: impl Fn(&str) -> Option<SystemTime>,
) {
    for client in clients.iter_mut() {
        let started = tokio::time::Instant::now();
        loop {
            let want = expected(client.name());
            let said = client
                .cut_off_since()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let agrees = match (said, want) {
                (Some(said), Some(want)) => {
                    let apart = said.duration_since(want).or(want.duration_since(said));
                    apart.is_ok_and(|d| d < Duration::from_secs(1))
                }
                (said, want) => said.is_none() && want.is_none(),
            };
            if agrees {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{} reports its server cut off since {said:?}, not {want:?}\n{}",
                client.name(),
                client.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cut_off_from_the_origin_converge_when_the_link_heals() {
    if !namespaces_or_skip("clients_cut_off_from_the_origin_converge_when_the_link_heals") {
        return;
    }
    let driver = TsDriver::find().unwrap_or_else(|e| panic!("{e}"));
    let logs = temp_dir();
    let origin = Tier::origin(bin(), logs.path()).await;
    let clients_ns = Netns::create();
    let clients_link = clients_ns.link();
    let mut writer = Writer::connect(&origin, bin()).await;
    writer.round(0, 12).await;

    let mut of_origin = ClientsOf::start(
        &origin,
        &clients_ns,
        &clients_link,
        &driver,
        logs.path(),
        11,
    )
    .await;
    let mut all: Vec<&mut Client> = of_origin.clients.iter_mut().collect();
    for round in 1..=2 {
        let state = writer.round(round, 12).await;
        converge(&mut all, &state, &format!("round {round}")).await;
    }
    let before = origin.metrics().await;
    let full = r#"configwatch_watch_initial_syncs_total{mode="full"}"#;
    assert_eq!(before.value(full), 2.0, "one full state per client");

    // The partition: the clients' link goes down; writes go on at the origin.
    clients_link.down();
    let cut_at = SystemTime::now();
    let during = writer.round(3, 12).await;
    tokio::time::sleep(PARTITION).await;
    assert_none_holds(&mut all, &during).await;
    // The TypeScript client tells how stale it is: its last message came before
    // the cut (give or take one already on its way).
    let Client::Ts(ts) = &mut all[1] else {
        unreachable!()
    };
    let status = ts.dump().await.unwrap().status;
    let last_ms = status["lastMessageAt"]
        .as_u64()
        .expect("a last message time");
    let last = SystemTime::UNIX_EPOCH + Duration::from_millis(last_ms);
    let stale = SystemTime::now().duration_since(last).unwrap_or_default();
    assert!(
        last <= cut_at + Duration::from_secs(1) && stale >= PARTITION - Duration::from_secs(1),
        "the client's last message ({stale:?} ago) is not from before the cut: {status}"
    );

    // Healed: every cache catches up, without a full resend.
    clients_link.up();
    converge(&mut all, &during, "after the partition").await;
    let state = writer.round(4, 12).await;
    converge(&mut all, &state, "a round after the partition").await;
    let after = origin.metrics().await;
    assert_eq!(after.value(full), 2.0, "a client got the full state again");
    let Client::Ts(ts) = &mut all[1] else {
        unreachable!()
    };
    let syncs = ts.dump().await.unwrap().syncs;
    assert_eq!(syncs.get("full"), Some(&1), "{syncs:?}");
    let stalls: u64 = of_origin
        .proxies
        .iter()
        .map(|p| p.stats().stalls.load(Relaxed))
        .sum();
    assert!(stalls > 0, "the clients' paths never stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_cut_off_from_the_origin_say_since_when_and_converge_when_it_heals() {
    if !namespaces_or_skip(
        "relays_cut_off_from_the_origin_say_since_when_and_converge_when_it_heals",
    ) {
        return;
    }
    let driver = TsDriver::find().unwrap_or_else(|e| panic!("{e}"));
    let logs = temp_dir();
    let origin = Tier::origin(bin(), logs.path()).await;
    let mut writer = Writer::connect(&origin, bin()).await;
    writer.round(0, 12).await;
    let key_dir = origin.dir.path();
    let b = Tier::relay(
        bin(),
        "relay-b",
        &origin,
        key_dir,
        tier_path(21),
        logs.path(),
    )
    .await;
    let c = Tier::relay(bin(), "relay-c", &b, key_dir, tier_path(22), logs.path()).await;
    let clients_ns = Netns::create();
    let clients_link = clients_ns.link();
    let start =
        |tier, seed| ClientsOf::start(tier, &clients_ns, &clients_link, &driver, logs.path(), seed);
    let mut of_b = start(&b, 31).await;
    let mut of_c = start(&c, 33).await;
    let mut all: Vec<&mut Client> = of_b
        .clients
        .iter_mut()
        .chain(of_c.clients.iter_mut())
        .collect();
    for round in 1..=2 {
        let state = writer.round(round, 12).await;
        converge(&mut all, &state, &format!("round {round}")).await;
    }
    let reader = tiers::token(bin(), key_dir, "reader").await;
    let told_b = CutOff::watch("relay-b", b.server.addr, &reader, PREFIX).await;
    let told_c = CutOff::watch("relay-c", c.server.addr, &reader, PREFIX).await;
    told_b.until_current(PATIENCE).await;
    told_c.until_current(PATIENCE).await;
    let before = (b.metrics().await, c.metrics().await);

    // The partition: B loses its uplink; C (behind B) and the clients still reach
    // B. Writes go on at the origin.
    b.uplink().down();
    let cut_at = SystemTime::now();
    let during = writer.round(3, 12).await;
    let since_b = told_b.until_cut_off(NOTICE).await;
    let since_c = told_c.until_cut_off(NOTICE).await;
    let now = SystemTime::now();
    for (name, since) in [("relay-b", since_b), ("relay-c", since_c)] {
        // Since the cut, or since the last word from upstream before it (progress
        // comes every second, and the path is slow).
        assert!(
            since <= now && since + Duration::from_secs(5) >= cut_at,
            "{name} says it is cut off since {since:?}; the link went down at {cut_at:?}"
        );
    }
    assert_none_holds(&mut all, &during).await;
    // The clients of both relays report it too, with the time their relay says now
    // (a reset on C's own path may have shown C's own cut first).
    let relay_says = |client: &str| match client.ends_with("relay-b") {
        true => told_b.says(),
        false => told_c.says(),
    };
    until_clients_report(&mut all, relay_says).await;
    let noticed = now.duration_since(cut_at).unwrap_or_default();
    println!("the relays said they were cut off within {noticed:?} of the link going down");

    // Healed: both relays say they are current, every cache catches up, and
    // neither the relays nor their clients were sent the whole state again.
    b.uplink().up();
    let healed = tokio::time::Instant::now();
    told_b.until_current(NOTICE).await;
    told_c.until_current(NOTICE).await;
    until_clients_report(&mut all, |_| None).await;
    converge(&mut all, &during, "after the partition").await;
    println!(
        "current and converged {:?} after the link came up",
        healed.elapsed()
    );
    let state = writer.round(4, 12).await;
    converge(&mut all, &state, "a round after the partition").await;
    let after = (b.metrics().await, c.metrics().await);
    for (name, before, after, watches) in [
        ("relay-b", &before.0, &after.0, 4.0),
        ("relay-c", &before.1, &after.1, 3.0),
    ] {
        // A full state from upstream when the scope was first loaded, and one per
        // Watch on this tier: the two clients, the cut-off watch, and on B the
        // relay C (a reset during a first load may have made one more).
        let relay_full = r#"configwatch_relay_upstream_syncs_total{mode="full"}"#;
        let client_full = r#"configwatch_watch_initial_syncs_total{mode="full"}"#;
        assert!(before.value(relay_full) >= 1.0, "{name}: {relay_full}");
        assert!(
            before.value(client_full) >= watches,
            "{name}: {client_full}"
        );
        for series in [relay_full, client_full] {
            assert_eq!(after.delta(before, series), 0.0, "{name}: {series}");
        }
    }
    // B came back by resuming (token or digest), not with the whole state.
    let resumed = ["resumed", "diff"]
        .map(|mode| {
            after.0.delta(
                &before.0,
                &format!(r#"configwatch_relay_upstream_syncs_total{{mode="{mode}"}}"#),
            )
        })
        .iter()
        .sum::<f64>();
    assert!(resumed >= 1.0, "relay-b did not resume from its upstream");
    for client in all.iter_mut() {
        if let Client::Ts(ts) = client {
            let syncs = ts.dump().await.unwrap().syncs;
            assert_eq!(syncs.get("full"), Some(&1), "{}: {syncs:?}", ts.name);
        }
    }
    for tier in [&b, &c] {
        let stats = tier.upstream_proxy().stats();
        println!("{}'s upstream path: {stats}", tier.name);
    }
    let stalls: u64 = [&b, &c]
        .iter()
        .map(|t| t.upstream_proxy().stats().stalls.load(Relaxed))
        .sum();
    assert!(stalls > 0, "the paths between tiers never stalled");
}

#[test]
fn namespaces_and_links_are_removed_when_a_test_fails() {
    if !namespaces_or_skip("namespaces_and_links_are_removed_when_a_test_fails") {
        return;
    }
    let made = std::sync::Mutex::new(None);
    let failed = std::panic::catch_unwind(|| {
        let ns = Netns::create();
        let link = ns.link();
        *made.lock().unwrap() = Some((ns.name().to_owned(), link.host));
        panic!("a test fails while it holds a namespace (a panic this test makes on purpose)");
    });
    assert!(failed.is_err());
    let (name, host) = made.into_inner().unwrap().expect("a namespace was made");
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{name} is left behind: {namespaces}"
    );
    let addresses = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let addresses = String::from_utf8_lossy(&addresses.stdout);
    assert!(
        !addresses.contains(&format!("inet {host}/")),
        "the link's host end ({host}) is left behind: {addresses}"
    );
}
