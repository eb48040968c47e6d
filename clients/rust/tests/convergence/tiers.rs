//! Three tiers under chaos: an origin on the embedded store, relay 1 watching it,
//! relay 2 watching relay 1, and clients of both languages on every tier, each tier
//! behind a proxy of its own. A writer makes random compare-and-set writes, most to
//! the origin and some through either relay (which forwards them with the writer's
//! token), while each round kills (SIGKILL, sometimes SIGTERM) and restarts the
//! process of any tier, and cuts (FIN or RST) or silences (half-open connections, a
//! hung server) any link: a tier's link to its clients, or a relay's link to its
//! upstream. After each round, once writes stop:
//!
//! - the origin's state (a `Get` of the whole tenant) equals the writer's record of
//!   what was acknowledged;
//! - each relay's view (a `Get` on it) equals the origin's state, and the relay
//!   neither says it is cut off from its upstream nor is not ready (`/readyz`);
//! - every client on every tier holds that state, is connected, and saw no version
//!   go back (the suite's `converge_on`);
//! - nothing was resent in full: no client was sent a full state after its first,
//!   and no relay process more than one from its upstream (its first, as it started
//!   with nothing): every reconnect, across restarts of either side, resumed by
//!   token, digest or versions.
//!
//! Environment: the suite's (`CONFIGWATCH_CONVERGENCE_ROUNDS` [10 here],
//! `CONFIGWATCH_CONVERGENCE_CLIENTS` per language and tier [1 here],
//! `CONFIGWATCH_CONVERGENCE_WRITES` [60], `CONFIGWATCH_CONVERGENCE_KEYS` [36],
//! `CONFIGWATCH_CONVERGENCE_SEED`).
//!
//! Boundary: the scenario and its checks. The tiers' processes and links are
//! `process`, the chaos `chaos`.

use super::*;

mod chaos;
mod process;

use self::chaos::*;
use self::process::*;

/// Rounds and clients (per language and tier) unless the environment says: ten
/// rounds kill each tier at least three times, and cut each link and freeze it.
const ROUNDS: usize = 10;
const CLIENTS_PER_TIER: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tiers_converge_through_kills_cuts_and_freezes_of_any_tier() {
    let mut config = Config::from_env();
    if std::env::var_os("CONFIGWATCH_CONVERGENCE_ROUNDS").is_none() {
        config.rounds = ROUNDS;
    }
    if std::env::var_os("CONFIGWATCH_CONVERGENCE_CLIENTS").is_none() {
        config.clients = CLIENTS_PER_TIER;
    }
    let driver = typescript_driver();
    let clients = format!(
        "{} Rust + {} TypeScript clients per tier",
        config.clients, config.clients
    );
    scenario("tiers", &config, &clients, async |dir| {
        run_tiers(&config, &driver, dir).await
    })
    .await;
}

