//! The TypeScript clients under test: `convergence-client.ts` child processes driven
//! over stdin and stdout.

use super::*;

pub(crate) struct TsClient {
    pub(crate) name: String,
    pub(crate) prefixes: Vec<String>,
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    pub(crate) next_id: u64,
    pub(crate) log: PathBuf,
}

pub(crate) struct TsDump {
    pub(crate) view: ClientView,
    pub(crate) counts: Value,
}

impl TsClient {
    pub(crate) async fn start(
        driver: &Driver,
        name: String,
        url: &str,
        token_file: &Path,
        prefixes: Vec<String>,
        log: &Path,
    ) -> Result<TsClient, String> {
        let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&driver.node);
        cmd.arg(&driver.script)
            .args(["--address", url, "--tenant", TENANT, "--token-file"])
            .arg(token_file)
            .args(["--idle-timeout-ms", &IDLE_TIMEOUT.as_millis().to_string()])
            .args(["--backoff-initial-ms", "50", "--backoff-max-ms", "500"]);
        for p in &prefixes {
            cmd.args(["--prefix", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {}: {e}", driver.node))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut c = TsClient {
            name,
            prefixes,
            child,
            stdin,
            stdout,
            next_id: 0,
            log: log.to_owned(),
        };
        let first = c.read_line(Duration::from_secs(20)).await?;
        if first.get("type").and_then(Value::as_str) != Some("started") {
            return Err(format!("{}: unexpected first line {first}", c.name));
        }
        Ok(c)
    }

    pub(crate) async fn read_line(&mut self, within: Duration) -> Result<Value, String> {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .map_err(|_| {
                format!(
                    "{}: no answer within {within:?}{}",
                    self.name,
                    self.log_tail()
                )
            })?
            .map_err(|e| format!("{}: {e}", self.name))?
            .ok_or_else(|| format!("{}: the driver exited{}", self.name, self.log_tail()))?;
        serde_json::from_str(&line).map_err(|e| format!("{}: {e} in {line:?}", self.name))
    }

    pub(crate) fn log_tail(&self) -> String {
        format!(
            "\n--- {} ---\n{}",
            self.log.display(),
            tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
        )
    }

    pub(crate) async fn request(&mut self, cmd: &str) -> Result<Value, String> {
        self.request_with(cmd, json!({})).await
    }

    /// A command with arguments: the fields of `args` go into the request.
    pub(crate) async fn request_with(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "cmd": cmd });
        if let (Some(r), Some(a)) = (request.as_object_mut(), args.as_object()) {
            r.extend(a.clone());
        }
        let line = format!("{request}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: {e}{}", self.name, self.log_tail()))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        loop {
            let reply = self.read_line(Duration::from_secs(10)).await?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if reply.get("type").and_then(Value::as_str) == Some("error") {
                return Err(format!("{}: {cmd}: {reply}", self.name));
            }
            return Ok(reply);
        }
    }

    pub(crate) async fn dump(&mut self) -> Result<TsDump, String> {
        let d = self.request("dump").await?;
        let bad = |what: &str| format!("{}: malformed dump ({what}): {d}", self.name);
        let status = d.get("status").ok_or_else(|| bad("status"))?;
        let mut cache = BTreeMap::new();
        for (k, e) in d["entries"].as_object().ok_or_else(|| bad("entries"))? {
            let version = e["version"].as_u64().ok_or_else(|| bad("version"))?;
            let value = if e["secret"] == json!(true) {
                None
            } else if let Some(err) = e.get("decodeError") {
                Some(json!({ "<not JSON>": err }))
            } else {
                // A value JSON cannot carry (undefined) shows as a marker, never as null.
                Some(e.get("value").cloned().unwrap_or(json!("<undefined>")))
            };
            cache.insert(k.clone(), Seen { version, value });
        }
        let mut last = BTreeMap::new();
        for (k, e) in d["last"].as_object().ok_or_else(|| bad("last"))? {
            let version = e["version"].as_u64().ok_or_else(|| bad("last version"))?;
            let delete = e["type"] == json!("delete");
            let value = if delete || e["secret"] == json!(true) {
                None
            } else {
                Some(e.get("value").cloned().unwrap_or(json!("<undefined>")))
            };
            last.insert(
                k.clone(),
                LastEvent {
                    delete,
                    version,
                    value,
                },
            );
        }
        let violations = d["violations"]
            .as_array()
            .ok_or_else(|| bad("violations"))?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        let state = status["state"].as_str().unwrap_or_default();
        Ok(TsDump {
            view: ClientView {
                connected: status["connected"] == json!(true),
                failed: matches!(state, "failed" | "closed"),
                last_message: status["lastMessageAt"]
                    .as_u64()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                status: status.to_string(),
                cache,
                last,
                violations,
            },
            counts: d["counts"].clone(),
        })
    }

    pub(crate) async fn close(mut self) -> Result<(), String> {
        self.request("close").await?;
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| format!("{}: did not exit after close", self.name))?
            .map_err(|e| e.to_string())?;
        if exit.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: exited with {exit}{}",
                self.name,
                self.log_tail()
            ))
        }
    }
}

/// Closes every client of both languages; a TypeScript client that does not exit
/// cleanly is an error.
pub(crate) async fn close_all(rust: Vec<RustClient>, ts: Vec<TsClient>) -> Result<(), String> {
    for c in rust {
        c.client.close().await;
    }
    for c in ts {
        c.close().await?;
    }
    Ok(())
}
