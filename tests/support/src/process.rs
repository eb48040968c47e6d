//! The `configwatch` binary as a child process: started on 127.0.0.1 (port 0 unless
//! told), its address read from the `listening on ADDR` line it prints first (and
//! its admin address from the `admin listening on ADDR` line after, when it has one),
//! stopped with SIGTERM (graceful) or SIGKILL, and killed when dropped. Also commands
//! that must exit by themselves (a refused start, say).
//!
//! Boundary: knows the binary's `serve` flags and its first line of output, nothing
//! of the protocol it serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// How long a server may take to print its address.
const STARTUP: Duration = Duration::from_secs(20);

/// The server binary for suites outside its package (which have
/// `CARGO_BIN_EXE_configwatch`): `$CONFIGWATCH_BIN`, else
/// `<target dir>/debug/configwatch` (`$CARGO_TARGET_DIR`, else the workspace's
/// `target/`).
pub fn server_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = match std::env::var_os("CONFIGWATCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
                Some(t) => root.join(t),
                None => root.join("target"),
            };
            target.join("debug").join("configwatch")
        }
    };
    assert!(
        p.is_file(),
        "the configwatch server binary is not at {}: run `cargo build --bin configwatch` \
         first (or set CONFIGWATCH_BIN)",
        p.display()
    );
    p
}

/// `BIN serve --listen 127.0.0.1:PORT --data-dir DATA_DIR`, logging at `warn` (set
/// `CONFIGWATCH_LOG` again to change it), without the admin listener (add
/// `--admin-listen 127.0.0.1:0` for one). Port 0 picks a free port.
pub fn serve_command(bin: &Path, data_dir: &Path, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(bin);
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("CONFIGWATCH_LOG", "warn")
        .env("CONFIGWATCH_ADMIN_LISTEN", "");
    command
}

/// Whether `command` starts the admin listener: an `--admin-listen` argument, else
/// `CONFIGWATCH_ADMIN_LISTEN` as the command or this process sets it, is not empty
/// (the server's default address is not).
fn starts_admin(command: &std::process::Command) -> bool {
    let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
    for (i, arg) in args.iter().enumerate().rev() {
        if let Some(value) = arg.strip_prefix("--admin-listen=") {
            return !value.trim().is_empty();
        }
        if arg == "--admin-listen" {
            return args.get(i + 1).is_some_and(|v| !v.trim().is_empty());
        }
    }
    let from_command = command
        .get_envs()
        .find(|(name, _)| *name == "CONFIGWATCH_ADMIN_LISTEN")
        .map(|(_, value)| value.map(|v| v.to_string_lossy().into_owned()));
    match from_command {
        Some(Some(value)) => !value.trim().is_empty(),
        // Removed from the command's environment: the default.
        Some(None) => true,
        None => std::env::var("CONFIGWATCH_ADMIN_LISTEN").map_or(true, |v| !v.trim().is_empty()),
    }
}

/// `command` run by `sh` under `ulimit -n FILES` (the soft and hard limit of open
/// files), its program, arguments and environment kept.
pub fn under_file_limit(files: u32, command: std::process::Command) -> std::process::Command {
    let mut wrapped = std::process::Command::new("sh");
    wrapped
        .args(["-c", &format!("ulimit -n {files} && exec \"$0\" \"$@\"")])
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// The address on the server's next line of output, which must be `PREFIX ADDR`.
async fn address_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> Result<SocketAddr, String> {
    let line = tokio::time::timeout(STARTUP, lines.next_line())
        .await
        .map_err(|_| format!("the server did not print '{prefix}ADDR' within {STARTUP:?}"))?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the server exited before printing '{prefix}ADDR'"))?;
    line.trim()
        .strip_prefix(prefix)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected line {line:?}, not '{prefix}ADDR'"))
}

/// A `configwatch serve` process; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the command starts one.
    pub admin: Option<SocketAddr>,
}

impl ServerProcess {
    /// Runs `command` (a `configwatch serve ... --listen 127.0.0.1:PORT`; its stderr
    /// as the command sets it) and waits for the address it prints first.
    pub async fn start(command: std::process::Command) -> ServerProcess {
        match Self::try_start(command).await {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`ServerProcess::start`], saying why not when the server did not start (it
    /// exited, printed something else, or said nothing for 20 s).
    pub async fn try_start(command: std::process::Command) -> Result<ServerProcess, String> {
        let program = command.get_program().to_owned();
        let admin_wanted = starts_admin(&command);
        let mut command = tokio::process::Command::from(command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = address_line(&mut lines, "listening on ").await?;
        let admin = match admin_wanted {
            true => Some(address_line(&mut lines, "admin listening on ").await?),
            false => None,
        };
        // Keep reading: the server may print more, and a closed pipe would fail it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess { child, addr, admin })
    }

    /// The server's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Waits up to `within` for the process to exit by itself (stopped by a signal
    /// sent to another process, such as the server inside a container's runner).
    pub async fn exited(mut self, within: Duration) -> Result<ExitStatus, String> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| format!("the process did not exit within {within:?}"))?
            .map_err(|e| e.to_string())
    }

    /// SIGTERM (graceful shutdown), and wait up to `within` for the process to exit.
    pub async fn terminate(mut self, within: Duration) -> Result<ExitStatus, String> {
        let pid = self
            .child
            .id()
            .ok_or("the server already exited")?
            .to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .map_err(|e| format!("kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid}: {sent}"));
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| format!("the server did not exit within {within:?} of SIGTERM"))?
            .map_err(|e| e.to_string())
    }
}

/// Runs a command that must exit by itself (its stdout and stderr captured); kills
/// it and panics with `started` after `within`.
pub fn run_to_exit(mut command: std::process::Command, within: Duration, started: &str) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("{started}");
        }
    }
}
