//! The workloads, each written once against [`crate::peer::Peer`] and run against
//! every peer the command line asks for, and what they share: how watchers are
//! grouped into streams, how tenants are counted, waiting on counters.
//!
//! A workload knows no system by name: [`against_each`] (or, for W1 and W5, their
//! `run_*`) picks the peers.

pub mod deliveries;
pub mod fanout;
pub mod get;
pub mod memory;
pub mod reconnect;
pub mod relay;
pub mod slow;
pub mod tree;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::peer::configwatch::Configwatch;
use crate::peer::etcd::Etcd;
use crate::peer::{Binaries, Peer};
use crate::{Against, Cli};

/// A workload's run against one peer, which [`against_each`] repeats for every peer
/// the command line asks for.
pub trait Workload {
    type Outcome;
    fn run<P: Peer>(&self, bins: &Binaries) -> impl Future<Output = Result<Self::Outcome>>;
}

/// Runs `workload` against configwatch, then against etcd with `--peer etcd`.
pub async fn against_each<W: Workload>(cli: &Cli, workload: &W) -> Result<Vec<W::Outcome>> {
    let bins = cli.binaries()?;
    let mut outcomes = vec![workload.run::<Configwatch>(&bins).await?];
    if cli.peer == Against::Etcd {
        outcomes.push(workload.run::<Etcd>(&bins).await?);
    }
    Ok(outcomes)
}

/// How watchers share watch streams.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// One watch stream per watcher.
    PerWatcher,
    /// One watch stream per connection, carrying all its watchers (peers that
    /// [`Peer::MULTIPLEXES`] only).
    Multiplexed,
}

impl Streams {
    /// Watchers `0..watchers` over `connections`: (connection, its stream's watchers)
    /// per stream.
    pub fn group(self, watchers: usize, connections: usize) -> Vec<(usize, Vec<usize>)> {
        match self {
            Streams::PerWatcher => (0..watchers).map(|w| (w % connections, vec![w])).collect(),
            Streams::Multiplexed => {
                let mut per: Vec<Vec<usize>> = vec![Vec::new(); connections];
                for w in 0..watchers {
                    per[w % connections].push(w);
                }
                per.into_iter()
                    .enumerate()
                    .filter(|(_, ws)| !ws.is_empty())
                    .collect()
            }
        }
    }

    /// The system's name in the tables: a peer that multiplexes says how it ran.
    pub fn label<P: Peer>(self) -> String {
        match (P::MULTIPLEXES, self) {
            (false, _) => P::NAME.to_string(),
            (true, Streams::PerWatcher) => format!("{} (stream per watcher)", P::NAME),
            (true, Streams::Multiplexed) => format!("{} (multiplexed)", P::NAME),
        }
    }
}

/// Tenants the watchers spread over: as given, or one per 100 watchers; at least
/// one and at most `cap`.
pub fn tenants(given: Option<usize>, watchers: usize, cap: usize) -> usize {
    given
        .unwrap_or((watchers / 100).max(1))
        .clamp(1, cap.max(1))
}

/// Waits until `counter` reaches `want`, polling every `step`; fails after `limit`
/// saying what `what` (e.g. "watchers became ready") counted.
pub async fn wait_for(
    counter: &AtomicUsize,
    want: usize,
    limit: Duration,
    step: Duration,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} {what} within {limit:?}",
                counter.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(step).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_grouped_round_robin() {
        assert_eq!(
            Streams::PerWatcher.group(3, 2),
            vec![(0, vec![0]), (1, vec![1]), (0, vec![2])]
        );
        assert_eq!(
            Streams::Multiplexed.group(3, 4),
            vec![(0, vec![0]), (1, vec![1]), (2, vec![2])]
        );
        assert_eq!(
            Streams::Multiplexed.group(5, 2),
            vec![(0, vec![0, 2, 4]), (1, vec![1, 3])]
        );
    }

    #[test]
    fn labels_and_tenants() {
        assert_eq!(Streams::PerWatcher.label::<Configwatch>(), "configwatch");
        assert_eq!(
            Streams::PerWatcher.label::<Etcd>(),
            "etcd (stream per watcher)"
        );
        assert_eq!(Streams::Multiplexed.label::<Etcd>(), "etcd (multiplexed)");
        assert_eq!(tenants(None, 10_000, 10_000), 100);
        assert_eq!(tenants(None, 50, 50), 1);
        assert_eq!(tenants(Some(1), 10_000, 10_000), 1);
        assert_eq!(tenants(Some(500), 100, 100), 100);
        assert_eq!(tenants(None, 10_000, 9_000), 100);
    }
}
