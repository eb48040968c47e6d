//! Readiness that tells the truth about the sources, over the binary on moto with a
//! proxy between them that the test cuts (connections reset, new ones refused) and
//! restores: `/readyz` and gRPC health turn not ready within the grace period of a
//! source failing, and ready again when it answers; a server started while its
//! sources cannot be reached never turns ready until they can; the changes made
//! during an outage reach a watcher after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use configwatch::auth::Role;
use configwatch_test_support::moto::{Moto, REGION, ROOT, Resources};
use configwatch_test_support::{CutProxy, ServerProcess, eventually, http_get};
use tonic_health::pb::health_check_response::ServingStatus;

/// The grace the servers here run with.
const GRACE: Duration = Duration::from_secs(2);
/// How long past the grace a failure may take to show: a failed round includes the
/// SDK's own retries (five attempts, backoff up to a few seconds).
const DETECTION: Duration = Duration::from_secs(10);
const GRACE_FLAG: &str = "2s";

/// `configwatch serve --backend aws` on `res`, with short polls and the grace above;
/// `endpoints` are the AWS endpoint variables to set.
fn aws_command(
    dir: &std::path::Path,
    res: &Resources,
    endpoints: &[(&str, String)],
) -> std::process::Command {
    let mut command = serve_command(dir, &["--backend", "aws"]);
    command
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--table", &res.table, "--queue-url", &res.queue_url])
        .args(["--ssm-root", ROOT, "--region", REGION])
        .args(["--stream-poll-interval", "100ms"])
        .args(["--source-down-grace", GRACE_FLAG])
        // Changes made during an outage must arrive by the sources, not by a pass.
        .args(["--reconcile-interval", "1h"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in endpoints {
        command.env(name, value);
    }
    command
}

/// Waits until `/readyz` answers `status` with a body containing `text`; returns
/// the body.
async fn readyz(admin: SocketAddr, status: u16, text: &str, within: Duration) -> String {
    eventually(
        within,
        || format!("/readyz to answer {status} with {text:?}"),
        || async move {
            let answer = http_get(admin, "/readyz").await;
            (answer.status == status && answer.body.contains(text)).then_some(answer.body)
        },
    )
    .await
}

/// The value of the series `series` in a `/metrics` scrape, if there.
async fn series(admin: SocketAddr, series: &str) -> Option<f64> {
    let answer = http_get(admin, "/metrics").await;
    answer.body.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn sources_cut_off_turn_not_ready_within_the_grace_and_ready_again_losing_no_change() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let proxy = CutProxy::to_endpoint(&moto.endpoint).await;
    let dir = temp_dir();
    let server = ServerProcess::start(aws_command(
        dir.path(),
        &res,
        &[("AWS_ENDPOINT_URL", proxy.url())],
    ))
    .await;
    let admin = server.admin.expect("an admin address");
    readyz(admin, 200, "ready", PATIENCE).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;

    let reader = token(dir.path(), "acme", Role::Reader);
    let mut client = connect(server.addr, Some(&reader)).await;
    let mut watcher = watch(
        &mut client,
        watch_prefixes(&["tenant_config_", "param_config_"]),
    )
    .await;
    let (held, _) = initial(&mut watcher).await;
    assert!(held.is_empty(), "{held:?}");

    // AWS goes away.
    proxy.cut();
    let cut = Instant::now();
    let cut_wall = std::time::SystemTime::now();
    let reason = readyz(admin, 503, "failing for", GRACE + DETECTION).await;
    let took = cut.elapsed();
    assert!(
        took >= GRACE,
        "not ready after {took:?}, within the grace: {reason}"
    );
    // Each failing source is named, with its error.
    readyz(admin, 503, "source dynamodb-stream failing for", DETECTION).await;
    readyz(admin, 503, "source sqs-events failing for", DETECTION).await;
    wait_for_health(server.addr, ServingStatus::NotServing).await;
    // Its watchers are told too, at once: the views may be stale since the sources
    // began to fail (after the cut, before the grace ended).
    let told = next(&mut watcher).await;
    let since = told
        .disconnected_since
        .expect("the watch is told it is cut off");
    let since = std::time::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(since.seconds * 1000).unwrap_or(0));
    assert!(
        since >= cut_wall - Duration::from_secs(1) && since <= std::time::SystemTime::now(),
        "cut off since {since:?}, cut at {cut_wall:?}"
    );

    // Changes made while the server cannot see them.
    moto.put_config_item(&res.table, "acme", "flag", 1).await;
    let url = format!("{ROOT}/acme/db/url");
    moto.put_string_parameter(&url, "postgres://a").await;
    moto.ssm_change_event(&url, "Create", "String").await;

    // AWS is back: ready again, both changes arrive, and the watch is told it is
    // current again.
    proxy.restore();
    let mut arrived = Vec::new();
    let mut current = false;
    while arrived.len() < 2 || !current {
        let msg = next(&mut watcher).await;
        current = msg.disconnected_since.is_none();
        arrived.extend(msg.changes);
    }
    arrived.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<(&str, bool)> = arrived
        .iter()
        .map(|e| (e.key.as_str(), e.deleted))
        .collect();
    assert_eq!(
        keys,
        [
            ("param_config_db/url", false),
            ("tenant_config_flag", false)
        ]
    );
    assert_eq!(arrived[0].value, "\"postgres://a\"");
    assert_eq!(arrived[1].value, "true");
    readyz(admin, 200, "ready", PATIENCE).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;
}

/// moto with the template's resources, and a proxy to it that is already cut (for
/// a server started while AWS cannot be reached through it).
async fn cut_off_before_start() -> (Moto, Resources, CutProxy, tempfile::TempDir) {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let proxy = CutProxy::to_endpoint(&moto.endpoint).await;
    proxy.cut();
    (moto, res, proxy, temp_dir())
}

#[tokio::test]
async fn a_server_started_while_its_sources_are_cut_off_turns_ready_only_once_they_answer() {
    let (moto, res, proxy, dir) = cut_off_before_start().await;
    // The table and Parameter Store answer (the server starts and serves them); the
    // stream and the queue, what the sources read, do not.
    let server = ServerProcess::start(aws_command(
        dir.path(),
        &res,
        &[
            ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", proxy.url()),
            ("AWS_ENDPOINT_URL_SQS", proxy.url()),
        ],
    ))
    .await;
    let admin = server.admin.expect("an admin address");

    // Failing past the grace, and still not ready: it never worked.
    let past_grace = format!("failing for {}s", GRACE.as_secs() + 1);
    let reason = readyz(admin, 503, &past_grace, GRACE + DETECTION).await;
    assert!(
        reason.contains("source dynamodb-stream: no successful poll yet"),
        "{reason}"
    );
    let both = readyz(
        admin,
        503,
        "source sqs-events: no successful poll yet",
        PATIENCE,
    )
    .await;
    assert!(both.contains("dynamodb-stream"), "{both}");
    wait_for_health(server.addr, ServingStatus::NotServing).await;
    let age = "configwatch_source_last_success_age_seconds{source=\"dynamodb-stream\"}";
    assert_eq!(series(admin, age).await, None, "no success yet");

    proxy.restore();
    readyz(admin, 200, "ready", GRACE + DETECTION).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;
    let seconds = series(admin, age)
        .await
        .expect("the age of the last success");
    assert!(seconds < 60.0, "{seconds}");
}

/// With AWS out of reach at start, the server waits for the table before it
/// serves; meanwhile it is alive (`/healthz`, so a liveness probe does not kill
/// it), not ready, and says why; once AWS answers it starts and serves.
#[tokio::test]
async fn a_server_that_cannot_reach_aws_at_start_is_alive_and_says_it_is_starting() {
    let (_moto, res, proxy, dir) = cut_off_before_start().await;
    let server = ServerProcess::start(aws_command(
        dir.path(),
        &res,
        &[("AWS_ENDPOINT_URL", proxy.url())],
    ))
    .await;
    let admin = server.admin.expect("an admin address");
    let health = http_get(admin, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let starting = readyz(admin, 503, "starting", PATIENCE).await;
    assert_eq!(
        starting,
        "not ready: starting (waiting for the stores to answer)\n"
    );
    assert_eq!(http_get(admin, "/metrics").await.status, 503);

    proxy.restore();
    readyz(admin, 200, "ready", PATIENCE).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;
    let reader = token(dir.path(), "acme", Role::Reader);
    let mut client = connect(server.addr, Some(&reader)).await;
    get_keys(&mut client, &["tenant_config_flag"]).await;
}

#[test]
fn a_bad_source_down_grace_exits_64_before_binding() {
    let dir = temp_dir();
    for grace in ["2h", "soon"] {
        let out = serve_command(dir.path(), &["--source-down-grace", grace])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{grace}: {stderr}");
        assert!(stderr.contains("--source-down-grace"), "{grace}: {stderr}");
        assert!(out.stdout.is_empty(), "{grace}: a port was bound");
    }
}
