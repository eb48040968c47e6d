//! Connections rebalance: two instances over the same AWS sources (moto), each with
//! its own queue, behind a round-robin balancer. Watchers of both languages start on
//! instance A alone; B starts later and joins the balancer; with a short maximum
//! connection age the watchers spread over both, while changes arrive the whole time
//! through A's API, B's API, DynamoDB directly and Parameter Store (with its event
//! fanned out to both queues). At the end every watcher holds what the store holds
//! (read from DynamoDB and Parameter Store directly), no watcher saw a version go
//! back, and none was sent a full state again after its first.
//!
//! Reconciliation is set far beyond the test's length, so every change has to come
//! by the stream, the queue or the instance's own write: none is repaired later.

use super::*;

use std::cell::Cell;

use tokio_util::sync::CancellationToken;

use super::changes::*;

/// Watchers per language.
const WATCHERS: usize = 6;
/// Short connection lifetimes: GOAWAY at 0.9 s, Watches end 0.9-1.1 s after the
/// connection opened plus the grace.
const MAX_AGE: &[&str] = &[
    "--max-connection-age",
    "1s",
    "--max-connection-age-grace",
    "500ms",
];
/// Changes made while A is alone, before B starts.
const WRITES_BEFORE_B: usize = 24;
/// How long changes go on after the watchers are spread: a few more connection
/// lifetimes, so watchers keep moving between the instances while changes arrive.
const WRITES_AFTER_SPREAD: Duration = Duration::from_secs(4);
/// How long the watchers get to spread once B is in the balancer: about ten
/// connection lifetimes.
const SPREAD_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_spread_to_a_second_instance_and_miss_no_change() {
    let driver = typescript_driver();
    let dir = temp_dir();
    let seed = seed_from_env("spread");
    let started = Instant::now();
    let Instances {
        moto,
        res,
        b_queue,
        mut a,
        mut b,
    } = Instances::new(dir.path()).await;
    let a_addr = a
        .start_with(
            4096,
            &[aws_flags(&res, &res.queue_url), MAX_AGE.to_vec()].concat(),
        )
        .await
        .unwrap();
    let (token_file, writer_token) = tokens(dir.path()).await;

    let balancer = Balancer::start(a_addr).await.unwrap();
    let url = format!("http://{}", balancer.addr);
    // Both languages start on the empty tenant: their first state carries no
    // change, so any change that arrives in a full state later is a resend.
    let mut rust = Vec::new();
    let mut ts = Vec::new();
    for i in 0..WATCHERS {
        rust.push(
            RustClient::start(format!("rust-{i}"), &url, &token_file, watches(i))
                .await
                .unwrap(),
        );
        ts.push(
            TsClient::start(
                &driver,
                format!("ts-{i}"),
                &url,
                &token_file,
                watches(i),
                &dir.path().join(format!("ts-{i}.log")),
            )
            .await
            .unwrap(),
        );
    }
    let a_admin = admin_of(&a);
    let all = 2 * WATCHERS as u64;
    wait_for_streams(a_admin, all, "every watcher on A").await;

    let mut changes = Changes::new(&moto, &res, &writer_token, a_addr, seed).await;
    let anchors = changes.anchors().await.unwrap();
    hold(&anchors, &rust, &mut ts).await;
    let stop = CancellationToken::new();
    let (progress, mut progress_rx) = watch::channel(0usize);
    let (b_tx, b_rx) = watch::channel(None::<SocketAddr>);
    let writes = changes.run(b_rx, stop.clone(), progress);
    let scenario = async {
        // Whatever happens here, the writes stop with it.
        let _stop = stop.clone().drop_guard();
        progress_rx
            .wait_for(|n| *n >= WRITES_BEFORE_B)
            .await
            .unwrap();
        let b_addr = b
            .start_with(
                4096,
                &[aws_flags(&res, &b_queue), MAX_AGE.to_vec()].concat(),
            )
            .await
            .unwrap();
        b_tx.send_replace(Some(b_addr));
        balancer.add(b_addr);
        let b_admin = admin_of(&b);
        let joined = Instant::now();
        let spread = spread_over(a_admin, b_admin, all).await;
        eprintln!(
            "spread: {} Watch streams on A, {} on B, {} ms after B joined",
            spread.0,
            spread.1,
            joined.elapsed().as_millis()
        );
        // The scenario: changes go on while connections keep aging.
        tokio::time::sleep(WRITES_AFTER_SPREAD).await;
        (b_addr, spread)
    };
    let (written, (b_addr, _)) = tokio::join!(writes, scenario);
    written.unwrap_or_else(|e| {
        panic!("{e}\n{}\n{}", a.log_tail(30), b.log_tail(30));
    });
    eprintln!(
        "spread: {}; connections through the balancer: {} to A, {} to B",
        changes.stats(),
        balancer.opened_to(a_addr),
        balancer.opened_to(b_addr)
    );

    // The store, read directly, holds every acknowledged write through the API.
    let truth = changes.store_state().await;
    let lost = changes.api.compare_record(
        &truth
            .iter()
            .filter(|(k, _)| k.starts_with(API_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    assert!(lost.is_empty(), "API writes lost:\n  {}", lost.join("\n  "));

    let t = Instant::now();
    converge_on(&truth, &changes.keys(), &rust, &mut ts)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log_tail(30), b.log_tail(30)));
    eprintln!(
        "spread: every watcher held the store's {} keys {} ms after the writes stopped",
        truth.len(),
        t.elapsed().as_millis()
    );

    // Each watcher moved (its first sync, then at least two more), and never got
    // a full state again: the instances resumed it or sent the difference.
    let mut report = resumed_every_time(&rust, 3);
    for c in &mut ts {
        let counts = c.dump().await.unwrap().counts;
        assert_eq!(counts["syncs"]["full"], json!(1), "{}: {counts}", c.name);
        assert!(
            counts["disconnects"].as_u64().unwrap_or(0) >= 2,
            "{}: {counts}",
            c.name
        );
        let _ = write!(report, " {}: {};", c.name, counts["syncs"]);
    }
    eprintln!(
        "spread: passed in {:.1} s;{report}",
        started.elapsed().as_secs_f64()
    );

    close_all(rust, ts).await.unwrap();
    a.kill().await;
    b.kill().await;
}

/// Waits until each instance holds at least a third of the `all` watchers' streams;
/// returns the counts (A, B).
///
/// Why this cannot flake: from B's joining, every watcher's connection ends within
/// 1.1 s + 500 ms of opening (its age, then the grace) and its next one goes to A or
/// B in strict turn, so each connection lifetime deals the watchers out afresh, and
/// more evenly than coin flips would (the turns alternate): one deal leaving either
/// side fewer than 4 of 12 has a chance of a few percent at most. The check looks
/// every 20 ms for 15 s, about ten deals; only watchers that do not move (B holding
/// next to nothing throughout) keep it false.
async fn spread_over(a: SocketAddr, b: SocketAddr, all: u64) -> (u64, u64) {
    let fair = all.div_ceil(3);
    let last = Cell::new((0, 0));
    let spread = poll(SPREAD_WITHIN, || async {
        let counts = (streams_open(a).await, streams_open(b).await);
        last.set(counts);
        (counts.0 >= fair && counts.1 >= fair).then_some(counts)
    })
    .await;
    spread.unwrap_or_else(|_| {
        panic!(
            "the watchers did not spread within {SPREAD_WITHIN:?}: last seen {} Watch streams \
             on A and {} on B (each should hold at least {fair} of {all})",
            last.get().0,
            last.get().1
        )
    })
}