async fn run_tiers(config: &Config, driver: &Driver, dir: &Path) -> Result<String, String> {
    let keys = key_space(config.keys);
    let mut writes_rng = StdRng::seed_from_u64(config.seed);
    let mut chaos_rng = StdRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15);

    let tiers = Tiers::start(dir).await?;
    let origin_data = tiers.tiers[0].server.data_dir.clone();
    let token_file = dir.join("reader.token");
    let _refresher = keep_refreshing(&origin_data, &token_file).await?;
    let writer_token = mint_token(&server_bin(), &origin_data, TENANT, "writer", "24h").await?;
    let mut addresses = tiers.addresses();
    let mut writer = Writer::new(addresses.remove(0), &writer_token, &keys);
    writer.relays = addresses;

    // Clients start before the first write: nothing can be applied before their
    // change recorders are attached. Each tier's clients watch different parts.
    let mut clients = Clients {
        rust: Vec::new(),
        ts: Vec::new(),
        per_tier: config.clients,
    };
    for tier in &tiers.tiers {
        for j in 0..config.clients {
            let name = format!("{}-rust-{j}", tier.name());
            let prefixes = prefixes_of(tier.depth + j);
            clients
                .rust
                .push(RustClient::start(name, &tier.url(), &token_file, prefixes).await?);
            let name = format!("{}-ts-{j}", tier.name());
            let log = dir.join(format!("{name}.log"));
            let prefixes = prefixes_of(tier.depth + j + 1);
            clients.ts.push(
                TsClient::start(driver, name, &tier.url(), &token_file, prefixes, &log).await?,
            );
        }
    }

    let mut chaos = TierChaos {
        tiers,
        stats: TierChaosStats::default(),
    };
    let mut converge = Vec::new();
    for round in 1..=config.rounds {
        let plan = plan_tier_round(&mut chaos_rng, round, config.writes);
        let plan_text = plan
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let (progress, progress_rx) = watch::channel(0usize);
        let failed = |tiers: &Tiers, e: String| {
            format!(
                "round {round}: {e}\nplan: {plan_text}\n{}",
                tiers.log_tails(30)
            )
        };
        // The first error stops both.
        tokio::try_join!(
            writer.round(&mut writes_rng, config.writes, &progress),
            chaos.round(&plan, progress_rx, &mut chaos_rng, &mut clients)
        )
        .map_err(|e| failed(&chaos.tiers, e))?;

        let t = Instant::now();
        check_tiers(&mut writer, &chaos.tiers, &mut clients)
            .await
            .map_err(|e| failed(&chaos.tiers, e))?;
        let took = t.elapsed();
        converge.push(took);
        eprintln!(
            "tiers: round {round}/{}: {} writes, chaos: {plan_text}; converged in {} ms",
            config.rounds,
            config.writes,
            took.as_millis()
        );
    }

    let summary = summary(&writer, &chaos, &converge, &mut clients).await?;
    for c in clients.rust {
        c.client.close().await;
    }
    for c in clients.ts {
        c.close().await?;
    }
    chaos.tiers.kill_all().await;
    Ok(summary)
}

/// After a round: the origin holds what was acknowledged, every relay's view and
/// every client on every tier holds the origin's state, and nothing was resent in
/// full.
async fn check_tiers(
    writer: &mut Writer,
    tiers: &Tiers,
    clients: &mut Clients,
) -> Result<(), String> {
    let truth = writer.truth().await?;
    let lost = writer.compare_record(&truth);
    if !lost.is_empty() {
        return Err(format!(
            "the origin's state differs from the writes it acknowledged:\n  {}",
            lost.join("\n  ")
        ));
    }
    for tier in &tiers.tiers[1..] {
        relay_holds(writer, tier, &truth).await?;
        relay_ready(tier).await?;
    }
    let keys: Vec<String> = writer.keys().cloned().collect();
    converge_on(&truth, &keys, &clients.rust, &mut clients.ts).await?;
    let resent = full_resends(tiers, clients).await?;
    if !resent.is_empty() {
        return Err(format!(
            "states were sent in full again, though every receiver held one:\n  {}",
            resent.join("\n  ")
        ));
    }
    // Nothing may have moved in the meantime: no writes happen now.
    let again = writer.truth().await?;
    if again != truth {
        return Err(format!(
            "the origin's state changed with no writes:\n  {}",
            differences(&truth, &again).join("\n  ")
        ));
    }
    Ok(())
}

/// Waits until a `Get` of the whole tenant on the relay `tier` answers `truth`,
/// and the relay no longer says it is cut off from its upstream.
async fn relay_holds(writer: &mut Writer, tier: &Tier, truth: &Truth) -> Result<(), String> {
    let at = tier.addr.subscribe();
    let writer = tokio::sync::Mutex::new(writer);
    let last = RefCell::new(Vec::new());
    let held = poll(CONVERGE_WITHIN, || async {
        let mut writer = writer.lock().await;
        let view = match writer.get_from(&at, proto::GetRequest::default()).await {
            Err(e) => return Some(Err(e)),
            Ok(view) => view,
        };
        if view != *truth {
            *last.borrow_mut() = differences(truth, &view);
            return None;
        }
        let request = writer.request(proto::GetRequest::default());
        match writer.rpc(&at).get(request).await {
            Err(status) => Some(Err(format!("Get: {status:?}"))),
            Ok(answer) => match answer.into_inner().disconnected_since {
                None => Some(Ok(())),
                Some(since) => {
                    *last.borrow_mut() = vec![format!(
                        "it holds the origin's state, but says it has been cut off from its \
                         upstream since {since:?}"
                    )];
                    None
                }
            },
        }
    })
    .await;
    match held {
        Ok(outcome) => outcome.map_err(|e| format!("{}: {e}", tier.name())),
        Err(_) => Err(format!(
            "{} did not come to hold the origin's state within {CONVERGE_WITHIN:?} (origin, then \
             relay):\n  {}",
            tier.name(),
            last.into_inner().join("\n  ")
        )),
    }
}

