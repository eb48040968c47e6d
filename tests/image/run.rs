//! The built image run as a container runtime runs it: its own command (entrypoint
//! and cmd) in a container of it (`buildah run`, chroot isolation, so the host's
//! network), with the image's user and environment, only the two listen addresses
//! moved to free ports on 127.0.0.1. Then used as a client and an operator would:
//! gRPC health, a token made inside the container, a Put and a Get through the Rust
//! client, the image's health check command, the user and the data directory seen
//! from /proc, SIGTERM. Knows what the image promises (user, data directory),
//! through [`Config`]; how it was built is `main`'s.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use configwatch_client::proto::config_service_client::ConfigServiceClient;
use configwatch_client::proto::{GetRequest, PutRequest};
use configwatch_test_support::ServerProcess;
use tonic::metadata::{Ascii, MetadataValue};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::buildah::{Buildah, check, tail};
use crate::{Config, DATA_DIR, IMAGE, common};

/// The server's default `--shutdown-grace`, and time to exit after it.
const SHUTDOWN: Duration = Duration::from_secs(15);
/// The uid and gid the image runs as.
const USER_ID: &str = "65532";

/// A free port on 127.0.0.1 (bound, then let go for the server to take).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs the image's command in a container of it and uses the server as a client
/// and an operator would.
pub async fn run(buildah: &Buildah, config: &Config) {
    let started = Instant::now();
    let container = buildah.run(&["from", IMAGE]);
    let listen = format!("CONFIGWATCH_LISTEN=127.0.0.1:{}", free_port());
    let admin = format!("CONFIGWATCH_ADMIN_LISTEN=127.0.0.1:{}", free_port());
    // `buildah run ARGS CONTAINER -- COMMAND`, with the image's user and environment.
    let in_container = |command: &[String]| -> Command {
        let mut args = vec![
            "run",
            "--isolation",
            "chroot",
            "--env",
            &listen,
            "--env",
            &admin,
        ];
        args.extend([container.as_str(), "--"]);
        args.extend(command.iter().map(String::as_str));
        buildah.command(&args)
    };
    let log_path = buildah.dir().join("server.log");
    let mut serve = in_container(&config.command);
    serve.stderr(std::fs::File::create(&log_path).unwrap());
    let server = ServerProcess::try_start(serve)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server_log(&log_path)));
    let pid = ServerPid(find_server(server.pid()));

    // The image's user and data directory, as the kernel sees them.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.0)).unwrap();
    for field in ["Uid:", "Gid:"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert!(ids.iter().all(|id| *id == USER_ID), "{line}");
    }
    let store = format!("{DATA_DIR}/store.redb");
    let open: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", pid.0))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        open.iter().any(|p| p.ends_with(&store)),
        "{store} in {open:?}"
    );

    common::wait_for_health(server.addr, ServingStatus::Serving).await;

    // A token from the key the server made in its data directory.
    let mut token_command = vec![config.command[0].clone()];
    token_command.extend(["token", "--tenant", "acme", "--role", "writer"].map(String::from));
    let out = in_container(&token_command).output().unwrap();
    check("configwatch token in the container", &out);
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    put_and_get(&server.url(), &token).await;

    let out = in_container(&config.healthcheck).output().unwrap();
    assert!(
        out.status.success(),
        "the health check exited {}: {}",
        out.status,
        tail(&out.stderr, 5)
    );

    // SIGTERM to the server (what `docker stop` sends its first process): it
    // drains and exits 0, and so does the runner.
    let sent = Command::new("kill")
        .args(["-TERM", &pid.0.to_string()])
        .status();
    assert!(sent.unwrap().success());
    let exit = server.exited(SHUTDOWN).await;
    let log = server_log(&log_path);
    assert!(exit.as_ref().is_ok_and(|s| s.success()), "{exit:?}\n{log}");
    // The image's log format, and the data directory it says it serves from.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["data_dir"] == DATA_DIR),
        "no line with data_dir {DATA_DIR}\n{log}"
    );
    eprintln!("image test: ran and stopped in {:.1?}", started.elapsed());
}

/// A Put, then a Get and a client's cache through the Rust client library.
async fn put_and_get(url: &str, token: &str) {
    let key = "tenant_config_image";
    // As the server keeps it: JSON without insignificant whitespace, numbers as written.
    let value = r#"{"built":"buildah","n":1.50,"list":[1,2]}"#;
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rpc = ConfigServiceClient::new(channel);
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse().unwrap();
    let put = rpc
        .put(authorized(
            &bearer,
            PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.entry.unwrap().version, 1);
    let got = rpc
        .get(authorized(
            &bearer,
            GetRequest {
                keys: vec![key.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<(String, String)> =
        got.entries.into_iter().map(|e| (e.key, e.value)).collect();
    assert_eq!(entries, [(key.to_owned(), value.to_owned())]);

    let client = configwatch_client::Client::builder(
        url,
        "acme",
        configwatch_client::static_token(token.to_owned()),
    )
    .prefixes(["tenant_config_"])
    .connect()
    .await
    .unwrap();
    let held = client.get_raw(key).expect("the client holds the key");
    assert_eq!((&*held.value, held.version), (value, 1));
}

/// `body` with its bearer token.
fn authorized<T>(bearer: &MetadataValue<Ascii>, body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// The server's process: the `configwatch` below the runner `runner`.
fn find_server(runner: u32) -> u32 {
    let started = Instant::now();
    loop {
        if let Some(pid) = descendants(runner).into_iter().find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.ends_with("usr/local/bin/configwatch"))
        }) {
            return pid;
        }
        assert!(
            started.elapsed() < configwatch_test_support::PATIENCE,
            "no configwatch process below buildah run ({runner})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every process below `pid`, from /proc's parent links.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 2..];
            Some((p, after.split(' ').nth(1)?.parse().ok()?))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

/// The server's pid, killed when dropped (a failed test must not leave it
/// running, even if its runner is killed first).
struct ServerPid(u32);

impl Drop for ServerPid {
    fn drop(&mut self) {
        // Only while the pid is still the server's (it may have exited, and the
        // number been given to another process since).
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.0));
        if !exe.is_ok_and(|exe| exe.ends_with("usr/local/bin/configwatch")) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn server_log(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    format!("--- the server's log (end) ---\n{}", tail(&text, 40))
}
