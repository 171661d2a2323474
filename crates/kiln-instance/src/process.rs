//! Running local processes: streamed output, bounded capture, timeouts that kill the whole tree.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::{ExecOutcome, ExitStatus, InstanceError, OutputSink, Stream};

/// Most bytes of each stream kept for the step's outputs; everything still streams to the sink.
pub const MAX_CAPTURE: usize = 8 << 20;

/// How long to keep reading after the program exits, for output a background child still
/// holds open. Long enough for buffered output, short enough that a daemon started by the step
/// does not hang it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

/// Splits a byte stream into lines and keeps a bounded copy.
struct Lines {
    stream: Stream,
    partial: Vec<u8>,
    captured: Vec<u8>,
}

impl Lines {
    fn new(stream: Stream) -> Self {
        Lines {
            stream,
            partial: Vec::new(),
            captured: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8], sink: &mut dyn OutputSink) {
        let room = MAX_CAPTURE.saturating_sub(self.captured.len());
        self.captured
            .extend_from_slice(&data[..data.len().min(room)]);
        self.partial.extend_from_slice(data);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            sink.line(self.stream, text.trim_end_matches('\r'));
        }
        // A line longer than the capture bound is emitted in pieces rather than held forever.
        if self.partial.len() > 64 * 1024 {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            sink.line(self.stream, &text);
        }
    }

    fn finish(mut self, sink: &mut dyn OutputSink) -> String {
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            sink.line(self.stream, &text);
        }
        String::from_utf8_lossy(&self.captured).into_owned()
    }
}

/// Kills the process tree of a session leader when dropped, unless disarmed: a cancelled or
/// panicking caller never leaves a step's processes behind.
struct TreeGuard {
    root: Option<i32>,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(root) = self.root.take() {
            kill_tree(root);
        }
    }
}

/// Spawns `cmd` as the leader of a new session and runs it to completion or timeout.
///
/// The session is what lets a timeout kill every process the program started, including
/// backgrounded ones, without touching anything else on the machine.
pub async fn run(
    mut cmd: Command,
    program: &str,
    timeout: Option<Duration>,
    sink: &mut dyn OutputSink,
) -> Result<ExecOutcome, InstanceError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| InstanceError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let root = child.id().and_then(|p| i32::try_from(p).ok());
    let mut guard = TreeGuard { root };

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out_lines = Lines::new(Stream::Stdout);
    let mut err_lines = Lines::new(Stream::Stderr);
    let mut out_buf = vec![0u8; 16 * 1024];
    let mut err_buf = vec![0u8; 16 * 1024];

    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut deadline = timeout.map_or(far, |t| Instant::now() + t);
    let mut status: Option<ExitStatus> = None;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                Some(n) => out_lines.feed(&out_buf[..n], sink),
                None => stdout = None,
            },
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                Some(n) => err_lines.feed(&err_buf[..n], sink),
                None => stderr = None,
            },
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(|e| InstanceError::io(format!("waiting for `{program}`"), e))?;
                status = Some(exit_status(s));
                deadline = Instant::now() + DRAIN_AFTER_EXIT;
            },
            _ = tokio::time::sleep_until(deadline) => {
                if status.is_none() {
                    if let Some(root) = guard.root.take() {
                        kill_tree(root);
                    }
                    let _ = child.wait().await;
                    status = Some(ExitStatus::TimedOut);
                    deadline = Instant::now() + DRAIN_AFTER_EXIT;
                } else {
                    break;
                }
            }
        }
    }
    // Processes the step left running on purpose (a daemon it started) stay; only a timeout
    // or a cancellation kills the tree.
    guard.root = None;
    Ok(ExecOutcome {
        status: status.unwrap_or(ExitStatus::TimedOut),
        stdout: out_lines.finish(sink),
        stderr: err_lines.finish(sink),
    })
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    let r = reader.as_mut()?;
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

fn exit_status(s: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    }
}

/// One line of `/proc/PID/stat`: the fields kiln needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Session id.
    pub session: i32,
    /// Whether it is a zombie (already dead, waiting to be reaped).
    pub zombie: bool,
}

