//! QEMU's machine protocol (QMP) and the guest agent protocol (QGA), the few commands kiln uses.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Errors of QMP and QGA conversations.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was going on.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// QEMU or the agent answered with an error.
    #[error("{command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// No answer in time.
    #[error("{0}: no answer in time")]
    Timeout(String),
    /// The answer could not be read.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ProtocolError {
    let what = what.to_string();
    move |source| ProtocolError::Io { what, source }
}

/// A JSON-lines conversation over a Unix socket.
struct Lines {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Lines {
    async fn connect(path: &Path) -> Result<Lines, ProtocolError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(io(&format!("connecting to {}", path.display())))?;
        let (r, w) = s.into_split();
        Ok(Lines {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.writer.write_all(bytes).await.map_err(io("writing"))?;
        self.writer.flush().await.map_err(io("writing"))
    }

    async fn read(&mut self) -> Result<Value, ProtocolError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(io("reading"))?;
            if n == 0 {
                return Err(ProtocolError::Io {
                    what: "reading".into(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            // QGA's sync delimiter (a 0xff byte, not UTF-8) and blank lines are not messages.
            line.retain(|b| *b != 0xff);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(v) => return Ok(v),
                // Bytes before a sync answer may be garbage from an earlier conversation.
                Err(_) => continue,
            }
        }
    }
}

fn result(command: &str, v: Value) -> Result<Value, ProtocolError> {
    if let Some(e) = v.get("error") {
        return Err(ProtocolError::Command {
            command: command.to_string(),
            class: e["class"].as_str().unwrap_or("").to_string(),
            desc: e["desc"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(v.get("return").cloned().unwrap_or(Value::Null))
}

/// A QMP connection: commands, or events on a monitor used only to watch.
pub struct Qmp {
    lines: Lines,
}

impl Qmp {
    /// Connects and enters command mode.
    pub async fn connect(path: &Path) -> Result<Qmp, ProtocolError> {
        let mut lines = Lines::connect(path).await?;
        let greeting = lines.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(ProtocolError::Protocol(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        let mut q = Qmp { lines };
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    /// Runs a command.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> Result<Value, ProtocolError> {
        let msg = json!({ "execute": command, "arguments": arguments });
        self.lines.send(format!("{msg}\n").as_bytes()).await?;
        loop {
            let v = self.lines.read().await?;
            // Events are watched on a monitor of their own.
            if v.get("event").is_some() {
                continue;
            }
            return result(command, v);
        }
    }

    /// The next event: its name and data (for a monitor used only to watch).
    pub async fn next_event(&mut self) -> Result<(String, Value), ProtocolError> {
        loop {
            let v = self.lines.read().await?;
            if let Some(ev) = v.get("event").and_then(Value::as_str) {
                return Ok((
                    ev.to_string(),
                    v.get("data").cloned().unwrap_or(Value::Null),
                ));
            }
        }
    }
}

/// The pause between two attempts of [`Qga::connect_within`].
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// A guest agent connection.
pub struct Qga {
    lines: Lines,
}

/// Numbers the requests of every guest agent conversation of this process: QEMU passes the
/// guest agent's words to whichever connection is open when they come, so an answer to a
/// request made on a connection kiln gave up on must never pass for the answer of another.
fn next_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    // Distinct between kiln processes too (two may talk to a kept VM's agent in turn); below
    // 2^53, so the number survives JSON anywhere.
    u64::from(std::process::id()) * 1_000_000_000 + COUNTER.fetch_add(1, Ordering::Relaxed)
}

impl Qga {
    /// Connects and synchronises (`guest-sync-delimited`): fails fast while the guest agent is
    /// not running yet.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qga, ProtocolError> {
        let lines = Lines::connect(path).await?;
        let mut q = Qga { lines };
        tokio::time::timeout(timeout, q.sync())
            .await
            .map_err(|_| ProtocolError::Timeout("guest-sync-delimited".into()))??;
        Ok(q)
    }

    /// Connects like [`Qga::connect`], trying again until `within` has passed: QEMU takes one
    /// guest agent client at a time and may drop a new one while the last is being let go
    /// (seen as "connection reset" right after another kiln process closed its connection).
    pub async fn connect_within(path: &Path, within: Duration) -> Result<Qga, ProtocolError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match Qga::connect(path, left.min(Duration::from_secs(5))).await {
                Ok(q) => return Ok(q),
                Err(e) if tokio::time::Instant::now() + RETRY_PAUSE >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!("guest agent at {}: {e}; trying again", path.display());
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn sync(&mut self) -> Result<(), ProtocolError> {
        let id = next_id();
        let msg = json!({ "execute": "guest-sync-delimited", "arguments": { "id": id } });
        let mut bytes = vec![0xffu8];
        bytes.extend_from_slice(format!("{msg}\n").as_bytes());
        self.lines.send(&bytes).await?;
        loop {
            let v = self.lines.read().await?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    /// Runs a guest agent command. Answers carry the command's id: anything else on the line
    /// (a parse error for the sync byte, an answer meant for an earlier connection) is skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> Result<Value, ProtocolError> {
        let id = next_id();
        let msg = if arguments.is_null() {
            json!({ "execute": command, "id": id })
        } else {
            json!({ "execute": command, "arguments": arguments, "id": id })
        };
        self.lines.send(format!("{msg}\n").as_bytes()).await?;
        loop {
            let v = self.lines.read().await?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                return result(command, v);
            }
        }
    }

    /// Starts a program in the guest; returns its pid. Without `capture`, its output goes nowhere
    /// (for programs that outlive the call).
    pub async fn spawn(
        &mut self,
        path: &str,
        args: &[&str],
        capture: bool,
    ) -> Result<i64, ProtocolError> {
        let r = self
            .execute(
                "guest-exec",
                json!({ "path": path, "arg": args, "capture-output": capture }),
            )
            .await?;
        r["pid"]
            .as_i64()
            .ok_or_else(|| ProtocolError::Protocol(format!("guest-exec gave no pid: {r}")))
    }

    /// Runs a program in the guest to its end; returns (exit code, stdout, stderr).
    pub async fn run(
        &mut self,
        path: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(i64, String, String), ProtocolError> {
        let pid = self.spawn(path, args, true).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Short commands end within milliseconds: look soon, then less often.
        let mut pause = Duration::from_millis(5);
        loop {
            let s = self
                .execute("guest-exec-status", json!({ "pid": pid }))
                .await?;
            if s["exited"].as_bool() == Some(true) {
                let text = |k: &str| {
                    s[k].as_str()
                        .and_then(crate::protocol::b64decode)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok((
                    s["exitcode"].as_i64().unwrap_or(-1),
                    text("out-data"),
                    text("err-data"),
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ProtocolError::Timeout(format!("{path} in the guest")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Writes a file into the guest.
    pub async fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), ProtocolError> {
        let handle = self
            .execute("guest-file-open", json!({ "path": path, "mode": "w" }))
            .await?;
        let h = handle
            .as_i64()
            .ok_or_else(|| ProtocolError::Protocol(format!("guest-file-open gave {handle}")))?;
        for chunk in data.chunks(1 << 20) {
            let r = self
                .execute(
                    "guest-file-write",
                    json!({ "handle": h, "buf-b64": crate::protocol::b64encode(chunk) }),
                )
                .await;
            if let Err(e) = r {
                let _ = self
                    .execute("guest-file-close", json!({ "handle": h }))
                    .await;
                return Err(e);
            }
        }
        self.execute("guest-file-close", json!({ "handle": h }))
            .await?;
        Ok(())
    }

    /// The guest's uptime (its kernel clock) and the host's instant it is taken for: the
    /// middle of one `guest-file-read` of `/proc/uptime` (the file is opened before, so the
    /// read is a single round trip). Together they place the guest kernel's start on the
    /// host's clock.
    pub async fn uptime(&mut self) -> Result<(Duration, tokio::time::Instant), ProtocolError> {
        let handle = self
            .execute(
                "guest-file-open",
                json!({ "path": "/proc/uptime", "mode": "r" }),
            )
            .await?;
        let h = handle
            .as_i64()
            .ok_or_else(|| ProtocolError::Protocol(format!("guest-file-open gave {handle}")))?;
        let before = tokio::time::Instant::now();
        let read = self
            .execute("guest-file-read", json!({ "handle": h, "count": 256 }))
            .await;
        let after = tokio::time::Instant::now();
        let _ = self
            .execute("guest-file-close", json!({ "handle": h }))
            .await;
        let read = read?;
        let text = read["buf-b64"]
            .as_str()
            .and_then(crate::protocol::b64decode)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let secs: f64 = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| ProtocolError::Protocol(format!("/proc/uptime said {text:?}")))?;
        Ok((Duration::from_secs_f64(secs), before + (after - before) / 2))
    }

    /// Asks the guest to power off or reboot, and waits a little for the agent to take it (it
    /// may go down before it answers, which is success too).
    pub async fn shutdown(&mut self, mode: &str) -> Result<(), ProtocolError> {
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            self.execute("guest-shutdown", json!({ "mode": mode })),
        )
        .await;
        match answer {
            Ok(Err(ProtocolError::Io { .. })) | Err(_) => Ok(()),
            Ok(r) => r.map(|_| ()),
        }
    }
}
