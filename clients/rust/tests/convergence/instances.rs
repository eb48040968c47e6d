//! Two instances over the same AWS sources on moto, for `spread`, `failover` and
//! `origins` (where they are a relay's upstreams): one DynamoDB table whose stream
//! both read, one Parameter Store root, and a queue each (the EventBridge rule hands
//! every event to both); their flags, the tokens signed by their shared key, and the
//! Watch streams each holds.
//!
//! Boundary: processes, flags and the admin listener; nothing of the clients.

use super::*;

use std::cell::Cell;

use configwatch_test_support::moto::{Moto, REGION, ROOT, Resources};
use configwatch_test_support::{PATIENCE, Scrape, http_get};

/// The seed of a test's writes: `CONFIGWATCH_CONVERGENCE_SEED`, else a random one;
/// printed, to replay a run.
pub(crate) fn seed_from_env(test: &str) -> u64 {
    let seed = std::env::var("CONFIGWATCH_CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: seed {seed} (replay with CONFIGWATCH_CONVERGENCE_SEED={seed})");
    seed
}

/// moto with the resources, and two instances on them, not started yet: A reads
/// `res.queue_url`, B `b_queue`.
pub(crate) struct Instances {
    pub(crate) moto: Moto,
    pub(crate) res: Resources,
    pub(crate) b_queue: String,
    pub(crate) a: Server,
    pub(crate) b: Server,
}

impl Instances {
    /// Data and logs under `dir`.
    pub(crate) async fn new(dir: &Path) -> Instances {
        let moto = Moto::start();
        let res = moto.create_resources(Duration::from_secs(2)).await;
        // B's queue: the rule hands every Parameter Store event to both queues.
        let b_queue = moto
            .add_event_queue("configwatch-parameter-changes-b", Duration::from_secs(2))
            .await;
        let data_dir = dir.join("data");
        let a = instance(&moto, &data_dir, dir.join("a"));
        let b = instance(&moto, &data_dir, dir.join("b"));
        Instances {
            moto,
            res,
            b_queue,
            a,
            b,
        }
    }
}

/// The readers' token file under `dir` (a token for 10 minutes) and a writer's
/// token, signed by the instances' shared key: on AWS their data directory holds
/// nothing else. An instance must have started (it creates the key).
pub(crate) async fn tokens(dir: &Path) -> (PathBuf, String) {
    let data_dir = dir.join("data");
    let token_file = dir.join("reader.token");
    let reader = mint_token(&server_bin(), &data_dir, TENANT, "reader", "10m")
        .await
        .unwrap();
    std::fs::write(&token_file, reader).unwrap();
    let writer = mint_token(&server_bin(), &data_dir, TENANT, "writer", "10m")
        .await
        .unwrap();
    (token_file, writer)
}

/// A server on the AWS backend of `moto`, logging into `logs`.
pub(crate) fn instance(moto: &Moto, data_dir: &Path, logs: PathBuf) -> Server {
    std::fs::create_dir_all(&logs).unwrap();
    let mut server = Server::new(data_dir.to_owned(), logs);
    server.env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    server
}

/// The flags of an instance reading `res` with its own `queue`, without a maximum
/// connection age.
pub(crate) fn aws_flags<'a>(res: &'a Resources, queue: &'a str) -> Vec<&'a str> {
    vec![
        "--backend",
        "aws",
        "--table",
        &res.table,
        "--queue-url",
        queue,
        "--ssm-root",
        ROOT,
        "--region",
        REGION,
        "--stream-poll-interval",
        "100ms",
        // Nothing may be repaired by a re-read during the test.
        "--reconcile-interval",
        "10m",
        "--admin-listen",
        "127.0.0.1:0",
    ]
}

pub(crate) fn admin_of(server: &Server) -> SocketAddr {
    server
        .process
        .as_ref()
        .and_then(|p| p.admin)
        .expect("the instance's admin listener")
}

/// `configwatch_watch_streams_open` of the instance whose admin listener is `admin`
/// (once it has started: it opens its ports before it reaches AWS).
pub(crate) async fn streams_open(admin: SocketAddr) -> u64 {
    Scrape::take(admin)
        .await
        .value("configwatch_watch_streams_open") as u64
}

/// Waits until the instance whose admin listener is `admin` has `n` Watch streams
/// open (all of the watchers: none is between two connections).
pub(crate) async fn wait_for_streams(admin: SocketAddr, n: u64, what: &str) {
    let last = Cell::new(0);
    let reached = poll(PATIENCE, || async {
        last.set(streams_open(admin).await);
        (last.get() >= n).then_some(())
    })
    .await;
    assert!(
        reached.is_ok(),
        "{what}: {} Watch streams open, not {n}",
        last.get()
    );
}

/// Starts `server` again on its port, which a killed process may leave unbindable
/// for a moment.
pub(crate) async fn restart(server: &mut Server, flags: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match server.start_with(4096, flags).await {
            Ok(_) => return,
            Err(e) if e.contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restarting on port {}: {e}", server.port),
        }
    }
}

/// Waits until `server` says it is ready (`/readyz`: its keys and sources up).
pub(crate) async fn ready(server: &Server) {
    let admin = admin_of(server);
    let last = RefCell::new(String::new());
    let up = poll(PATIENCE, || async {
        let answer = http_get(admin, "/readyz").await;
        *last.borrow_mut() = format!("{} {}", answer.status, answer.body);
        (answer.status == 200).then_some(())
    })
    .await;
    assert!(
        up.is_ok(),
        "{} not ready within {PATIENCE:?}: {}\n{}",
        admin,
        last.into_inner(),
        server.log_tail(30)
    );
}
