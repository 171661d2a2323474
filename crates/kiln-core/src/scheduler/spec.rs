//! A pipeline's schedule as kiln reads it from the pipeline resource: AWS's `schedule` block
//! plus kiln's own `rebuildWhen` (a field in kiln's files, the tag `kiln:rebuildWhen` through
//! the API, whose clients refuse members the model does not have).

use std::fmt;

use kiln_schedule::{Schedule, ScheduleError};
use serde_json::Value;

use crate::resources::Resource;

/// The tag that sets [`RebuildWhen`] on a pipeline made through the API.
pub const REBUILD_WHEN_TAG: &str = "kiln:rebuildWhen";

/// Scheduled runs in a row that may fail before the pipeline is disabled, when its schedule
/// has no `autoDisablePolicy` (botocore documents 5).
pub const DEFAULT_FAILURE_LIMIT: u32 = 5;

/// When a scheduled run builds (Image Builder's `pipelineExecutionStartCondition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartCondition {
    /// At every match of the expression.
    ExpressionMatchOnly,
    /// Only when a newer component, recipe or parent version matches the recipe's filters
    /// (or, with [`RebuildWhen`], the parent's digest moved or its packages have updates).
    #[default]
    DependencyUpdatesAvailable,
}

impl StartCondition {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            StartCondition::ExpressionMatchOnly => "EXPRESSION_MATCH_ONLY",
            StartCondition::DependencyUpdatesAvailable => {
                "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
            }
        }
    }

    /// Reads Image Builder's word.
    pub fn parse(s: &str) -> Option<StartCondition> {
        [
            StartCondition::ExpressionMatchOnly,
            StartCondition::DependencyUpdatesAvailable,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for StartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kiln's further reasons for a scheduled run to build (with the default start condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RebuildWhen {
    /// The parent's tag names other content than the last image was built from.
    pub parent_digest: bool,
    /// The last image's OS packages have updates in its package sources.
    pub os_packages: bool,
}

impl RebuildWhen {
    /// The words, as written: `parentDigest`, `osPackages`.
    pub const WORDS: [&'static str; 2] = ["parentDigest", "osPackages"];

    /// Reads a list of words (comma or space separated in a tag).
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<RebuildWhen, String> {
        let mut r = RebuildWhen::default();
        for w in words {
            match w.trim() {
                "" => {}
                "parentDigest" => r.parent_digest = true,
                "osPackages" => r.os_packages = true,
                other => {
                    return Err(format!(
                        "`{other}` is not a rebuild condition: use {}",
                        Self::WORDS.join(" or ")
                    ))
                }
            }
        }
        Ok(r)
    }

    /// Reads the tag's value.
    pub fn parse_tag(value: &str) -> Result<RebuildWhen, String> {
        Self::parse(value.split([',', ' ']))
    }

    /// Whether any condition is on.
    pub fn any(self) -> bool {
        self.parent_digest || self.os_packages
    }
}

/// A pipeline's schedule and what a run needs to build.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSchedule {
    /// When runs are due (anchored at the pipeline's creation, for `rate()`).
    pub schedule: Schedule,
    /// Whether a due run builds.
    pub condition: StartCondition,
    /// Scheduled runs in a row that may fail before the pipeline is disabled.
    pub failure_limit: u32,
    /// kiln's further conditions.
    pub rebuild_when: RebuildWhen,
}

/// Why a stored pipeline's schedule cannot be read (it was checked when stored, so this means
/// the store holds something an older kiln let in).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The expression or time zone.
    #[error("its schedule: {0}")]
    Schedule(#[from] ScheduleError),
    /// Another field of the schedule.
    #[error("its schedule: {0}")]
    Field(String),
}

/// The schedule of a pipeline; `None` when it has none (it runs only when started).
pub fn of(pipeline: &Resource) -> Result<Option<PipelineSchedule>, SpecError> {
    let Some(s) = pipeline.request.get("schedule") else {
        return Ok(None);
    };
    let Some(expression) = s.get("scheduleExpression").and_then(Value::as_str) else {
        return Ok(None);
    };
    let timezone = s.get("timezone").and_then(Value::as_str);
    let schedule = Schedule::parse(expression, timezone)?.anchored(pipeline.date_created);
    let condition = match s
        .get("pipelineExecutionStartCondition")
        .and_then(Value::as_str)
    {
        None => StartCondition::default(),
        Some(c) => StartCondition::parse(c)
            .ok_or_else(|| SpecError::Field(format!("unknown start condition `{c}`")))?,
    };
    let failure_limit = s
        .pointer("/autoDisablePolicy/failureCount")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_FAILURE_LIMIT, |n| {
            u32::try_from(n).unwrap_or(u32::MAX)
        });
    Ok(Some(PipelineSchedule {
        schedule,
        condition,
        failure_limit,
        rebuild_when: rebuild_when(pipeline).map_err(SpecError::Field)?,
    }))
}

/// The pipeline's `rebuildWhen` field, or else its `kiln:rebuildWhen` tag.
pub fn rebuild_when(pipeline: &Resource) -> Result<RebuildWhen, String> {
    if let Some(v) = pipeline.request.get("rebuildWhen") {
        let words: Vec<&str> = match v {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => s.split([',', ' ']).collect(),
            _ => Vec::new(),
        };
        return RebuildWhen::parse(words);
    }
    match pipeline
        .request
        .pointer(&format!("/tags/{REBUILD_WHEN_TAG}"))
        .and_then(Value::as_str)
    {
        Some(tag) => RebuildWhen::parse_tag(tag),
        None => Ok(RebuildWhen::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_conditions_read_from_words_and_tags() {
        assert_eq!(
            RebuildWhen::parse_tag("parentDigest, osPackages").unwrap(),
            RebuildWhen {
                parent_digest: true,
                os_packages: true
            }
        );
        assert_eq!(
            RebuildWhen::parse_tag("osPackages").unwrap(),
            RebuildWhen {
                parent_digest: false,
                os_packages: true
            }
        );
        let e = RebuildWhen::parse_tag("packages").unwrap_err();
        assert!(e.contains("`packages`") && e.contains("osPackages"), "{e}");
    }

    #[test]
    fn start_conditions_read_their_words() {
        assert_eq!(
            StartCondition::parse("EXPRESSION_MATCH_ONLY"),
            Some(StartCondition::ExpressionMatchOnly)
        );
        assert_eq!(StartCondition::parse("sometimes"), None);
        assert_eq!(
            StartCondition::default().as_str(),
            "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
        );
    }
}
