//! What a run reports while it runs, for progress displays and logs.

use kiln_instance::Stream;
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::report::{DocumentReport, PhaseReport, RunStatus, StepReport, StepStatus};

/// Which step an event is about.
#[derive(Debug, Clone, Copy)]
pub struct StepRef<'a> {
    /// Nesting depth: 0 for documents given to the run, 1 for a document run by
    /// ExecuteDocument, and so on.
    pub depth: usize,
    /// The document's name or path.
    pub document: &'a str,
    /// The phase.
    pub phase: &'a str,
    /// The step.
    pub step: &'a str,
    /// Its action.
    pub action: Action,
}

/// Something that happened.
#[derive(Debug)]
pub enum Event<'a> {
    /// A document starts.
    DocumentStarted {
        /// Nesting depth.
        depth: usize,
        /// Where it came from.
        file: &'a str,
        /// Its name.
        name: &'a str,
    },
    /// A phase starts.
    PhaseStarted {
        /// Nesting depth.
        depth: usize,
        /// The document.
        document: &'a str,
        /// The phase.
        phase: &'a str,
    },
    /// A step starts.
    StepStarted(StepRef<'a>),
    /// A line of a step's output.
    Output {
        /// The step.
        step: StepRef<'a>,
        /// stdout or stderr.
        stream: Stream,
        /// The line.
        line: &'a str,
    },
    /// Something worth telling about a running step: a retry, a reboot, a loop iteration.
    Note {
        /// The step.
        step: StepRef<'a>,
        /// What happened.
        message: &'a str,
    },
    /// A warning that is not about one step (an unused parameter, say).
    Warning {
        /// What happened.
        message: &'a str,
    },
    /// A step ended.
    StepFinished {
        /// The step.
        step: StepRef<'a>,
        /// Its report.
        report: &'a StepReport,
    },
    /// A phase ended.
    PhaseFinished {
        /// Nesting depth.
        depth: usize,
        /// Its report.
        report: &'a PhaseReport,
    },
    /// A document ended.
    DocumentFinished {
        /// Nesting depth.
        depth: usize,
        /// Its report.
        report: &'a DocumentReport,
    },
}

/// Which step an [`OwnedEvent`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepId {
    /// Nesting depth (0 for the run's own documents).
    pub depth: usize,
    /// The document's name or path.
    pub document: String,
    /// The phase.
    pub phase: String,
    /// The step.
    pub step: String,
    /// Its action.
    pub action: Action,
}

impl From<&StepRef<'_>> for StepId {
    fn from(s: &StepRef<'_>) -> Self {
        StepId {
            depth: s.depth,
            document: s.document.to_string(),
            phase: s.phase.to_string(),
            step: s.step.to_string(),
            action: s.action,
        }
    }
}

/// An [`Event`] that owns what it says: the form events take to another process or over HTTP
/// (and to a terminal that shows a build run elsewhere). Reports are reduced to what a person
/// watching needs; the full reports are in `detailedoutput.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum OwnedEvent {
    /// A document starts.
    #[serde(rename_all = "camelCase")]
    DocumentStarted {
        /// Nesting depth.
        depth: usize,
        /// Where it came from.
        file: String,
        /// Its name.
        name: String,
    },
    /// A phase starts.
    #[serde(rename_all = "camelCase")]
    PhaseStarted {
        /// Nesting depth.
        depth: usize,
        /// The document.
        document: String,
        /// The phase.
        phase: String,
    },
    /// A step starts.
    StepStarted {
        /// The step.
        step: StepId,
    },
    /// A line of a step's output.
    Output {
        /// The step.
        step: StepId,
        /// stdout or stderr.
        stream: Stream,
        /// The line.
        line: String,
    },
    /// A retry, a reboot, a loop iteration.
    Note {
        /// The step.
        step: StepId,
        /// What happened.
        message: String,
    },
    /// A warning not about one step.
    Warning {
        /// What happened.
        message: String,
    },
    /// A step ended.
    #[serde(rename_all = "camelCase")]
    StepFinished {
        /// The step.
        step: StepId,
        /// How it ended.
        status: StepStatus,
        /// Its wall time in milliseconds.
        duration_ms: u64,
        /// How many attempts it took.
        attempts: u32,
        /// Why it failed (empty otherwise).
        failure_message: String,
    },
    /// A phase ended.
    PhaseFinished {
        /// Nesting depth.
        depth: usize,
        /// The phase.
        phase: String,
        /// How it ended.
        status: RunStatus,
    },
    /// A document ended.
    DocumentFinished {
        /// Nesting depth.
        depth: usize,
        /// Where it came from.
        file: String,
        /// How it ended.
        status: RunStatus,
    },
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(e: &Event<'_>) -> Self {
        match e {
            Event::DocumentStarted { depth, file, name } => OwnedEvent::DocumentStarted {
                depth: *depth,
                file: file.to_string(),
                name: name.to_string(),
            },
            Event::PhaseStarted {
                depth,
                document,
                phase,
            } => OwnedEvent::PhaseStarted {
                depth: *depth,
                document: document.to_string(),
                phase: phase.to_string(),
            },
            Event::StepStarted(s) => OwnedEvent::StepStarted { step: s.into() },
            Event::Output { step, stream, line } => OwnedEvent::Output {
                step: step.into(),
                stream: *stream,
                line: line.to_string(),
            },
            Event::Note { step, message } => OwnedEvent::Note {
                step: step.into(),
                message: message.to_string(),
            },
            Event::Warning { message } => OwnedEvent::Warning {
                message: message.to_string(),
            },
            Event::StepFinished { step, report } => OwnedEvent::StepFinished {
                step: step.into(),
                status: report.status,
                duration_ms: (report.end_time - report.start_time)
                    .num_milliseconds()
                    .max(0) as u64,
                attempts: report.attempts,
                failure_message: report.failure_message.clone(),
            },
            Event::PhaseFinished { depth, report } => OwnedEvent::PhaseFinished {
                depth: *depth,
                phase: report.name.clone(),
                status: report.status,
            },
            Event::DocumentFinished { depth, report } => OwnedEvent::DocumentFinished {
                depth: *depth,
                file: report.file_path.clone(),
                status: report.status,
            },
        }
    }
}

