//! The client behind a relay (`configwatch serve --upstream`), every instance a real
//! process: while the relay is cut off from its origin the client stays on it,
//! serving what it holds, and its status says since when; once the origin is back the
//! mark clears and the changes made meanwhile arrive.

use super::*;

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use configwatch_test_support::{ServerProcess, mint_token, serve_command};

/// A relay takes up to its reconnect backoff's cap (10 s) to find its origin again.
const RECOVERY: Duration = Duration::from_secs(30);

/// A relay of `origin` in `dir`: the origin's signing key copied in (the relay checks
/// its clients' tokens with it) and a relay credential in a file.
async fn relay_of(origin: &Server, dir: &Path) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    let key = "signing-key.pem";
    std::fs::copy(origin.data_dir.join(key), dir.join(key)).unwrap();
    let token = mint_token(&server_bin(), &origin.data_dir, TENANT, "relay", "1h")
        .await
        .unwrap();
    let file = dir.join("relay.token");
    std::fs::write(&file, token).unwrap();
    let mut command = serve_command(&server_bin(), dir, 0);
    command
        .args(["--upstream", &origin.url(), "--progress-interval", "1s"])
        .arg("--upstream-token-file")
        .arg(&file)
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap());
    ServerProcess::start(command).await
}

/// An origin holding `tenant_config_a` at 1, a relay of it, and a reader's token.
struct Tiers {
    origin: Server,
    relay: ServerProcess,
    relay_url: String,
    token: String,
}

impl Tiers {
    async fn start(dir: &Path) -> Tiers {
        let origin = Server::start(&dir.join("origin")).await;
        origin
            .writer(TENANT)
            .await
            .put("tenant_config_a", json!(1))
            .await;
        let relay = relay_of(&origin, &dir.join("relay")).await;
        let relay_url = format!("http://{}", relay.addr);
        let token = origin.token(TENANT, "reader", "1h").await;
        Tiers {
            origin,
            relay,
            relay_url,
            token,
        }
    }
}

#[tokio::test]
async fn behind_a_relay_cut_off_from_its_origin_the_status_says_since_when_until_it_is_back() {
    let dir = temp_dir();
    let Tiers {
        mut origin,
        relay: _relay,
        relay_url,
        token,
    } = Tiers::start(dir.path()).await;
    let client = Client::builder(&relay_url, TENANT, static_token(token))
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        1
    );
    assert_eq!(client.status().server_disconnected_since, None);

    let before = SystemTime::now();
    origin.kill().await;
    wait_for(
        RECOVERY,
        || format!("{:?}", client.status()),
        || client.status().server_disconnected_since.is_some(),
    )
    .await;
    let s = client.status();
    let since = s.server_disconnected_since.unwrap();
    assert!(since <= SystemTime::now(), "{s:?}");
    assert!(
        since + Duration::from_secs(1) >= before,
        "cut off since {since:?}, the origin died at {before:?}"
    );
    // The relay keeps serving: the client stays on it, connected, with what it holds.
    assert!(s.connected && s.server == relay_url, "{s:?}");
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        1
    );

    origin.restart().await;
    let version = origin
        .writer(TENANT)
        .await
        .put("tenant_config_a", json!(2))
        .await;
    wait_for(
        RECOVERY,
        || {
            format!(
                "{:?} {:?}",
                client.status(),
                client.entry("tenant_config_a")
            )
        },
        || {
            client.status().server_disconnected_since.is_none()
                && client
                    .entry("tenant_config_a")
                    .is_some_and(|e| e.version == version)
        },
    )
    .await;
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        2
    );
    assert_eq!(client.server(), relay_url);
}

/// The lines a child process writes to `out`, as they come.
fn lines_of(out: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[tokio::test]
async fn configwatch_watch_behind_a_cut_off_relay_says_so_on_stderr_once_and_once_when_it_ends() {
    let dir = temp_dir();
    let Tiers {
        mut origin,
        relay: _relay,
        relay_url,
        token,
    } = Tiers::start(dir.path()).await;
    let mut watch = tokio::process::Command::new(server_bin())
        .args(["watch", "--server", &relay_url, "--token", &token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = lines_of(watch.stdout.take().unwrap());
    let stderr = lines_of(watch.stderr.take().unwrap());
    let said = |what: &'static str| {
        let stderr = stderr.clone();
        move || {
            stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(what))
                .count()
        }
    };
    let (cut, back) = (
        said("is cut off from its sources since"),
        said("is current with its sources again"),
    );
    let shown = || {
        format!(
            "stdout {:?}\nstderr {:?}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        )
    };
    wait_for(SECS_10, shown, || stdout.lock().unwrap().len() == 1).await;

    origin.kill().await;
    wait_for(RECOVERY, shown, || cut() == 1).await;
    let line = stderr
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("cut off"))
        .cloned()
        .unwrap();
    // The server and since when, in RFC 3339 (UTC, whole seconds).
    assert!(line.contains(&relay_url), "{line}");
    let since = line
        .split("since ")
        .nth(1)
        .unwrap()
        .split(':')
        .take(3)
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        humantime::parse_rfc3339(&since).is_ok(),
        "{since:?} in {line}"
    );

    origin.restart().await;
    origin
        .writer(TENANT)
        .await
        .put("tenant_config_a", json!(2))
        .await;
    wait_for(RECOVERY, shown, || {
        back() == 1 && stdout.lock().unwrap().len() == 2
    })
    .await;
    // Once each, and stdout holds the changes only.
    assert_eq!((cut(), back()), (1, 1), "{}", shown());
    for line in stdout.lock().unwrap().iter() {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(change["key"], "tenant_config_a", "{line}");
    }
    watch.kill().await.unwrap();
}
