//! buildah without a daemon, as this suite drives it: a private storage root (vfs)
//! in a temporary directory that is emptied and removed when dropped, also when
//! the test fails; chroot isolation (the host's network, no user namespace); the
//! cache mounts of `RUN --mount=type=cache` kept between runs in a directory of
//! their own. Knows buildah's command line and the JSON of `buildah inspect`,
//! nothing of configwatch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A buildah storage root of this run, with its containers and images.
pub struct Buildah {
    /// Removed last, after buildah has let go of what is in it.
    dir: tempfile::TempDir,
    root: PathBuf,
    runroot: PathBuf,
    tmp: PathBuf,
}

impl Buildah {
    /// A new storage root under `parent` whose builds keep their cache mounts in
    /// `cache_mounts` (buildah 1.28 keeps them in `$TMPDIR/buildah-cache`, so that
    /// is a link to it in this run's own `TMPDIR`).
    pub fn new(parent: &Path, cache_mounts: &Path) -> Buildah {
        let dir = tempfile::Builder::new()
            .prefix("configwatch-image-")
            .tempdir_in(parent)
            .expect("a temporary directory");
        let root = dir.path().join("root");
        let runroot = dir.path().join("runroot");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(cache_mounts).unwrap();
        std::os::unix::fs::symlink(cache_mounts, tmp.join("buildah-cache")).unwrap();
        Buildah {
            dir,
            root,
            runroot,
            tmp,
        }
    }

    /// The directory everything of this run is in (a build's working files too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `buildah --root .. --runroot .. --storage-driver vfs ARGS`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("buildah");
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("TMPDIR", &self.tmp);
        command
    }

    /// Runs `buildah ARGS` to its end; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run buildah");
        check(&format!("buildah {}", args.join(" ")), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `buildah from scratch`, `add`-ed `rootfs` (a tarball, unpacked at `/`) and
    /// `extra` copies (host path, path in the image), configured by `config` flags
    /// and committed as `name`.
    pub fn import(&self, name: &str, rootfs: &Path, extra: &[(&Path, &str)], config: &[&str]) {
        let container = self.run(&["from", "scratch"]);
        self.run(&["add", &container, path(rootfs), "/"]);
        for (from, to) in extra {
            self.run(&["copy", &container, path(from), to]);
        }
        if !config.is_empty() {
            let mut args = vec!["config"];
            args.extend_from_slice(config);
            args.push(&container);
            self.run(&args);
        }
        self.run(&["commit", "--quiet", &container, name]);
        self.run(&["rm", &container]);
    }

    /// The image's `buildah inspect` JSON.
    pub fn inspect_image(&self, image: &str) -> serde_json::Value {
        let text = self.run(&["inspect", "--type", "image", image]);
        serde_json::from_str(&text).expect("buildah inspect prints JSON")
    }

    /// The size of the image's root filesystem in bytes: its layers' sizes added up
    /// (`buildah images --json` rounds to MB).
    pub fn image_bytes(&self, image: &str) -> u64 {
        let container = self.run(&["from", image]);
        let mount = self.run(&["mount", &container]);
        let bytes = tree_bytes(Path::new(&mount));
        self.run(&["umount", &container]);
        self.run(&["rm", &container]);
        bytes
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        // Containers first (they hold layers), then images; whatever buildah may
        // have left mounted under the directory is unmounted before it is removed,
        // so removing it never reaches into another filesystem.
        let _ = self.command(&["rm", "--all"]).output();
        let _ = self.command(&["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_file(self.tmp.join("buildah-cache"));
        for mount in mounts_under(self.dir.path()).into_iter().rev() {
            let _ = Command::new("umount").arg("--lazy").arg(&mount).status();
        }
    }
}

/// Mount points at or below `dir`, outermost first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Bytes in the files under `dir` (apparent sizes, hard links counted once each
/// time they appear, as an image layer stores them), not following links.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Panics with `what`'s status and the end of its output when it failed.
pub fn check(what: &str, out: &Output) {
    if !out.status.success() {
        panic!(
            "{what}: {}\n--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
            out.status,
            tail(&out.stdout, 60),
            tail(&out.stderr, 60)
        );
    }
}

/// The last `lines` lines of `bytes` as text.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