/// Receives events. Called from the run's task; keep it quick.
pub trait Observer: Send + Sync {
    /// One event.
    fn event(&self, event: &Event<'_>);
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// Sends every event to several observers.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Fanout {
    fn event(&self, event: &Event<'_>) {
        for o in &self.0 {
            o.event(event);
        }
    }
}

/// Writes a readable log of a run: step headers, every output line in order, step results.
/// Lines are written as they come, so the log is useful even if the run is interrupted.
pub struct ConsoleLog<W: std::io::Write + Send> {
    out: std::sync::Mutex<W>,
}

impl<W: std::io::Write + Send> ConsoleLog<W> {
    /// A log into a writer.
    pub fn new(out: W) -> Self {
        ConsoleLog {
            out: std::sync::Mutex::new(out),
        }
    }
}

fn step_path(s: &StepRef<'_>) -> String {
    format!("{}{}/{}", "  ".repeat(s.depth), s.phase, s.step)
}

impl<W: std::io::Write + Send> Observer for ConsoleLog<W> {
    fn event(&self, event: &Event<'_>) {
        let Ok(mut out) = self.out.lock() else {
            return;
        };
        let now = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z");
        let _ = match event {
            Event::DocumentStarted { depth, file, .. } => {
                writeln!(out, "{now} {}=== document {file}", "  ".repeat(*depth))
            }
            Event::PhaseStarted { depth, phase, .. } => {
                writeln!(out, "{now} {}--- phase {phase}", "  ".repeat(*depth))
            }
            Event::StepStarted(s) => {
                writeln!(out, "{now} ==> {} ({}) started", step_path(s), s.action)
            }
            Event::Output { line, .. } => writeln!(out, "{line}"),
            Event::Note { step, message } => {
                writeln!(out, "{now} --> {}: {message}", step_path(step))
            }
            Event::Warning { message } => writeln!(out, "{now} warning: {message}"),
            Event::StepFinished { step, report } => {
                let secs = (report.end_time - report.start_time).num_milliseconds() as f64 / 1000.0;
                let status = serde_json::to_value(report.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                if report.failure_message.is_empty() {
                    writeln!(out, "{now} <== {} {status} ({secs:.2} s)", step_path(step))
                } else {
                    writeln!(
                        out,
                        "{now} <== {} {status} ({secs:.2} s): {}",
                        step_path(step),
                        report.failure_message
                    )
                }
            }
            Event::PhaseFinished { depth, report } => writeln!(
                out,
                "{now} {}--- phase {} {}",
                "  ".repeat(*depth),
                report.name,
                report.status.word()
            ),
            Event::DocumentFinished { depth, report } => writeln!(
                out,
                "{now} {}=== document {} {}",
                "  ".repeat(*depth),
                report.file_path,
                report.status.word()
            ),
        };
        let _ = out.flush();
    }
}
