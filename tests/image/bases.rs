//! The two base images the Containerfile is built on, made here because no image
//! registry can be reached: Debian bookworm root filesystems from `debootstrap
//! --variant=minbase` (the runtime base, as small as debian:bookworm-slim; the build
//! base with gcc, libc6-dev and CA certificates, plus this machine's own Rust
//! toolchain laid out as the official rust image has it, and its CA bundle). The root filesystems are
//! cached as tarballs between runs; the images live in the run's buildah storage.
//! Knows debootstrap, apt's source lists and rustc's sysroot; nothing of configwatch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::buildah::{Buildah, check};

/// The runtime base's name in this run's storage.
pub const RUNTIME_BASE: &str = "localhost/configwatch-test/runtime-base";
/// The build base's name in this run's storage.
pub const BUILD_BASE: &str = "localhost/configwatch-test/rust-base";
/// Where the official rust image puts cargo's home (its registry is a cache mount).
const CARGO_HOME: &str = "/usr/local/cargo";
/// The CA certificates, where Debian keeps them (the Containerfile copies them
/// from the build stage into the runtime image).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian's suite, as in the Containerfile's default bases (bookworm, Debian 12).
const SUITE: &str = "bookworm";

/// Left out of the tarballs: what a container runtime provides, and what slim
/// images leave out (documentation, translations, apt's lists and downloads).
const EXCLUDED: &[&str] = &[
    "./dev/*",
    "./proc/*",
    "./sys/*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/info/*",
    "./usr/share/locale/*",
    "./var/cache/apt/*",
    "./var/lib/apt/lists/*",
];

/// Makes both root filesystems (or finds them in `cache`) and imports them as
/// [`RUNTIME_BASE`] and [`BUILD_BASE`].
pub fn make(buildah: &Buildah, cache: &Path) {
    let mirror = mirror();
    let started = Instant::now();
    let (runtime, build) = std::thread::scope(|s| {
        let runtime = s.spawn(|| rootfs(buildah.dir(), cache, "minbase", &[], &mirror));
        let build = s.spawn(|| {
            let packages = ["gcc", "libc6-dev", "ca-certificates"];
            rootfs(buildah.dir(), cache, "build", &packages, &mirror)
        });
        (runtime.join().unwrap(), build.join().unwrap())
    });
    eprintln!(
        "image test: root filesystems ready in {:.1?} ({mirror})",
        started.elapsed()
    );

    let started = Instant::now();
    buildah.import(RUNTIME_BASE, &runtime, &[], &[]);
    let sysroot = rust_sysroot();
    let path_env = format!(
        "PATH={CARGO_HOME}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let cargo_home = format!("CARGO_HOME={CARGO_HOME}");
    let (bin, lib) = (sysroot.join("bin"), sysroot.join("lib"));
    // This machine's trust: a proxy between it and crates.io may present a
    // certificate of its own authority, which Debian's bundle does not hold.
    let certificates = Path::new(CA_BUNDLE);
    buildah.import(
        BUILD_BASE,
        &build,
        &[
            (&bin, &format!("{CARGO_HOME}/bin")),
            (&lib, &format!("{CARGO_HOME}/lib")),
            (certificates, CA_BUNDLE),
        ],
        &["--env", &cargo_home, "--env", &path_env],
    );
    eprintln!(
        "image test: base images imported in {:.1?} (the toolchain from {})",
        started.elapsed(),
        sysroot.display()
    );
}

/// The tarball of a `debootstrap --variant=minbase` root filesystem with
/// `packages` added, from `cache` or made now (in a directory under `work`).
fn rootfs(work: &Path, cache: &Path, name: &str, packages: &[&str], mirror: &str) -> PathBuf {
    let tarball = cache.join(format!("{SUITE}-{name}.tar"));
    if tarball.is_file() {
        eprintln!(
            "image test: {name} root filesystem from {}",
            tarball.display()
        );
        return tarball;
    }
    let started = Instant::now();
    let target = work.join(format!("rootfs-{name}"));
    let mut debootstrap = Command::new("debootstrap");
    debootstrap.arg("--variant=minbase");
    if !packages.is_empty() {
        debootstrap.arg(format!("--include={}", packages.join(",")));
    }
    debootstrap.arg(SUITE).arg(&target).arg(mirror);
    let out = debootstrap.output().expect("run debootstrap");
    check(&format!("debootstrap {name}"), &out);

    // Written beside its final name, then renamed: a run stopped half-way leaves
    // no truncated tarball to be trusted next time.
    let partial = cache.join(format!("{SUITE}-{name}.tar.partial"));
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&target);
    for pattern in EXCLUDED {
        tar.arg(format!("--exclude={pattern}"));
    }
    tar.arg("-cf").arg(&partial).arg(".");
    check("tar", &tar.output().expect("run tar"));
    std::fs::rename(&partial, &tarball).unwrap();
    let _ = std::fs::remove_dir_all(&target);
    eprintln!(
        "image test: debootstrap {name} took {:.1?}",
        started.elapsed()
    );
    tarball
}

/// The Debian mirror this machine's apt uses (deb822 `URIs:` or a `deb` line of
/// the main archive, not the security one), else deb.debian.org.
fn mirror() -> String {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        sources.extend(more);
    }
    sources
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let line = line.trim();
            let uri = match line.strip_prefix("URIs:") {
                Some(uris) => uris.split_whitespace().next(),
                None => line
                    .strip_prefix("deb ")
                    .and_then(|rest| rest.split_whitespace().find(|w| w.contains("://"))),
            }?;
            Some(uri.trim_end_matches('/').to_owned())
        })
        .find(|uri| uri.ends_with("/debian"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// This machine's Rust toolchain (`rustc --print sysroot`): its `bin/` and `lib/`
/// are what the build base needs.
fn rust_sysroot() -> PathBuf {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("run rustc");
    check("rustc --print sysroot", &out);
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
