//! kiln's side of the agent protocol: requests out, responses routed back to their callers, over
//! any byte stream (a sandbox helper's pipes, a VM's virtio-serial socket).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::fileops::{FileOp, FileOpOutput};
use crate::protocol::{b64decode, b64encode, Request, RequestBody, Response, ResponseBody, CHUNK};
use crate::{ExecOutcome, ExecRequest, InstanceError, OutputSink};

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<ResponseBody>>>>;

/// Why an agent did not come up.
#[derive(Debug)]
pub enum ConnectError {
    /// The agent said it cannot start (a sandbox that cannot mount, say).
    Fatal(String),
    /// It went away or never answered.
    Gone,
    /// It speaks another version of the protocol.
    Version {
        /// The agent's version.
        agent: u32,
    },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Fatal(m) => f.write_str(m),
            ConnectError::Gone => f.write_str("the agent went away before it was ready"),
            ConnectError::Version { agent } => write!(
                f,
                "the agent speaks protocol version {agent}, this kiln speaks {}: use the \
                 kiln-agent built with this kiln (KILN_AGENT names it)",
                crate::protocol::VERSION
            ),
        }
    }
}

/// A connection to an agent.
pub struct AgentClient {
    outbox: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    pending: Pending,
    ids: AtomicU64,
    what: String,
    /// Recent diagnostics of the instance (helper stderr, VM console), quoted when it dies.
    diagnostics: Arc<Mutex<Vec<String>>>,
}

impl AgentClient {
    /// Starts a conversation and waits for the agent's `Ready`. `what` names the instance in
    /// errors ("sandbox", "VM"); `diagnostics` are recent lines to quote if it dies.
    pub async fn connect<R, W>(
        reader: R,
        writer: W,
        what: &str,
        diagnostics: Arc<Mutex<Vec<String>>>,
        timeout: Duration,
    ) -> Result<(Arc<AgentClient>, Vec<String>), ConnectError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (outbox, mut outq) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let mut writer = writer;
            while let Some(req) = outq.recv().await {
                let Ok(mut line) = serde_json::to_vec(&req) else {
                    continue;
                };
                line.push(b'\n');
                if writer.write_all(&line).await.is_err() {
                    return;
                }
                let _ = writer.flush().await;
            }
            // The writer is dropped here: for a sandbox, that closes the agent's stdin.
            let _ = writer.shutdown().await;
        });
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (ready_tx, ready_rx) =
            tokio::sync::oneshot::channel::<Result<Vec<String>, ConnectError>>();
        let reader_pending = pending.clone();
        let label = what.to_string();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut lines = tokio::io::BufReader::new(reader).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let Ok(resp) = serde_json::from_str::<Response>(&l) else {
                    tracing::warn!("the {label} agent said something unreadable: {l}");
                    continue;
                };
                match (resp.id, resp.body) {
                    (0, ResponseBody::Ready { version, created }) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(if version == crate::protocol::VERSION {
                                Ok(created)
                            } else {
                                Err(ConnectError::Version { agent: version })
                            });
                        }
                    }
                    (0, ResponseBody::Fatal(msg)) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(ConnectError::Fatal(msg)));
                        }
                    }
                    (0, other) => tracing::warn!("the {label} agent: {other:?}"),
                    (id, body) => {
                        let last = matches!(
                            body,
                            ResponseBody::Exit { .. }
                                | ResponseBody::FileOp(_)
                                | ResponseBody::Done
                                | ResponseBody::Error(_)
                        );
                        if let Ok(mut p) = reader_pending.lock() {
                            if let Some(tx) = p.get(&id) {
                                let _ = tx.send(body);
                            }
                            if last {
                                p.remove(&id);
                            }
                        }
                    }
                }
            }
            // The agent is gone: every waiting caller sees its channel close.
            if let Ok(mut p) = reader_pending.lock() {
                p.clear();
            }
        });
        let client = Arc::new(AgentClient {
            outbox: Mutex::new(Some(outbox)),
            pending,
            ids: AtomicU64::new(1),
            what: what.to_string(),
            diagnostics,
        });
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(created))) => Ok((client, created)),
            Ok(Ok(Err(e))) => Err(e),
            _ => Err(ConnectError::Gone),
        }
    }

    /// Closes the request stream (the agent ends when it sees the end).
    pub fn close(&self) {
        if let Ok(mut o) = self.outbox.lock() {
            o.take();
        }
    }

    /// Gives up on the agent (the instance went down under it): waiting callers and new
    /// requests fail at once instead of waiting for an answer that cannot come.
    pub fn abort(&self) {
        self.close();
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }

    /// The error for an agent that went away, with the instance's last diagnostics.
    pub fn gone(&self) -> InstanceError {
        let tail = self
            .diagnostics
            .lock()
            .map(|l| {
                l.iter()
                    .rev()
                    .take(5)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        InstanceError::Op(if tail.is_empty() {
            format!("the {} stopped unexpectedly", self.what)
        } else {
            format!("the {} stopped unexpectedly: {tail}", self.what)
        })
    }

    fn send(&self, id: u64, body: RequestBody) -> Result<(), InstanceError> {
        let stopped = || InstanceError::Op(format!("the {} has stopped", self.what));
        let guard = self.outbox.lock().map_err(|_| stopped())?;
        guard
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { id, body })
            .map_err(|_| stopped())
    }

    fn call(
        &self,
        body: RequestBody,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ResponseBody>), InstanceError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        self.send(id, body)?;
        Ok((id, rx))
    }

    /// Runs a program; cancelled (with its process tree) if this future is dropped.
    pub async fn exec(
        self: &Arc<Self>,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError> {
        let (id, mut rx) = self.call(RequestBody::Exec(req.clone()))?;
        let mut guard = CancelOnDrop {
            client: self.clone(),
            id,
            armed: true,
        };
        while let Some(msg) = rx.recv().await {
            match msg {
                ResponseBody::Line { stream, text } => sink.line(stream, &text),
                ResponseBody::Exit {
                    status,
                    stdout,
                    stderr,
                } => {
                    guard.armed = false;
                    return Ok(ExecOutcome {
                        status,
                        stdout,
                        stderr,
                    });
                }
                ResponseBody::Error(e) => {
                    guard.armed = false;
                    return Err(InstanceError::Op(e));
                }
                _ => {}
            }
        }
        guard.armed = false;
        Err(self.gone())
    }

    /// Performs a file operation.
    pub async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError> {
        let (_, mut rx) = self.call(RequestBody::FileOp(op.clone()))?;
        match rx.recv().await {
            Some(ResponseBody::FileOp(out)) => Ok(out),
            Some(ResponseBody::Error(e)) => Err(InstanceError::Op(e)),
            Some(other) => Err(InstanceError::Op(format!("unexpected answer {other:?}"))),
            None => Err(self.gone()),
        }
    }

    /// Copies a host file in.
    pub async fn put_file(
        &self,
        host_src: &Path,
        dest: &str,
        mode: u32,
    ) -> Result<(), InstanceError> {
        let mut file = tokio::fs::File::open(host_src)
            .await
            .map_err(|e| InstanceError::io(format!("reading {}", host_src.display()), e))?;
        let (id, mut rx) = self.call(RequestBody::PutBegin {
            path: dest.to_string(),
            mode,
        })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| InstanceError::io(format!("reading {}", host_src.display()), e))?;
            if n == 0 {
                break;
            }
            self.send(id, RequestBody::Data(b64encode(&buf[..n])))?;
        }
        self.send(id, RequestBody::End)?;
        match rx.recv().await {
            Some(ResponseBody::Done) => Ok(()),
            Some(ResponseBody::Error(e)) => Err(InstanceError::Op(e)),
            Some(other) => Err(InstanceError::Op(format!("unexpected answer {other:?}"))),
            None => Err(self.gone()),
        }
    }

    /// Copies a file out onto the host (through a temporary name).
    pub async fn get_file(&self, src: &str, host_dest: &Path) -> Result<(), InstanceError> {
        let (_, mut rx) = self.call(RequestBody::Get {
            path: src.to_string(),
        })?;
        let tmp = host_dest.with_extension("kiln-part");
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| InstanceError::io(format!("creating {}", tmp.display()), e))?;
        loop {
            match rx.recv().await {
                Some(ResponseBody::Data(chunk)) => {
                    let bytes = b64decode(&chunk)
                        .ok_or_else(|| InstanceError::Op("corrupt file chunk".into()))?;
                    out.write_all(&bytes)
                        .await
                        .map_err(|e| InstanceError::io(format!("writing {}", tmp.display()), e))?;
                }
                Some(ResponseBody::Done) => break,
                Some(ResponseBody::Error(e)) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(InstanceError::Op(e));
                }
                Some(_) => {}
                None => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(self.gone());
                }
            }
        }
        out.flush()
            .await
            .map_err(|e| InstanceError::io(format!("writing {}", tmp.display()), e))?;
        drop(out);
        tokio::fs::rename(&tmp, host_dest)
            .await
            .map_err(|e| InstanceError::io(format!("writing {}", host_dest.display()), e))
    }
}

