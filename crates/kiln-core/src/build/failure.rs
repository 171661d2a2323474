//! How a stage fails: the stage, the component and step, the step's last output lines, its log,
//! and the instance kept for debugging; [`StageFailure`] becomes the record's `failure`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_toe::events::{Event, Observer};
use kiln_toe::report::{ExecutionReport, StepStatus};

use crate::instances::KeptInstance;
use crate::record::{FailureInfo, State};

use super::instance::Driven;

/// Lines of a failing step's output quoted in its record.
pub(crate) const TAIL: usize = 15;

/// A failure inside a stage, on its way into the record.
#[derive(Debug)]
pub(crate) struct StageFailure {
    pub stage: State,
    pub component: Option<String>,
    pub step: Option<String>,
    pub reason: String,
    pub tail: Vec<String>,
    pub log: Option<PathBuf>,
    pub kept: Option<KeptInstance>,
}

impl StageFailure {
    /// A failure with only a reason.
    pub fn new(stage: State, reason: impl Into<String>) -> Self {
        StageFailure {
            stage,
            component: None,
            step: None,
            reason: reason.into(),
            tail: Vec::new(),
            log: None,
            kept: None,
        }
    }

    /// The first failed step of a run, with its last output lines and log.
    pub fn from_run(stage: State, component: Option<String>, run: &Driven, log_dir: &Path) -> Self {
        let (step, reason) = first_failure(&run.report);
        StageFailure {
            stage,
            component,
            tail: step.as_deref().map(|s| run.tails.of(s)).unwrap_or_default(),
            step,
            reason,
            log: Some(log_dir.join("console.log")),
            kept: run.kept.clone(),
        }
    }

    /// The same failure, about a component.
    pub fn of_component(mut self, name: &str) -> Self {
        self.component = Some(name.to_string());
        self
    }

    /// What the record keeps of it.
    pub fn info(self) -> FailureInfo {
        FailureInfo {
            stage: self.stage,
            component: self.component,
            step: self.step,
            reason: self.reason,
            output_tail: self.tail,
            log: self.log,
            kept_instance: self.kept.map(|k| k.id),
        }
    }
}

/// The first failed step of a report: `(phase/step, message)`, or the phase-level reason.
pub(crate) fn first_failure(report: &ExecutionReport) -> (Option<String>, String) {
    for d in &report.documents {
        for p in &d.phases {
            for s in &p.steps {
                if s.status == StepStatus::Failed {
                    return (
                        Some(format!("{}/{}", p.name, s.name)),
                        s.failure_message.clone(),
                    );
                }
            }
            if !p.status.ok() && !p.failure_message.is_empty() {
                return (None, p.failure_message.clone());
            }
        }
        if !d.status.ok() && !d.failure_message.is_empty() {
            return (None, d.failure_message.clone());
        }
    }
    (None, report.failure_message.clone())
}

/// Remembers the last output lines of every step, to quote a failing one.
#[derive(Default)]
pub(crate) struct Tails(Mutex<HashMap<String, VecDeque<String>>>);

impl Observer for Tails {
    fn event(&self, e: &Event<'_>) {
        if let Event::Output { step, line, .. } = e {
            if let Ok(mut m) = self.0.lock() {
                let q = m
                    .entry(format!("{}/{}", step.phase, step.step))
                    .or_default();
                q.push_back(line.to_string());
                if q.len() > TAIL {
                    q.pop_front();
                }
            }
        }
    }
}

impl Tails {
    /// The last lines of `phase/step`.
    pub fn of(&self, step: &str) -> Vec<String> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(step).map(|q| q.iter().cloned().collect()))
            .unwrap_or_default()
    }
}
