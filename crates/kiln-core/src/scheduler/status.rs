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
    let db = records.store().db();
    let mut out = RunStatus::default();
    if pipeline.status != Some(PipelineStatus::Disabled) {
        if let Ok(Some(spec)) = spec::of(pipeline) {
            let runs = db.runs(&pipeline.arn, 1).await?;
            let after = runs.first().map(|r| instant(r.at_ms)).unwrap_or(now);
            out.date_next_run = spec.schedule.next_after(after.max(now));
        }
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
    let reset = pipeline.date_updated.unwrap_or(pipeline.date_created);
    let limit = spec::of(pipeline)
        .ok()
        .flatten()
        .map_or(spec::DEFAULT_FAILURE_LIMIT, |s| s.failure_limit);
    for run in db
        .runs(&pipeline.arn, limit.saturating_mul(4).max(20))
        .await?
    {
        if instant(run.at_ms) < reset {
            break;
        }
        let Some(image) = &run.image else { continue };
        match records.get(image).await? {
            Some(r) if r.state == State::Failed => out.consecutive_failures += 1,
            Some(r) if !r.state.is_final() => {}
            Some(_) => break,
            None => {}
        }
    }
    Ok(out)
}
