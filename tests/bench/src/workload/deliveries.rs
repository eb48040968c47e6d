//! The machinery of timed deliveries that W1, W5 and the relay workload share: the
//! plan of which watcher watches which tenant and which change goes where, the
//! values that carry when a change was sent, the watcher tasks that time what they
//! receive, the writer loop and the collection of latencies per change. Knows
//! nothing of which server (or which tier of servers) a watcher is connected to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::peer::{Event, PeerClient};
use crate::stats::now_us;

/// What every watcher task reports: (change index, latency in µs).
pub type Deliveries = mpsc::UnboundedSender<Vec<(u32, u64)>>;

pub struct Plan {
    pub watchers: usize,
    pub tenants: usize,
    pub changes: usize,
}

impl Plan {
    pub fn tenant_of_watcher(&self, w: usize) -> usize {
        w % self.tenants
    }
    pub fn tenant_of_change(&self, c: usize) -> usize {
        c % self.tenants
    }
    pub fn watchers_of_tenant(&self, t: usize) -> usize {
        self.watchers / self.tenants + usize::from(t < self.watchers % self.tenants)
    }
}

/// Change indexes from here on are fill changes, not measured.
pub const FILL_BASE: usize = 1 << 30;

/// The counters of one run, shared by its watcher tasks.
pub struct Tally {
    pub start: Instant,
    /// Per measured change: watchers that have it.
    pub counts: Vec<AtomicUsize>,
    /// Fill changes received by the reading watchers.
    pub fill: AtomicUsize,
    pub ready: AtomicUsize,
}

impl Tally {
    pub fn new(changes: usize) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            counts: (0..changes).map(|_| AtomicUsize::new(0)).collect(),
            fill: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
        })
    }

    /// Records a received value: a measured change's latency goes to `seen`.
    fn record(&self, value: &[u8], now: u64, seen: &mut Vec<(u32, u64)>) {
        let Some((c, sent)) = parse_stamp(value) else {
            return;
        };
        if c as usize >= FILL_BASE {
            self.fill.fetch_add(1, Ordering::Release);
            return;
        }
        seen.push((c, now.saturating_sub(sent)));
        if let Some(n) = self.counts.get(c as usize) {
            n.fetch_add(1, Ordering::Release);
        }
    }
}

/// One task per watch stream: `(client, the tenants its stream carries)`. Each
/// counts its stream ready, times every stamped value it receives and sends the
/// latencies to `tx` in batches, the rest when its stream ends.
pub fn spawn_readers<C: PeerClient>(
    streams: impl IntoIterator<Item = (C, Vec<usize>)>,
    tally: &Arc<Tally>,
    tx: &Deliveries,
) -> Vec<JoinHandle<()>> {
    let start = tally.start;
    streams
        .into_iter()
        .map(|(client, tenants)| {
            let (tx, tally) = (tx.clone(), tally.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let reader = |event: Event<'_>| match event {
                    Event::Ready => {
                        tally.ready.fetch_add(1, Ordering::Release);
                    }
                    Event::Values(values) => {
                        let now = now_us(start);
                        for value in values {
                            tally.record(value, now, &mut seen);
                        }
                        if seen.len() >= 64 {
                            let _ = tx.send(std::mem::take(&mut seen));
                        }
                    }
                };
                let _ = client.watch(&tenants, reader).await;
                let _ = tx.send(seen);
            })
        })
        .collect()
}

/// The latencies (µs) of each measured change, until every watcher task is done.
pub async fn collect(
    mut rx: mpsc::UnboundedReceiver<Vec<(u32, u64)>>,
    changes: usize,
) -> Vec<Vec<u64>> {
    let mut per_change = vec![Vec::new(); changes];
    while let Some(batch) = rx.recv().await {
        for (c, lat) in batch {
            if let Some(slot) = per_change.get_mut(c as usize) {
                slot.push(lat);
            }
        }
    }
    per_change
}

