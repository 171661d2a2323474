//! The build log: every event of a build as a plain line in `LOGS/build.log`, written as the
//! build runs, and read back as it grows (`kiln image logs --follow`, the API's log stream).

use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_instance::Stream;
use kiln_toe::events::OwnedEvent;

use super::event::{BuildEvent, BuildObserver};

/// The build log's file name in a record's log folder.
pub const BUILD_LOG: &str = "build.log";

/// Passes events on and writes each as a line of the build log.
pub(crate) struct Tee {
    inner: Arc<dyn BuildObserver>,
    file: Mutex<Option<std::fs::File>>,
}

impl Tee {
    /// Appends to `logs/build.log` (created when missing).
    pub(crate) fn new(inner: Arc<dyn BuildObserver>, logs: &Path) -> Tee {
        let path = logs.join(BUILD_LOG);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot write the build log"))
            .ok();
        Tee {
            inner,
            file: Mutex::new(file),
        }
    }
}

impl BuildObserver for Tee {
    fn event(&self, e: &BuildEvent) {
        if let (Some(line), Ok(mut f)) = (render(e), self.file.lock()) {
            if let Some(f) = f.as_mut() {
                // One write per line: a reader never sees half of one.
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
        }
        self.inner.event(e);
    }
}

/// An event as a line of the build log (`None` for events a reader does not need).
pub fn render(e: &BuildEvent) -> Option<String> {
    let now = chrono::Utc::now().format("%H:%M:%S%.3f");
    let text = match e {
        BuildEvent::Started { record } => format!("{} {}", record.arn, record.state),
        BuildEvent::Stage { state } => format!("== {state}"),
        BuildEvent::Builder { choice } => format!("builder: {choice}"),
        BuildEvent::Progress { message } => message.clone(),
        BuildEvent::ComponentStarted {
            index,
            total,
            name,
            cached,
        } => format!(
            "component {}/{total} {name}{}",
            index + 1,
            if *cached { " (from the cache)" } else { "" }
        ),
        BuildEvent::ComponentFinished { record, .. } => format!(
            "component {}: {:?} in {:.1} s",
            record.name,
            record.cache,
            record.duration_ms as f64 / 1000.0
        ),
        BuildEvent::Step { event } => step(event)?,
        BuildEvent::LogsShipped { to, files, .. } => format!("logs: {files} file(s) to {to}"),
        BuildEvent::Warning { message } => format!("warning: {message}"),
        BuildEvent::Finished { record } => {
            match record.history.last().and_then(|h| h.reason.clone()) {
                Some(reason) => format!("== {}: {reason}", record.state),
                None => format!("== {}", record.state),
            }
        }
    };
    Some(format!("{now} {text}"))
}

fn step(e: &OwnedEvent) -> Option<String> {
    Some(match e {
        OwnedEvent::DocumentStarted { file, .. } => format!("document {file}"),
        OwnedEvent::PhaseStarted { phase, .. } => format!("phase {phase}"),
        OwnedEvent::StepStarted { step } => {
            format!(
                "step {}/{} ({:?}) started",
                step.phase, step.step, step.action
            )
        }
        OwnedEvent::Output { step, stream, line } => format!(
            "  {} {}: {line}",
            if *stream == Stream::Stderr { "!" } else { "|" },
            step.step
        ),
        OwnedEvent::Note { step, message } => format!("  > {}: {message}", step.step),
        OwnedEvent::Warning { message } => format!("warning: {message}"),
        OwnedEvent::StepFinished {
            step,
            status,
            duration_ms,
            failure_message,
            ..
        } => {
            let mut s = format!(
                "step {}/{}: {status:?} in {:.1} s",
                step.phase,
                step.step,
                *duration_ms as f64 / 1000.0
            );
            if !failure_message.is_empty() {
                s.push_str(&format!(": {failure_message}"));
            }
            s
        }
        _ => return None,
    })
}

/// A line of the build log that is a step's output, read back as [`render`] writes it
/// (`TIME   | STEP: TEXT`, `!` for stderr): `(STEP, TEXT)`.
pub fn step_output(line: &str) -> Option<(&str, &str)> {
    let (_, rest) = line.split_once(' ')?;
    let rest = rest
        .strip_prefix("  | ")
        .or_else(|| rest.strip_prefix("  ! "))?;
    rest.split_once(": ")
}

/// Reads a build log from line `from` (0-based) as it grows.
pub struct Follower {
    path: PathBuf,
    line: u64,
    offset: u64,
}

impl Follower {
    /// A reader of the build log in `logs`, starting at line `from` (what a client has seen).
    pub fn new(logs: &Path, from: u64) -> Follower {
        Follower {
            path: logs.join(BUILD_LOG),
            line: 0,
            offset: 0,
        }
        .skip_to(from)
    }

    fn skip_to(mut self, from: u64) -> Follower {
        while self.line < from {
            match self.read_line() {
                Some(_) => {}
                None => break,
            }
        }
        self
    }

    /// The next whole line and its number, if one has been written.
    pub fn read_line(&mut self) -> Option<(u64, String)> {
        let mut f = std::fs::File::open(&self.path).ok()?;
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut r = std::io::BufReader::new(f);
        let mut buf = String::new();
        let n = r.read_line(&mut buf).ok()?;
        // A line still being written (no newline yet) waits for the next look.
        if n == 0 || !buf.ends_with('\n') {
            return None;
        }
        self.offset += n as u64;
        let number = self.line;
        self.line += 1;
        buf.pop();
        Some((number, buf))
    }

    /// The next line, waiting for it while `running()` says the build goes on; `None` once
    /// the build has ended and every line has been read.
    pub async fn next<F, Fut>(&mut self, mut running: F) -> Option<(u64, String)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if let Some(l) = self.read_line() {
                return Some(l);
            }
            if !running().await {
                // The last lines may have been written between the read and the check.
                return self.read_line();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_output_reads_back_what_render_writes() {
        let e = BuildEvent::Step {
            event: OwnedEvent::Output {
                step: kiln_toe::events::StepId {
                    depth: 0,
                    document: "d".into(),
                    phase: "build".into(),
                    step: "Fail".into(),
                    action: kiln_toe::action::Action::ExecuteBash,
                },
                stream: Stream::Stderr,
                line: "the error: disk full".into(),
            },
        };
        let line = render(&e).unwrap();
        assert_eq!(step_output(&line), Some(("Fail", "the error: disk full")));
        assert_eq!(step_output("10:00:00.000 phase build"), None);
    }

    #[tokio::test]
    async fn a_follower_sees_each_line_once_and_resumes_where_told() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(BUILD_LOG);
        std::fs::write(&path, "a\nb\npart").unwrap();
        let mut f = Follower::new(d.path(), 0);
        assert_eq!(f.read_line(), Some((0, "a".into())));
        assert_eq!(f.read_line(), Some((1, "b".into())));
        assert_eq!(f.read_line(), None, "a line without its newline waits");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"ial\nc\n").unwrap();
        assert_eq!(
            f.next(|| async { false }).await,
            Some((2, "partial".into()))
        );
        assert_eq!(f.next(|| async { false }).await, Some((3, "c".into())));
        assert_eq!(f.next(|| async { false }).await, None);
        let mut again = Follower::new(d.path(), 3);
        assert_eq!(again.read_line(), Some((3, "c".into())));
    }
}
