//! The grace logic on paused time: what a source's reports make of readiness.

use super::*;

const GRACE: Duration = Duration::from_secs(30);

fn verdict(health: &SourceHealth) -> Result<(), String> {
    let state = health.snapshot().ok_or("no source")?;
    state.verdict(Instant::now(), GRACE)
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

#[tokio::test(start_paused = true)]
async fn not_ready_before_the_first_success_however_long_it_takes() {
    let health = SourceHealth::detached("dynamodb-stream");
    assert_eq!(
        verdict(&health),
        Err("source dynamodb-stream: no successful poll yet".to_owned())
    );
    health.failing("DescribeStream failed: connection refused");
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        verdict(&health),
        Err(
            "source dynamodb-stream: no successful poll yet (failing for 5s: DescribeStream failed: connection refused)"
                .to_owned()
        ),
        "a failure within the grace does not make a source that never worked ready"
    );
    advance(Duration::from_secs(3600)).await;
    assert!(verdict(&health).is_err());
    health.succeeded();
    assert_eq!(verdict(&health), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn ready_within_the_grace_not_after_and_again_on_success() -> Result<(), String> {
    let health = SourceHealth::detached("sqs-events");
    health.succeeded();
    assert_eq!(verdict(&health), Ok(()), "ready before any failure");

    health.failing("ReceiveMessage failed: first");
    let started = Instant::now();
    advance(Duration::from_secs(29)).await;
    health.failing("ReceiveMessage failed: latest");
    assert_eq!(verdict(&health), Ok(()), "still ready within the grace");
    let state = health.snapshot().ok_or("no source")?;
    assert_eq!(
        state.turns_at(Instant::now(), GRACE),
        Some(started + GRACE + Duration::from_millis(1)),
        "the failure is timed from its first round, not its latest"
    );

    advance(Duration::from_secs(2)).await;
    assert_eq!(
        verdict(&health),
        Err("source sqs-events failing for 31s: ReceiveMessage failed: latest".to_owned())
    );
    let state = health.snapshot().ok_or("no source")?;
    assert_eq!(
        state.turns_at(Instant::now(), GRACE),
        None,
        "nothing more to wait for once past the grace"
    );

    health.succeeded();
    assert_eq!(verdict(&health), Ok(()), "ready again on success");
    let state = health.snapshot().ok_or("no source")?;
    assert_eq!(state.turns_at(Instant::now(), GRACE), None);
    assert!(state.progress.last_success.is_some());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_source_that_is_not_awaited_counts_only_while_its_task_is_down() {
    let state = watch::Sender::new(SourcesState::default());
    state.send_modify(|s| {
        s.sources
            .push(SourceState::running("reconcile", Awaited::TaskOnly))
    });
    let health = SourceHealth::new(state, 0);
    assert_eq!(verdict(&health), Ok(()), "its first pass is not awaited");
    health.failing("cannot read a scope");
    advance(GRACE * 2).await;
    assert_eq!(verdict(&health), Ok(()), "its failures are only exported");

    health.task_down("its task failed: boom".to_owned());
    advance(GRACE).await;
    assert_eq!(verdict(&health), Ok(()), "down within the grace");
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        verdict(&health),
        Err("source reconcile down for 31s: its task failed: boom".to_owned())
    );
    health.task_restarted();
    assert_eq!(verdict(&health), Ok(()));
    assert_eq!(health.snapshot().map(|s| s.restarts), Some(1));
}

#[tokio::test(start_paused = true)]
async fn only_the_first_failure_and_the_recovery_wake_readers() {
    let health = SourceHealth::detached("dynamodb-stream");
    let mut readers = health.state.subscribe();
    readers.mark_unchanged();
    health.succeeded();
    assert!(readers.has_changed().unwrap_or(false), "the first success");
    readers.mark_unchanged();
    health.succeeded();
    assert!(!readers.has_changed().unwrap_or(true), "a later success");
    health.failing("one");
    assert!(readers.has_changed().unwrap_or(false), "the first failure");
    readers.mark_unchanged();
    health.failing("two");
    assert!(
        !readers.has_changed().unwrap_or(true),
        "a retry failing again"
    );
    health.succeeded();
    assert!(readers.has_changed().unwrap_or(false), "the recovery");
}
