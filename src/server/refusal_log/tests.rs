//! The refusal log's limit on paused tokio time, read from the lines it writes.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// The log lines written while it is held, captured for the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn count(&self, what: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(what)).count()
    }

    /// Logs to this capture on the current thread (the test's runtime).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

fn log() -> RefusalLog {
    RefusalLog::new(
        DEFAULT_REFUSAL_LINES,
        DEFAULT_REFUSAL_INTERVAL,
        CancellationToken::new(),
    )
}

/// Lets the summary timer run once time has moved.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_logs_the_limit_then_one_summary_when_the_interval_ends() {
    let captured = Captured::default();
    let _guard = captured.install();
    let log = log();
    for _ in 0..100 {
        log.refused(&AuthError::Expired, "/configwatch.v1.ConfigService/Get");
    }
    assert_eq!(captured.count("token refused"), 10);
    assert_eq!(
        captured.count("more refusals"),
        0,
        "not before the interval ends"
    );

    tokio::time::advance(DEFAULT_REFUSAL_INTERVAL - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(
        captured.count("more refusals"),
        0,
        "not before the interval ends"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(captured.count("90 more refusals in the last 10s"), 1);
    assert_eq!(captured.lines().len(), 11, "{:#?}", captured.lines());

    // A new interval: lines again, up to the limit.
    for _ in 0..12 {
        log.refused(&AuthError::Expired, "/configwatch.v1.ConfigService/Get");
    }
    assert_eq!(captured.count("token refused"), 20);
    tokio::time::advance(DEFAULT_REFUSAL_INTERVAL).await;
    settle().await;
    assert_eq!(captured.count("2 more refusals in the last 10s"), 1);
}

#[tokio::test(start_paused = true)]
async fn refusals_within_the_limit_are_each_logged_with_no_summary() {
    let captured = Captured::default();
    let _guard = captured.install();
    let log = log();
    for _ in 0..3 {
        for _ in 0..DEFAULT_REFUSAL_LINES {
            log.refused(&AuthError::Missing, "/configwatch.v1.ConfigService/Watch");
        }
        tokio::time::advance(DEFAULT_REFUSAL_INTERVAL).await;
        settle().await;
    }
    assert_eq!(captured.count("token refused"), 30);
    assert_eq!(captured.count("more refusals"), 0);
    assert!(
        captured.lines()[0].contains("missing 'authorization' metadata"),
        "the reason: {:?}",
        captured.lines()[0]
    );
}

#[test]
fn a_refusal_after_the_interval_writes_the_summary_if_the_timer_has_not() {
    let start = Instant::now();
    let mut w = Window {
        limit: 1,
        interval: Duration::from_secs(10),
        start: None,
        logged: 0,
        counted: 0,
    };
    assert_eq!(w.refused(start), (Verdict::Log, None));
    assert_eq!(w.refused(start), (Verdict::Count { first: true }, None));
    assert_eq!(w.refused(start), (Verdict::Count { first: false }, None));
    let later = start + Duration::from_secs(10);
    assert_eq!(w.refused(later), (Verdict::Log, Some(2)));
    // The timer of the ended interval then finds nothing to write.
    assert_eq!(w.summary(start), None);
}
