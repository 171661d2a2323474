//! The agent: serves kiln's requests inside an instance (a sandbox's PID 2, or `kiln-agent` in a
//! VM guest), over any byte stream, one JSON object per line (see [`crate::protocol`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::fileops;
use crate::process;
use crate::protocol::{b64decode, b64encode, Request, RequestBody, Response, ResponseBody, CHUNK};

/// Where and how the agent runs programs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Default working directory (programs and relative paths).
    pub working_dir: String,
    /// Environment programs start with.
    pub env: Vec<(String, String)>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

type Outbox = mpsc::UnboundedSender<Response>;

fn send(out: &Outbox, id: u64, body: ResponseBody) {
    let _ = out.send(Response { id, body });
}

/// Serves requests read from `reader`, answering on `writer`, until `reader` ends. `created`
/// goes into the `Ready` message that opens the conversation.
pub async fn serve<R, W>(reader: R, writer: W, config: AgentConfig, created: Vec<String>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = Arc::new(config);
    let (out, mut outq) = mpsc::unbounded_channel::<Response>();
    let writer_task = tokio::spawn(async move {
        let mut writer = writer;
        while let Some(r) = outq.recv().await {
            if let Ok(mut line) = serde_json::to_vec(&r) {
                line.push(b'\n');
                if writer.write_all(&line).await.is_err() {
                    return;
                }
                let _ = writer.flush().await;
            }
        }
    });
    send(
        &out,
        0,
        ResponseBody::Ready {
            version: crate::protocol::VERSION,
            created,
        },
    );
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut running: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let mut puts: HashMap<u64, (PathBuf, PathBuf, u32, std::fs::File)> = HashMap::new();
    while let Ok(Some(line)) = lines.next_line().await {
        running.retain(|_, h| !h.is_finished());
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                send(&out, 0, ResponseBody::Error(format!("bad request: {e}")));
                continue;
            }
        };
        let id = req.id;
        match req.body {
            RequestBody::Exec(exec) => {
                let out = out.clone();
                let spec = config.clone();
                let task = tokio::spawn(async move {
                    let mut cmd = tokio::process::Command::new(&exec.program);
                    cmd.args(&exec.args)
                        .env_clear()
                        .envs(spec.env.iter().map(|(k, v)| (k, v)))
                        .envs(exec.env.iter().map(|(k, v)| (k, v)))
                        .current_dir(exec.cwd.as_deref().unwrap_or(&spec.working_dir));
                    let line_out = out.clone();
                    let mut sink = move |stream, text: &str| {
                        send(
                            &line_out,
                            id,
                            ResponseBody::Line {
                                stream,
                                text: text.to_string(),
                            },
                        );
                    };
                    match process::run(cmd, &exec.program, exec.timeout, &mut sink).await {
                        Ok(o) => send(
                            &out,
                            id,
                            ResponseBody::Exit {
                                status: o.status,
                                stdout: o.stdout,
                                stderr: o.stderr,
                            },
                        ),
                        Err(e) => send(&out, id, ResponseBody::Error(e.to_string())),
                    }
                });
                running.insert(id, task.abort_handle());
            }
            RequestBody::Cancel => {
                // Dropping the exec task kills its process tree (see `process::run`).
                if let Some(h) = running.remove(&id) {
                    h.abort();
                }
            }
            RequestBody::FileOp(op) => {
                let out = out.clone();
                let cwd = PathBuf::from(&config.working_dir);
                tokio::task::spawn_blocking(move || match fileops::apply(&op, &cwd) {
                    Ok(r) => send(&out, id, ResponseBody::FileOp(r)),
                    Err(e) => send(&out, id, ResponseBody::Error(e.to_string())),
                });
            }
            RequestBody::PutBegin { path, mode } => {
                let dest = fileops::resolve(Path::new(&config.working_dir), &path);
                let tmp = dest.with_file_name(format!(
                    ".{}.kiln-part",
                    dest.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ));
                let opened = dest
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::fs::File::create(&tmp));
                match opened {
                    Ok(f) => {
                        puts.insert(id, (tmp, dest, mode, f));
                    }
                    Err(e) => send(&out, id, ResponseBody::Error(io("creating", &tmp, e))),
                }
            }
            RequestBody::Data(chunk) => {
                if let Some((tmp, _, _, f)) = puts.get_mut(&id) {
                    let ok = b64decode(&chunk).map(|bytes| f.write_all(&bytes));
                    if !matches!(ok, Some(Ok(()))) {
                        let tmp = tmp.clone();
                        puts.remove(&id);
                        let _ = std::fs::remove_file(&tmp);
                        send(
                            &out,
                            id,
                            ResponseBody::Error(format!("writing {}", tmp.display())),
                        );
                    }
                }
            }
            RequestBody::End => {
                if let Some((tmp, dest, mode, f)) = puts.remove(&id) {
                    use std::os::unix::fs::PermissionsExt;
                    drop(f);
                    let r = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                        .and_then(|_| std::fs::rename(&tmp, &dest));
                    match r {
                        Ok(()) => send(&out, id, ResponseBody::Done),
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            send(&out, id, ResponseBody::Error(io("writing", &dest, e)))
                        }
                    }
                }
            }
            RequestBody::Get { path } => {
                let out = out.clone();
                let src = fileops::resolve(Path::new(&config.working_dir), &path);
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut f = match std::fs::File::open(&src) {
                        Ok(f) => f,
                        Err(e) => {
                            return send(&out, id, ResponseBody::Error(io("reading", &src, e)))
                        }
                    };
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match f.read(&mut buf) {
                            Ok(0) => return send(&out, id, ResponseBody::Done),
                            Ok(n) => send(&out, id, ResponseBody::Data(b64encode(&buf[..n]))),
                            Err(e) => {
                                return send(&out, id, ResponseBody::Error(io("reading", &src, e)))
                            }
                        }
                    }
                });
            }
        }
    }
    // kiln is gone or done: stop everything (PID 1 then ends the namespace).
    for (_, h) in running {
        h.abort();
    }
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer_task).await;
}
