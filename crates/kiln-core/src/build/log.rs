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

/// Passes events on and writes each as a line of the build log (and, for a queued build, to
/// the outbox its worker sends to the store).
pub(crate) struct Tee {
    inner: Arc<dyn BuildObserver>,
    file: Mutex<Option<std::fs::File>>,
    outbox: Option<Arc<super::shipped_log::LogOutbox>>,
}

impl Tee {
    /// Appends to `logs/build.log` (created when missing), and to `outbox` when given.
    pub(crate) fn new(
        inner: Arc<dyn BuildObserver>,
        logs: &Path,
        outbox: Option<Arc<super::shipped_log::LogOutbox>>,
    ) -> Tee {
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
            outbox,
        }
    }
}

impl BuildObserver for Tee {
    fn event(&self, e: &BuildEvent) {
        if let Some(line) = render(e) {
            if let Ok(mut f) = self.file.lock() {
                if let Some(f) = f.as_mut() {
                    // One write per line: a reader never sees half of one.
                    let _ = f.write_all(format!("{line}\n").as_bytes());
                }
            }
            if let Some(o) = &self.outbox {
                o.push(line);
            }
        }
        self.inner.event(e);
    }
}

/// Whether `line` is the one a build's log ends with: its final state (`TIME == FAILED: why`).
pub fn is_last_line(line: &str) -> bool {
    let Some((_, rest)) = line.split_once(' ') else {
        return false;
    };
    let Some(state) = rest.strip_prefix("== ") else {
        return false;
    };
    let word = state.split(':').next().unwrap_or_default();
    crate::record::State::parse(word).is_some_and(|s| s.is_final())
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

/// Where a build's log is read from.
#[derive(Clone)]
pub enum LogSource {
    /// The build log file in a record's log folder on this host.
    File(PathBuf),
    /// The lines its worker sent to the store: a queued build's, whichever host ran it.
    Stored {
        /// The store.
        store: crate::state::Store,
        /// The image's ARN.
        image: String,
    },
}

/// Lines fetched from the store at a time.
const STORED_PAGE: u32 = 1000;

/// How long a reader of a stored log waits, once the build has ended, for the log's last line
/// (the worker sends it just after the final record; a worker that died never does).
const LAST_LINE_WAIT: Duration = Duration::from_secs(10);

impl LogSource {
    /// Where `rec`'s log is: the store for a queued build (its worker sends each line there),
    /// unless the store has none of it and the log folder is on this host (a build queued by
    /// a kiln before the store kept logs); else the file.
    pub async fn of(store: &crate::state::Store, rec: &crate::record::ImageRecord) -> LogSource {
        let file = rec.logs.join(BUILD_LOG);
        let queued = matches!(store.jobs().job(&rec.arn).await, Ok(Some(_)));
        let stored = queued
            && (!file.exists()
                || matches!(store.logs().log_lines(&rec.arn, 0, 1).await, Ok(l) if !l.is_empty()));
        if stored {
            LogSource::Stored {
                store: store.clone(),
                image: rec.arn.clone(),
            }
        } else {
            LogSource::File(file)
        }
    }

    /// Every whole line written so far, numbered from 0.
    pub async fn lines(&self) -> Vec<(u64, String)> {
        let mut f = Follower::from_source(self.clone(), 0);
        let mut out = Vec::new();
        while let Some(l) = f.poll().await {
            out.push(l);
        }
        out
    }

    /// A reader of this log from line `from` (what a client has seen) on.
    pub fn follow(self, from: u64) -> Follower {
        Follower::from_source(self, from)
    }
}

/// Reads a build log from line `from` (0-based) as it grows.
pub struct Follower {
    source: LogSource,
    line: u64,
    offset: u64,
    fetched: std::collections::VecDeque<(u64, String)>,
    /// The log's last line was read.
    ended: bool,
}

impl Follower {
    /// A reader of the build log file in `logs`, starting at line `from`.
    pub fn new(logs: &Path, from: u64) -> Follower {
        Follower::from_source(LogSource::File(logs.join(BUILD_LOG)), from)
    }

    fn from_source(source: LogSource, from: u64) -> Follower {
        let stored = matches!(source, LogSource::Stored { .. });
        let f = Follower {
            source,
            line: 0,
            offset: 0,
            fetched: Default::default(),
            ended: false,
        };
        if stored {
            // The store numbers its lines: no need to read past the first ones.
            Follower { line: from, ..f }
        } else {
            f.skip_to(from)
        }
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

    /// The next whole line of a log file and its number, if one has been written.
    pub fn read_line(&mut self) -> Option<(u64, String)> {
        let LogSource::File(path) = &self.source else {
            return None;
        };
        let mut f = std::fs::File::open(path).ok()?;
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

    /// The next line written so far, from the file or the store.
    async fn poll(&mut self) -> Option<(u64, String)> {
        let LogSource::Stored { store, image } = &self.source else {
            return self.read_line();
        };
        if self.fetched.is_empty() {
            match store.logs().log_lines(image, self.line, STORED_PAGE).await {
                Ok(lines) => self
                    .fetched
                    .extend(lines.into_iter().map(|l| (l.number, l.text))),
                Err(e) => tracing::debug!(%image, error = %e, "cannot read the stored log"),
            }
        }
        let (n, text) = self.fetched.pop_front()?;
        self.line = n + 1;
        self.ended |= is_last_line(&text);
        Some((n, text))
    }

    /// The next line, waiting for it while `running()` says the build goes on; `None` once
    /// the build has ended and every line has been read.
    pub async fn next<F, Fut>(&mut self, mut running: F) -> Option<(u64, String)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if let Some(l) = self.poll().await {
                return Some(l);
            }
            if !running().await {
                // The last lines may have been written between the read and the check; a
                // worker sends its last ones just after the final record.
                if !matches!(self.source, LogSource::Stored { .. }) {
                    return self.poll().await;
                }
                let until = tokio::time::Instant::now() + LAST_LINE_WAIT;
                loop {
                    if let Some(l) = self.poll().await {
                        return Some(l);
                    }
                    if self.ended || tokio::time::Instant::now() >= until {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
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

    #[test]
    fn the_last_line_is_the_final_state() {
        let mut rec = crate::record::tests::record("x", "1.0.0", crate::record::State::Failed);
        rec.set_state(crate::record::State::Failed, Some("why".into()));
        let line = render(&BuildEvent::Finished {
            record: Box::new(rec),
        })
        .unwrap();
        assert!(is_last_line(&line), "{line}");
        assert!(!is_last_line("10:00:00.000 == TESTING"));
        assert!(!is_last_line("10:00:00.000 component 1/1 x"));
        assert!(is_last_line(
            "10:00:00.000 == CANCELLED: cancelled on request"
        ));
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
