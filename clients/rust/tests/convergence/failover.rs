//! Failover without loss: two instances over the same AWS sources (moto), each with
//! its own queue, and Rust clients given both URLs (A first). A writer keeps
//! writing through the API the whole time. A is killed (SIGKILL): every client moves
//! to B by itself; A is restarted on its address; then B is killed and every client
//! moves back to A. At the end every client holds what the store holds (acknowledged
//! writes, read back from the surviving instance), no client saw a version go back,
//! and none was sent a full state again after its first: each move resumed by what
//! the client held.
//!
//! Boundary: the clients' view and the instances' Watch stream gauges; nothing of how
//! the client chooses, beyond the order of its list.

use super::*;

use configwatch_test_support::PATIENCE;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 6;
/// The keys the writer changes (DynamoDB, whose stream both instances read).
const KEYS: usize = 10;
/// Never deleted: every client holds something from its first state on, so every
/// later one can be a difference.
const ANCHOR: &str = "tenant_config_anchor";
/// Pause between writes (workload shape, not synchronization).
const PACE: Duration = Duration::from_millis(10);
/// Writes made in each phase before the next step.
const WRITES_PER_PHASE: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_the_other_instance_when_theirs_is_killed_and_resume_without_resend() {
    let dir = temp_dir();
    let seed = seed_from_env("failover");
    let started = Instant::now();
    let Instances {
        res,
        b_queue,
        mut a,
        mut b,
        moto: _moto,
    } = Instances::new(dir.path()).await;
    let a_addr = a
        .start_with(4096, &aws_flags(&res, &res.queue_url))
        .await
        .unwrap();
    let b_addr = b
        .start_with(4096, &aws_flags(&res, &b_queue))
        .await
        .unwrap();
    // Restarted, each comes back on its address: the one the clients were given.
    a.port = a_addr.port();
    b.port = b_addr.port();
    // An instance opens its ports before it reaches AWS, and refuses Watches until
    // then: a client would rightly move on from it.
    ready(&a).await;
    ready(&b).await;
    let (a_url, b_url) = (format!("http://{a_addr}"), format!("http://{b_addr}"));

    let (token_file, writer_token) = tokens(dir.path()).await;

    // Both URLs in one setting, as an environment variable would hold them; A first
    // and taken first, so that killing A moves every client.
    let urls = format!("{a_url},{b_url}");
    let mut rust = Vec::new();
    for i in 0..CLIENTS {
        let client =
            RustClient::start_with(format!("rust-{i}"), &urls, &token_file, prefixes(i), |b| {
                b.random_start(false)
            })
            .await
            .unwrap();
        rust.push(client);
    }
    on(&rust, &a_url, 1, "the start").await;
    wait_for_streams(admin_of(&a), CLIENTS as u64, "every client on A").await;

    // The writer writes through B while A dies, then through A while B dies.
    let (target, target_rx) = watch::channel(b_addr);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("tenant_config_fo{i}")).collect();
    let mut writer = Writer::new(target_rx, &writer_token, &keys);
    // Written after the clients' first (empty) state: it reaches them as a change.
    writer
        .write(
            ANCHOR,
            Op::Put {
                value: json!({ "anchor": true }),
                secret: false,
            },
        )
        .await
        .unwrap();
    let anchored = poll(PATIENCE, || async {
        rust.iter()
            .all(|c| c.client.contains_key(ANCHOR))
            .then_some(())
    })
    .await;
    assert!(anchored.is_ok(), "not every client got {ANCHOR}");

    let stop = CancellationToken::new();
    let (progress, mut progress_rx) = watch::channel(0usize);
    let writes = async {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut n = 0;
        while !stop.is_cancelled() {
            let key = writer.keys[rng.random_range(0..KEYS)].clone();
            let op = writer.choose(&mut rng, &key);
            writer.write(&key, op).await?;
            n += 1;
            progress.send_replace(n);
            tokio::time::sleep(PACE).await;
        }
        Ok::<_, String>(())
    };
    let scenario = async {
        // Whatever happens here, the writes stop with it.
        let _stop = stop.clone().drop_guard();
        let mut phase_end = WRITES_PER_PHASE;
        let mut after_writes = async |n: usize| {
            progress_rx.wait_for(|w| *w >= n).await.unwrap();
        };
        after_writes(phase_end).await;

        // 1. A dies under the clients: each moves to B and resumes there.
        kill_under(&rust, &mut a, (&b, &b_url), 2, "A was killed").await;
        phase_end += WRITES_PER_PHASE;
        after_writes(phase_end).await;

        // 2. A comes back on its address; nobody needs it yet.
        restart(&mut a, &aws_flags(&res, &res.queue_url)).await;
        ready(&a).await;
        target.send_replace(a_addr);
        phase_end += WRITES_PER_PHASE;
        after_writes(phase_end).await;

        // 3. B dies too: each client moves back to A.
        kill_under(&rust, &mut b, (&a, &a_url), 3, "B was killed").await;
        phase_end += WRITES_PER_PHASE;
        after_writes(phase_end).await;
    };
    let (written, ()) = tokio::join!(writes, scenario);
    written.unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log_tail(30), b.log_tail(30)));

    // A holds every acknowledged write, as the store does.
    let truth = writer.truth().await.unwrap();
    let lost = writer.compare_record(&truth);
    assert!(lost.is_empty(), "writes lost:\n  {}", lost.join("\n  "));
    let written_keys: Vec<String> = writer.keys().cloned().collect();
    converge_on(&truth, &written_keys, &rust, &mut [])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));

    // Each client synced three times (A, B, A again) and was never sent a full state
    // after its first, which was empty: both moves resumed by what it held.
    let report = resumed_every_time(&rust, 3);
    eprintln!(
        "failover: passed in {:.1} s ({} writes);{report}",
        started.elapsed().as_secs_f64(),
        *progress_rx.borrow()
    );
    for c in rust {
        c.client.close().await;
    }
    a.kill().await;
}

