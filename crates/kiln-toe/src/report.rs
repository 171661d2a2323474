//! What a run did: the `detailedoutput.json` model.
//!
//! The shape follows AWSTOE's `detailedoutput.json` (execution → documents → phases → steps,
//! `inputs` and `outputs` as JSON-encoded strings), so that tools written for AWSTOE's output
//! read kiln's too; kiln adds `attempts`, step counts per phase and loop details.

use chrono::{DateTime, Local};
use serde::Serialize;

/// Status of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// It ran and succeeded.
    Success,
    /// It failed (after its attempts).
    Failed,
    /// Its `if` said Skip.
    Skipped,
    /// It failed and its `onFailure` is Ignore.
    IgnoredFailure,
}

#[cfg(test)]
mod word_tests {
    use super::*;

    #[test]
    fn step_words_are_the_report_names() {
        for s in [
            StepStatus::Success,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::IgnoredFailure,
        ] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.word().into())
            );
        }
    }
}

impl StepStatus {
    /// The word used in reports (`success`, `failed`, `skipped`, `ignored-failure`).
    pub fn word(self) -> &'static str {
        match self {
            StepStatus::Success => "success",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::IgnoredFailure => "ignored-failure",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.word())
    }
}

/// Status of a phase, a document or a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every step succeeded or was skipped.
    Success,
    /// Some steps failed with `onFailure: Ignore`; the rest succeeded.
    SuccessWithIgnoredFailure,
    /// A step failed.
    Failed,
}

impl RunStatus {
    /// True unless failed.
    pub fn ok(self) -> bool {
        self != RunStatus::Failed
    }

    /// Combines the statuses of parts into the status of their whole.
    pub fn combine(self, other: RunStatus) -> RunStatus {
        use RunStatus::*;
        match (self, other) {
            (Failed, _) | (_, Failed) => Failed,
            (SuccessWithIgnoredFailure, _) | (_, SuccessWithIgnoredFailure) => {
                SuccessWithIgnoredFailure
            }
            _ => Success,
        }
    }

    /// The word used in reports.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::SuccessWithIgnoredFailure => "success-with-ignored-failure",
            RunStatus::Failed => "failed",
        }
    }
}

/// Loop details of a step.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoopReport {
    /// The loop's name, if any.
    pub name: Option<String>,
    /// How many iterations the loop has.
    pub iterations: usize,
    /// How many ran in the last attempt.
    pub completed_iterations: usize,
    /// Index of the iteration that failed, if one did.
    pub failed_iteration: Option<usize>,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// Action module.
    pub action: String,
    /// Outcome.
    pub status: StepStatus,
    /// Why it failed (empty otherwise).
    pub failure_message: String,
    /// Effective time limit (-1: none).
    pub timeout_seconds: i64,
    /// Effective onFailure.
    pub on_failure: String,
    /// Effective maxAttempts.
    pub max_attempts: u32,
    /// How many attempts were made.
    pub attempts: u32,
    /// Start.
    pub start_time: DateTime<Local>,
    /// End.
    pub end_time: DateTime<Local>,
    /// Resolved inputs, JSON-encoded (an array: one item per input, or one for map inputs).
    pub inputs: String,
    /// Outputs, JSON-encoded (an array of objects).
    pub outputs: String,
    /// Loop details, for steps with a loop.
    #[serde(rename = "loop")]
    pub looping: Option<LoopReport>,
    /// For ExecuteDocument: the nested runs.
    pub detailed_output: Option<Vec<ExecutionReport>>,
    /// Resolved inputs as values, for chaining.
    #[serde(skip)]
    pub input_values: Vec<serde_json::Value>,
    /// Outputs as values, for chaining.
    #[serde(skip)]
    pub output_values: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    /// Phase name.
    pub name: String,
    /// Outcome.
    pub status: RunStatus,
    /// Start.
    pub start_time: DateTime<Local>,
    /// End.
    pub end_time: DateTime<Local>,
    /// Why it failed.
    pub failure_message: String,
    /// Steps in order (those that were reached).
    pub steps: Vec<StepReport>,
}

/// One document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    /// Document `name`.
    pub name: String,
    /// Where it came from.
    pub file_path: String,
    /// Document `description`.
    pub description: String,
    /// Outcome.
    pub status: RunStatus,
    /// Start.
    pub start_time: DateTime<Local>,
    /// End.
    pub end_time: DateTime<Local>,
    /// Why it failed.
    pub failure_message: String,
    /// Phases that ran.
    pub phases: Vec<PhaseReport>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReport {
    /// Execution id.
    pub execution_id: String,
    /// Outcome.
    pub status: RunStatus,
    /// Start.
    pub start_time: DateTime<Local>,
    /// End.
    pub end_time: DateTime<Local>,
    /// Why it failed (the first failure).
    pub failure_message: String,
    /// Steps that ran (not skipped).
    pub executed_step_count: usize,
    /// Steps that failed.
    pub failed_step_count: usize,
    /// Steps whose failure was ignored.
    pub ignored_failed_step_count: usize,
    /// Where the logs are.
    pub log_url: String,
    /// Documents in order.
    pub documents: Vec<DocumentReport>,
}

impl ExecutionReport {
    /// Every step of every phase of every document (not nested runs).
    pub fn steps(&self) -> impl Iterator<Item = &StepReport> {
        self.documents
            .iter()
            .flat_map(|d| d.phases.iter())
            .flat_map(|p| p.steps.iter())
    }

    /// Recomputes the counts from the steps.
    pub fn count(&mut self) {
        let (mut executed, mut failed, mut ignored) = (0, 0, 0);
        for s in self.steps() {
            match s.status {
                StepStatus::Skipped => {}
                StepStatus::Success => executed += 1,
                StepStatus::Failed => {
                    executed += 1;
                    failed += 1
                }
                StepStatus::IgnoredFailure => {
                    executed += 1;
                    ignored += 1
                }
            }
        }
        self.executed_step_count = executed;
        self.failed_step_count = failed;
        self.ignored_failed_step_count = ignored;
    }

    /// The summary AWSTOE puts in an ExecuteDocument step's outputs.
    pub fn summary(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("executedStepCount".into(), self.executed_step_count.into());
        m.insert("executionId".into(), self.execution_id.clone().into());
        m.insert("failedStepCount".into(), self.failed_step_count.into());
        m.insert("failureMessage".into(), self.failure_message.clone().into());
        m.insert(
            "ignoredFailedStepCount".into(),
            self.ignored_failed_step_count.into(),
        );
        m.insert("logUrl".into(), self.log_url.clone().into());
        m.insert("status".into(), self.status.word().into());
        m
    }
}