/// Parses `/proc/PID/stat`; the command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let _pgrp = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        session,
        zombie: state == "Z" || state == "X",
    })
}

fn process_table() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<i32>().ok()?;
        parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?)
    })
    .collect()
}

/// Every live process in the session led by `root`, descending from `root`, or descending
/// from a process already in `known`.
pub fn tree_of(root: i32, table: &[ProcStat], known: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut found: BTreeSet<i32> = table
        .iter()
        .filter(|p| !p.zombie && (p.session == root || p.pid == root || known.contains(&p.pid)))
        .map(|p| p.pid)
        .collect();
    loop {
        let more: Vec<i32> = table
            .iter()
            .filter(|p| !p.zombie && found.contains(&p.ppid) && !found.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// Kills a session leader and every process of its session or below it.
///
/// Processes are first frozen with SIGSTOP, level by level, so that none can fork or be
/// reparented away while the tree is being found (a child that called `setsid` is only
/// recognisable through its parent); then all of them get SIGKILL.
pub fn kill_tree(root: i32) {
    let mut victims = BTreeSet::new();
    for _ in 0..100 {
        let found = tree_of(root, &process_table(), &victims);
        let fresh: Vec<i32> = found.difference(&victims).copied().collect();
        if fresh.is_empty() {
            break;
        }
        for &pid in &fresh {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        }
        victims.extend(fresh);
    }
    let _ = kill(Pid::from_raw(-root), Signal::SIGKILL);
    for &pid in &victims {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for _ in 0..50 {
        let left = tree_of(root, &process_table(), &BTreeSet::new());
        let left: Vec<i32> = left
            .into_iter()
            .chain(victims.iter().copied().filter(|p| is_alive(*p)))
            .collect();
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(root, "processes of a killed step survived repeated SIGKILL");
}

/// Sends SIGKILL to a process and, with `group`, to its whole process group (a kept VM's keeper
/// leads QEMU's group; a kept sandbox's PID 1 takes its namespace with it).
pub fn kill_now(pid: u32, group: bool) {
    let p = Pid::from_raw(pid as i32);
    if group {
        let _ = nix::sys::signal::killpg(p, Signal::SIGKILL);
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// True while process `pid` runs: a zombie (dead, not yet reaped by whoever inherited it) does
/// not count.
pub fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|p| !p.zombie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Exited but not reaped: a zombie until `wait`.
        let t0 = std::time::Instant::now();
        while is_alive(pid) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!is_alive(pid));
        child.wait().unwrap();
        assert!(is_alive(std::process::id() as i32));
    }

    #[test]
    fn stat_with_odd_command_names() {
        let s = parse_stat("1234 (a (b) c) S 1 1234 1234 0 -1").unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 1234,
                ppid: 1,
                session: 1234,
                zombie: false
            }
        );
        assert!(parse_stat("5 (x) Z 1 5 5").unwrap().zombie);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn tree_follows_sessions_and_parents() {
        let t = [
            ProcStat {
                pid: 10,
                ppid: 1,
                session: 10,
                zombie: false,
            },
            ProcStat {
                pid: 11,
                ppid: 10,
                session: 10,
                zombie: false,
            },
            // Left the session with setsid, but is still a descendant.
            ProcStat {
                pid: 12,
                ppid: 11,
                session: 12,
                zombie: false,
            },
            ProcStat {
                pid: 13,
                ppid: 12,
                session: 12,
                zombie: false,
            },
            // Orphaned (reparented to init) but still in the session.
            ProcStat {
                pid: 14,
                ppid: 1,
                session: 10,
                zombie: false,
            },
            ProcStat {
                pid: 20,
                ppid: 1,
                session: 20,
                zombie: false,
            },
            ProcStat {
                pid: 15,
                ppid: 10,
                session: 10,
                zombie: true,
            },
        ];
        assert_eq!(
            tree_of(10, &t, &BTreeSet::new()),
            [10, 11, 12, 13, 14].into_iter().collect()
        );
    }
}