/// What client `i` watches: every other one part of the tenant (the anchor
/// included).
fn prefixes(i: usize) -> Vec<String> {
    if i % 2 == 1 {
        vec!["tenant_config_a".into(), "tenant_config_fo1".into()]
    } else {
        Vec::new()
    }
}

/// Kills `killed` (SIGKILL) under the clients, and waits until each moved to the
/// instance `to` (at its URL) and resumed there: its `syncs`-th initial state, with
/// `to` counting every client's stream.
async fn kill_under(
    rust: &[RustClient],
    killed: &mut Server,
    to: (&Server, &str),
    syncs: u64,
    what: &str,
) {
    let t = Instant::now();
    killed.kill().await;
    on(rust, to.1, syncs, what).await;
    eprintln!(
        "failover: every client on {} {} ms after {what}",
        to.1,
        t.elapsed().as_millis()
    );
    let streams = format!("every client's stream on {} after {what}", to.1);
    wait_for_streams(admin_of(to.0), rust.len() as u64, &streams).await;
}

/// Waits until every client uses `url`, is connected, and has synced `syncs` times
/// (its first state, then once per move).
async fn on(rust: &[RustClient], url: &str, syncs: u64, when: &str) {
    let elsewhere = RefCell::new(Vec::new());
    let moved = poll(PATIENCE, || async {
        let mut not = Vec::new();
        for c in rust {
            let s = c.client.status();
            if s.server != url || !s.connected || s.syncs < syncs {
                not.push(format!(
                    "{}: on {}, {:?}, {} syncs, last error {:?}",
                    c.name, s.server, s.state, s.syncs, s.last_error
                ));
            }
        }
        let done = not.is_empty();
        *elsewhere.borrow_mut() = not;
        done.then_some(())
    })
    .await;
    assert!(
        moved.is_ok(),
        "after {when}, not every client was on {url} within {PATIENCE:?}:\n  {}",
        elsewhere.into_inner().join("\n  ")
    );
}
