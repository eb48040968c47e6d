//! The server under test: a `configwatch` process restarted on one data directory,
//! and its tokens.

use super::*;

/// The configwatch server, started on port 0 each time, on one data directory.
pub(crate) struct ServerProcess {
    pub(crate) data_dir: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) child: Option<Child>,
    /// Kept open: the server may print more, and a closed pipe would fail it.
    pub(crate) stdout: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
    pub(crate) starts: u32,
}

impl ServerProcess {
    pub(crate) fn new(data_dir: PathBuf, logs: PathBuf) -> ServerProcess {
        ServerProcess {
            data_dir,
            logs,
            child: None,
            stdout: None,
            starts: 0,
        }
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.logs.join(format!("server-{}.log", self.starts))
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        format!(
            "{}:\n{}",
            self.log().display(),
            tail(
                &std::fs::read_to_string(self.log()).unwrap_or_default(),
                lines
            )
        )
    }

    pub(crate) async fn start(&mut self, history: usize) -> Result<SocketAddr, String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log()).map_err(|e| e.to_string())?;
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--progress-interval", "500ms", "--shutdown-grace", "2s"])
            .args(["--history", &history.to_string()])
            .env("CONFIGWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin().display()))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| {
                format!(
                    "the server did not listen within 20 s\n{}",
                    self.log_tail(30)
                )
            })?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the server exited before listening\n{}", self.log_tail(30)))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        self.child = Some(child);
        self.stdout = Some(lines);
        Ok(addr)
    }

    /// SIGKILL, and wait until the process is gone.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.stdout = None;
    }

    /// SIGTERM, and wait for a clean exit.
    pub(crate) async fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().ok_or("the server already exited")?.to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .map_err(|e| format!("kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid}: {sent}"));
        }
        let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .map_err(|_| "the server did not exit within 20 s of SIGTERM".to_owned())?
            .map_err(|e| e.to_string())?;
        self.stdout = None;
        if exit.success() {
            Ok(())
        } else {
            Err(format!(
                "the server exited with {exit} on SIGTERM\n{}",
                self.log_tail(30)
            ))
        }
    }
}

/// Waits until every client has had a message from the server after `at` (plus a
/// margin for bytes already on their way), which over a frozen connection cannot
/// happen: the server sends progress every 500 ms on a live one.
pub(crate) async fn heard_from_after(
    at: SystemTime,
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<(), String> {
    let after = at + Duration::from_millis(250);
    // A client may have moved to a connection frozen at birth just before the hang
    // ended, and give up on that one too: twice the idle timeout, and some slack for a
    // loaded machine. (Without noticing, a client would wait for HTTP/2 keepalive,
    // 40 s, or forever.)
    let within = IDLE_TIMEOUT * 2 + Duration::from_secs(5);
    let deadline = Instant::now() + within;
    loop {
        let mut silent = Vec::new();
        for c in rust {
            let v = c.view();
            if v.last_message.is_none_or(|t| t < after) {
                silent.push(format!("{} ({})", c.name, v.status));
            }
        }
        for c in ts.iter_mut() {
            let v = c.dump().await?.view;
            if v.last_message.is_none_or(|t| t < after) {
                silent.push(format!("{} ({})", c.name, v.status));
            }
        }
        if silent.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "their connections frozen (half-open, or accepted then silent), these clients \
                 heard nothing from the server for {within:?}, though their idle timeout is \
                 {IDLE_TIMEOUT:?} and new connections work:\n  {}",
                silent.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn mint_token(data_dir: &Path, role: &str, ttl: &str) -> Result<String, String> {
    let out = Command::new(bin())
        .args(["token", "--tenant", TENANT, "--role", role, "--ttl", ttl])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("configwatch token: {out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Replaces the token file atomically (a reader never sees half a token).
pub(crate) async fn refresh_token(data_dir: &Path, file: &Path) -> Result<(), String> {
    let token = mint_token(data_dir, "reader", READER_TTL).await?;
    let tmp = file.with_extension("tmp");
    tokio::fs::write(&tmp, token)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, file)
        .await
        .map_err(|e| e.to_string())
}
