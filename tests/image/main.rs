//! The container image as users build and run it: `deploy/Containerfile` built with
//! Debian's buildah (no daemon: vfs storage, chroot isolation) on base images made
//! here (`bases`), its configuration checked (user, volume, ports, health check,
//! entrypoint, labels, size), then its own command run in a container of it, with
//! the image's user and environment, only the two listen addresses moved to free
//! ports on 127.0.0.1 (chroot isolation shares the host's network): gRPC health,
//! a token made inside the container, a Put and a Get through the Rust client, the
//! health check command, the user and data directory seen from /proc, and a
//! SIGTERM that drains and exits 0.
//!
//! Slow (a release build in a container: minutes on both cores), so it is
//! `#[ignore]`d and run on its own, as root with `buildah` and `debootstrap`
//! installed: `cargo test --workspace --test image -- --ignored --nocapture`
//! (which shows its timings), as tests/run does after everything else. `CONFIGWATCH_SKIP_IMAGE_TEST=1` skips it. Root filesystems and buildah's
//! cache mounts are kept under `~/.cache/configwatch/image/`, so a second run
//! compiles only what changed; everything else is removed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bases;
mod buildah;
#[path = "../common/mod.rs"]
mod common;
mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use buildah::{Buildah, check};
use serde_json::Value;

/// Given by the build argument of that name; the label is empty without it.
const SOURCE_URL: &str = "https://example.com/configwatch.git";
/// Set to 1 to skip this test (it says so on stderr).
const SKIP: &str = "CONFIGWATCH_SKIP_IMAGE_TEST";
/// The image this test builds, in its own storage.
pub const IMAGE: &str = "localhost/configwatch-test/configwatch";
/// The runtime image holds the binary, not the toolchain (which alone is 600 MB).
const MAX_IMAGE_BYTES: u64 = 150_000_000;
/// The user the image runs as (distroless's `nonroot`).
const USER: &str = "65532:65532";
pub const DATA_DIR: &str = "/var/lib/configwatch";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: builds the image (a release build, minutes); run alone with `cargo test --workspace --test image -- --ignored --nocapture` as root with buildah and debootstrap"]
async fn the_image_builds_and_its_command_serves_as_its_user() {
    if std::env::var(SKIP).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: the image test ({SKIP}=1); it did not run");
        return;
    }
    preflight();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = cache_dir();
    eprintln!("image test: disk before: {}", free_space());
    let buildah = Buildah::new(&std::env::temp_dir(), &cache.join("buildah-cache"));

    bases::make(&buildah, &cache);
    build(&buildah, repo);
    let config = image_config(&buildah);
    let bytes = buildah.image_bytes(IMAGE);
    eprintln!("image test: the image is {:.1} MB", bytes as f64 / 1e6);
    assert!(
        bytes < MAX_IMAGE_BYTES,
        "the image is {bytes} bytes, more than {MAX_IMAGE_BYTES}: is the toolchain in it?"
    );

    run::run(&buildah, &config).await;
    drop(buildah);
    eprintln!("image test: disk after: {}", free_space());
}

/// Fails, saying what to install, where the test cannot run.
fn preflight() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let missing: Vec<&str> = ["buildah", "debootstrap"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    assert!(
        root && missing.is_empty(),
        "the image test needs root and Debian's buildah and debootstrap \
         (`apt-get install buildah debootstrap`){}{}; set {SKIP}=1 to skip it",
        if root { "" } else { "; this is not root" },
        if missing.is_empty() {
            String::new()
        } else {
            format!("; missing: {}", missing.join(", "))
        }
    );
}

/// `~/.cache/configwatch/image`: root filesystems and buildah's cache mounts.
fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let dir = Path::new(&home).join(".cache/configwatch/image");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_space() -> String {
    let out = Command::new("df")
        .args(["-h", "--output=avail", "/"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .last()
            .unwrap_or("?")
            .to_owned()
            + " free on /"
    })
    .unwrap_or_else(|e| e.to_string())
}

/// Builds the Containerfile as users do, the bases passed by build argument.
fn build(buildah: &Buildah, repo: &Path) {
    let started = Instant::now();
    let runtime = format!("BASE_IMAGE={}", bases::RUNTIME_BASE);
    let rust = format!("RUST_IMAGE={}", bases::BUILD_BASE);
    let mut bud = buildah.command(&[
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--pull-never",
        "--build-arg",
        &rust,
        "--build-arg",
        &runtime,
        "--build-arg",
        &format!("SOURCE_URL={SOURCE_URL}"),
        "-f",
        "deploy/Containerfile",
        "-t",
        IMAGE,
        ".",
    ]);
    let out = bud.current_dir(repo).output().expect("run buildah bud");
    check("buildah bud", &out);
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let compiled = log
        .lines()
        .filter(|l| l.trim_start().starts_with("Compiling "))
        .count();
    eprintln!(
        "image test: built in {:.1?}, {compiled} crates compiled",
        started.elapsed()
    );
}

/// What the test takes from the image's configuration to run it.
pub struct Config {
    /// Entrypoint and cmd: the command a runtime starts.
    pub command: Vec<String>,
    /// The health check's command (without Docker's `CMD`).
    pub healthcheck: Vec<String>,
}

/// Checks the image's configuration as Docker, ECS and buildah read it.
fn image_config(buildah: &Buildah) -> Config {
    let inspect = buildah.inspect_image(IMAGE);
    let oci = &inspect["OCIv1"]["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a list: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let entrypoint = strings(&oci["Entrypoint"]);
    let cmd = strings(&oci["Cmd"]);
    assert_eq!(entrypoint, ["/usr/local/bin/configwatch"]);
    assert_eq!(cmd, ["serve"]);
    assert_eq!(oci["User"], USER);
    assert_eq!(oci["StopSignal"], "SIGTERM");
    let env = strings(&oci["Env"]);
    for want in [
        "CONFIGWATCH_LISTEN=0.0.0.0:50051",
        "CONFIGWATCH_ADMIN_LISTEN=0.0.0.0:9090",
        "CONFIGWATCH_DATA_DIR=/var/lib/configwatch",
        "CONFIGWATCH_LOG_FORMAT=json",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} in {env:?}");
    }
    let keys = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&oci["Volumes"]), [DATA_DIR]);
    assert_eq!(keys(&oci["ExposedPorts"]), ["50051/tcp", "9090/tcp"]);
    let labels = &oci["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "configwatch");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(labels["org.opencontainers.image.source"], SOURCE_URL);
    // Docker-format only: an OCI image has no health check.
    let test = strings(&inspect["Docker"]["config"]["Healthcheck"]["Test"]);
    assert_eq!(test, ["CMD", "/usr/local/bin/configwatch", "health"]);
    Config {
        command: entrypoint.into_iter().chain(cmd).collect(),
        healthcheck: test[1..].to_vec(),
    }
}