/// Sends `Cancel` for an exec that is dropped before it finishes (a step timeout, Ctrl-C).
struct CancelOnDrop {
    client: Arc<AgentClient>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.client.send(self.id, RequestBody::Cancel);
            if let Ok(mut p) = self.client.pending.lock() {
                p.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Connects to an "agent" that opens with `ready` (one JSON line) and then stays open.
    async fn connect_to(ready: &str) -> Result<Vec<String>, ConnectError> {
        let (kiln_side, agent_side) = tokio::io::duplex(4096);
        let (from_agent, to_agent) = tokio::io::split(kiln_side);
        let (_agent_reads, mut agent_writes) = tokio::io::split(agent_side);
        agent_writes
            .write_all(format!("{ready}\n").as_bytes())
            .await
            .unwrap();
        let r = AgentClient::connect(
            from_agent,
            to_agent,
            "test",
            Arc::new(Mutex::new(Vec::new())),
            Duration::from_secs(5),
        )
        .await
        .map(|(_, created)| created);
        drop(agent_writes);
        r
    }

    #[tokio::test]
    async fn an_agent_of_this_protocol_version_is_taken_and_another_is_refused() {
        let ok = format!(
            r#"{{"id":0,"body":{{"ready":{{"version":{},"created":["etc/resolv.conf"]}}}}}}"#,
            crate::protocol::VERSION
        );
        assert_eq!(connect_to(&ok).await.unwrap(), vec!["etc/resolv.conf"]);
        let newer = r#"{"id":0,"body":{"ready":{"version":99,"created":[]}}}"#;
        let e = connect_to(newer).await.unwrap_err();
        assert!(matches!(e, ConnectError::Version { agent: 99 }));
        assert!(e.to_string().contains("protocol version 99"), "{e}");
        // An agent from before versions existed says none: version 0, refused by name too.
        let old = r#"{"id":0,"body":{"ready":{"created":[]}}}"#;
        assert!(matches!(
            connect_to(old).await.unwrap_err(),
            ConnectError::Version { agent: 0 }
        ));
    }
}
