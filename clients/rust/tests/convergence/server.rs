//! The server under test: a `configwatch` process (the support crate's
//! `ServerProcess`) restarted on one data directory, its reader tokens, and the check
//! that every client hears from it.

use super::*;

/// The configwatch server, started on port 0 each time, on one data directory.
pub(crate) struct Server {
    pub(crate) data_dir: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) process: Option<ServerProcess>,
    pub(crate) starts: u32,
    /// The port it listens on; 0 (the default) picks a free one at each start.
    pub(crate) port: u16,
    /// Environment for the process (the AWS endpoint of a moto server, say).
    pub(crate) env: Vec<(String, String)>,
}

impl Server {
    pub(crate) fn new(data_dir: PathBuf, logs: PathBuf) -> Server {
        Server {
            data_dir,
            logs,
            process: None,
            starts: 0,
            port: 0,
            env: Vec::new(),
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
        self.start_with(history, &[]).await
    }

    /// Starts it with more flags.
    pub(crate) async fn start_with(
        &mut self,
        history: usize,
        extra: &[&str],
    ) -> Result<SocketAddr, String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log()).map_err(|e| e.to_string())?;
        let mut command = serve_command(&server_bin(), &self.data_dir, self.port);
        command
            .args(["--progress-interval", "500ms", "--shutdown-grace", "2s"])
            .args(["--history", &history.to_string()])
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("CONFIGWATCH_LOG", "info")
            .stderr(log);
        let process = ServerProcess::try_start(command)
            .await
            .map_err(|e| format!("{e}\n{}", self.log_tail(30)))?;
        let addr = process.addr;
        self.process = Some(process);
        Ok(addr)
    }

    /// SIGKILL, and wait until the process is gone.
    pub(crate) async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9().await;
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub(crate) async fn terminate(&mut self) -> Result<(), String> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        let exit = process.terminate(Duration::from_secs(20)).await?;
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
    let silent = RefCell::new(Vec::new());
    // Locked across the awaits of one check; the checks never overlap.
    let ts = tokio::sync::Mutex::new(ts);
    let heard = poll(within, || async {
        let mut ts = ts.lock().await;
        match silent_clients(after, rust, &mut ts).await {
            Err(e) => Some(Err(e)),
            Ok(names) if names.is_empty() => Some(Ok(())),
            Ok(names) => {
                *silent.borrow_mut() = names;
                None
            }
        }
    })
    .await;
    match heard {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "their connections frozen (half-open, or accepted then silent), these clients \
             heard nothing from the server for {within:?}, though their idle timeout is \
             {IDLE_TIMEOUT:?} and new connections work:\n  {}",
            silent.into_inner().join("\n  ")
        )),
    }
}

/// The clients (name and status) whose last message from the server is older than
/// `after`.
async fn silent_clients(
    after: SystemTime,
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<Vec<String>, String> {
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
    Ok(silent)
}

/// Replaces the token file atomically (a reader never sees half a token).
pub(crate) async fn refresh_token(data_dir: &Path, file: &Path) -> Result<(), String> {
    let token = mint_token(&server_bin(), data_dir, TENANT, "reader", READER_TTL).await?;
    let tmp = file.with_extension("tmp");
    tokio::fs::write(&tmp, token)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, file)
        .await
        .map_err(|e| e.to_string())
}

/// Writes a reader token into `file` now, then replaces it every `TOKEN_REFRESH`
/// until the returned guard is dropped.
pub(crate) async fn keep_refreshing(data_dir: &Path, file: &Path) -> Result<AbortOnDrop, String> {
    refresh_token(data_dir, file).await?;
    let (data_dir, file) = (data_dir.to_owned(), file.to_owned());
    Ok(AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOKEN_REFRESH).await;
            if let Err(e) = refresh_token(&data_dir, &file).await {
                eprintln!("convergence: token refresh failed (the old one stays): {e}");
            }
        }
    })))
}
