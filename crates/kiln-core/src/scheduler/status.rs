//! What a pipeline's runs came to: its next run, its newest image and the failed scheduled
//! runs in a row (GetImagePipeline, `kiln pipeline get`, and auto-disable).

use chrono::{DateTime, Utc};
use kiln_store::{Filter, Order};
use serde::Serialize;

use super::{instant, spec};
use crate::record::{Records, State};
use crate::resources::{PipelineStatus, Resource};
use crate::store::StoreError;

/// What GetImagePipeline and `kiln pipeline get` show of a pipeline's runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The next instant of its schedule (none without a schedule, or when it is disabled).
    pub date_next_run: Option<DateTime<Utc>>,
    /// When its newest image was started.
    pub date_last_run: Option<DateTime<Utc>>,
    /// Its newest image's state.
    pub last_run_status: Option<State>,
    /// Scheduled runs in a row that failed (manual starts do not count), since it was last
    /// created, updated or enabled.
    pub consecutive_failures: u32,
}

/// What a pipeline's runs came to at `now`: its next run, its newest image and the scheduled
/// runs in a row that failed.
pub async fn status(
    records: &Records,
    pipeline: &Resource,
    now: DateTime<Utc>,
) -> Result<RunStatus, StoreError> {
    let mut out = RunStatus::default();
    let spec = spec::of(pipeline).ok().flatten();
    let limit = spec
        .as_ref()
        .map_or(spec::DEFAULT_FAILURE_LIMIT, |s| s.failure_limit);
    let runs = records
        .store()
        .db()
        .runs(&pipeline.arn, runs_to_read(limit))
        .await?;
    if let Some(spec) = spec.filter(|_| pipeline.status != Some(PipelineStatus::Disabled)) {
        let after = runs.first().map(|r| instant(r.at_ms)).unwrap_or(now);
        out.date_next_run = spec.schedule.next_after(after.max(now));
    }
    let newest = records
        .summaries(&Filter {
            pipeline: Some(pipeline.arn.clone()),
            order: Order::Newest,
            limit: Some(1),
            ..Filter::default()
        })
        .await?;
    if let Some(s) = newest.first() {
        out.date_last_run = Some(s.created);
        out.last_run_status = Some(s.state);
    }
    out.consecutive_failures = consecutive_failures(records, pipeline, &runs).await?;
    Ok(out)
}

/// How many of a pipeline's latest runs to read to count `limit` failures in a row (skipped
/// runs between them do not break the row).
pub(super) fn runs_to_read(limit: u32) -> u32 {
    limit.saturating_mul(4).max(20)
}

/// The scheduled runs in a row, latest first, whose builds failed: since the pipeline was
/// created, updated or re-enabled; a build still running does not break the row, one that
/// ended otherwise does. Only the images' states are read (not their records).
pub(super) async fn consecutive_failures(
    records: &Records,
    pipeline: &Resource,
    runs: &[kiln_store::Run],
) -> Result<u32, StoreError> {
    let reset = pipeline.date_updated.unwrap_or(pipeline.date_created);
    let mut failures = 0;
    for run in runs {
        if instant(run.at_ms) < reset {
            break;
        }
        let Some(image) = &run.image else { continue };
        let state = records
            .store()
            .db()
            .get(image)
            .await?
            .and_then(|row| row.state)
            .and_then(|s| State::parse(&s));
        match state {
            Some(State::Failed) => failures += 1,
            Some(s) if !s.is_final() => {}
            Some(_) => break,
            None => {}
        }
    }
    Ok(failures)
}