/// Waits until the relay `tier` says it is ready: its upstream answers its health
/// checks (every 2 s) again.
async fn relay_ready(tier: &Tier) -> Result<(), String> {
    let last = RefCell::new(String::new());
    let ready = poll(CONVERGE_WITHIN, || async {
        let (ready, answer) = tier.ready().await?;
        *last.borrow_mut() = answer;
        ready.then_some(())
    })
    .await;
    ready.map_err(|_| {
        format!(
            "{} holds the origin's state but is not ready within {CONVERGE_WITHIN:?}: {}",
            tier.name(),
            last.into_inner()
        )
    })
}

/// The keys where `b` differs from `a`.
fn differences(a: &Truth, b: &Truth) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?}, then {:?}", a.get(k), b.get(k)))
        .collect()
}

/// Who was sent a state in full after holding one: a client after its first
/// state, a relay process after its first from its upstream.
async fn full_resends(tiers: &Tiers, clients: &mut Clients) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in &clients.rust {
        let status = c.client.status();
        let causes = c.recorder.lock().unwrap().causes.clone();
        let last_full = status.syncs > 1 && status.last_sync_mode == Some(SyncMode::Full);
        if causes.contains_key("Full") || last_full {
            out.push(format!(
                "{}: {} syncs, the last {:?}; changes by how they came: {causes:?}",
                c.name, status.syncs, status.last_sync_mode
            ));
        }
    }
    for c in &mut clients.ts {
        let counts = c.dump().await?.counts;
        if counts["syncs"]["full"].as_u64().unwrap_or(0) > 1 {
            out.push(format!("{}: {counts}", c.name));
        }
    }
    for tier in &tiers.tiers[1..] {
        let Some(syncs @ [full, ..]) = tier.upstream_syncs().await else {
            continue;
        };
        // A known waste, not a loss: a relay whose first upstream Watch failed gets
        // a second full state (the relay's `feed_for`).
        let allowed = 1 + u64::from(tier.first_upstream_watch_failed());
        if full > allowed {
            out.push(format!(
                "{} (its process {}): {full} full states from its upstream since it started \
                 (full, diff, resumed: {syncs:?})",
                tier.name(),
                tier.server.starts
            ));
        }
    }
    Ok(out)
}

async fn summary(
    writer: &Writer,
    chaos: &TierChaos,
    converge: &[Duration],
    clients: &mut Clients,
) -> Result<String, String> {
    let w = &writer.stats;
    let c = &chaos.stats;
    let max = converge.iter().max().copied().unwrap_or_default();
    let mut report = format!(
        "{} rounds; writes: {} creates, {} updates, {} deletes, {} secret, {} large, {} \
         through relays; {} unanswered (then found applied: {}); chaos: SIGKILL {:?}, SIGTERM \
         {:?} (origin, relay-1, relay-2), {} cuts ({} RST), {} freezes, {} hangs (clients back \
         within {} ms, relays' upstream within {} ms); convergence after writes stop: max {} ms;",
        converge.len(),
        w.creates,
        w.updates,
        w.deletes,
        w.secrets,
        w.large_values,
        w.through_relays,
        w.uncertain,
        w.applied_unanswered,
        c.kills,
        c.terms,
        c.cuts,
        c.resets,
        c.freezes,
        c.hangs,
        c.slowest_clients_back.as_millis(),
        c.slowest_upstream_back.as_millis(),
        max.as_millis(),
    );
    for tier in &chaos.tiers.tiers[1..] {
        let syncs = tier.upstream_syncs().await;
        let _ = write!(
            report,
            " {} upstream syncs (full, diff, resumed) {syncs:?};",
            tier.name()
        );
    }
    for c in &clients.rust {
        let s = c.client.status();
        let causes = c.recorder.lock().unwrap().causes.clone();
        let _ = write!(report, " {}: {} syncs {causes:?};", c.name, s.syncs);
    }
    for c in &mut clients.ts {
        let counts = c.dump().await?.counts;
        let _ = write!(report, " {}: {};", c.name, counts["syncs"]);
    }
    let _ = write!(report, "\nunanswered write errors: {:?}", w.errors);
    Ok(report)
}