/// What the watchers received of some of the changes.
pub struct Received {
    /// Every latency (µs).
    pub all: Vec<u64>,
    /// Per change, the time until its last watcher had it (ms).
    pub last: Vec<f64>,
    /// Deliveries expected by the plan that never came.
    pub missing: u64,
}

/// What the watchers received of the changes `which` selects.
pub fn received(plan: &Plan, per_change: &[Vec<u64>], which: impl Fn(usize) -> bool) -> Received {
    let mut out = Received {
        all: Vec::new(),
        last: Vec::new(),
        missing: 0,
    };
    for (c, lats) in per_change.iter().enumerate().filter(|(c, _)| which(*c)) {
        out.all.extend_from_slice(lats);
        out.last
            .push(lats.iter().max().copied().unwrap_or(0) as f64 / 1000.0);
        let expected = plan.watchers_of_tenant(plan.tenant_of_change(c)) as u64;
        out.missing += expected.saturating_sub(lats.len() as u64);
    }
    out
}

/// Runs the writer loop: change c goes to its tenant, and the next one waits until
/// every watcher of that tenant has it (or the timeout).
pub async fn drive_changes<F, Fut>(
    plan: &Plan,
    counts: &[AtomicUsize],
    timeout: Duration,
    mut write: F,
) -> Result<()>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for (c, delivered) in counts.iter().enumerate().take(plan.changes) {
        let t = plan.tenant_of_change(c);
        write(c, t).await?;
        let want = plan.watchers_of_tenant(t);
        let deadline = Instant::now() + timeout;
        while delivered.load(Ordering::Acquire) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// The value a change carries: its index and when it was sent (µs since start).
pub fn stamp(change: usize, sent_us: u64) -> String {
    format!("[{change},{sent_us}]")
}

/// A stamp padded with a string to about `bytes` (still a JSON array).
pub fn padded_stamp(change: usize, sent_us: u64, bytes: usize) -> String {
    let pad = bytes.saturating_sub(32);
    format!("[{change},{sent_us},\"{}\"]", "x".repeat(pad))
}

fn parse_stamp(value: &[u8]) -> Option<(u32, u64)> {
    let value = std::str::from_utf8(value).ok()?;
    let inner = value.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut fields = inner.splitn(3, ',');
    let c = fields.next()?.trim().parse().ok()?;
    let t = fields.next()?.trim().parse().ok()?;
    Some((c, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        assert_eq!(parse_stamp(stamp(7, 1234).as_bytes()), Some((7, 1234)));
        let padded = padded_stamp(FILL_BASE + 1, 99, 200);
        assert_eq!(padded.len(), 200 - 32 + 18);
        assert_eq!(
            parse_stamp(padded.as_bytes()),
            Some(((FILL_BASE + 1) as u32, 99))
        );
        assert_eq!(parse_stamp(b"{\"k\":1}"), None);
    }

    #[test]
    fn changes_go_round_the_tenants() {
        let plan = Plan {
            watchers: 10,
            tenants: 3,
            changes: 6,
        };
        assert_eq!(
            (0..3).map(|t| plan.watchers_of_tenant(t)).sum::<usize>(),
            10
        );
        assert_eq!(plan.watchers_of_tenant(0), 4);
        assert_eq!(plan.tenant_of_change(4), 1);
        assert_eq!(plan.tenant_of_watcher(5), 2);
    }

    #[test]
    fn received_counts_the_selected_changes() {
        let plan = Plan {
            watchers: 4,
            tenants: 2,
            changes: 4,
        };
        let per_change = vec![vec![1000, 3000], vec![2000], vec![], vec![5000, 4000]];
        let odd = received(&plan, &per_change, |c| c % 2 == 1);
        assert_eq!(odd.all, vec![2000, 5000, 4000]);
        assert_eq!(odd.last, vec![2.0, 5.0]);
        assert_eq!(odd.missing, 1);
        let all = received(&plan, &per_change, |_| true);
        assert_eq!(all.missing, 3);
    }
}
