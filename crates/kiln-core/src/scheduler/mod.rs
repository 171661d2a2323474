//! The scheduler: pipelines run on their schedules, under their start conditions, and stop
//! after failing too often.
//!
//! Each [`Scheduler::tick`] looks at every ENABLED pipeline of every account with a schedule.
//! The run due is the latest instant of the schedule after the last one considered (or after
//! the pipeline was created or last updated) and not after now, so a server that was down
//! runs a missed instant at most once, and only when it was missed by no more than the
//! catch-up window ([`DEFAULT_CATCH_UP`]); older ones are recorded as missed. Every instant is
//! claimed in the store before anything starts ([`kiln_store::StateStore::claim_run`]), so a
//! clock stepped back, a restart or a second scheduler never starts it twice. Time comes from
//! a [`Clock`], which tests control.

mod deps;
pub mod spec;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use kiln_schedule::Clock;
use kiln_store::{Filter, Kind, Order, Run};
use serde::Serialize;

pub use spec::{PipelineSchedule, RebuildWhen, StartCondition};
pub use status::{status, RunStatus};

use crate::pipeline::{self, Plan};
use crate::principal::Principal;
use crate::record::{BuildType, ImageRecord, Records, State};
use crate::resources::{PipelineStatus, Resource, ResourceError, Resources};
use crate::store::StoreError;
use crate::updates::Trigger;

/// How long after its instant a missed run still runs when kiln comes back.
pub const DEFAULT_CATCH_UP: Duration = Duration::hours(24);

/// The claim key of the daily run of every lifecycle policy (one claim per UTC day).
pub const LIFECYCLE_RUNS: &str = "kiln:lifecycle";

/// Pipelines a tick considers at once (`bench/due.sh`: a thousand runs due at one minute).
const TICK_PARALLELISM: usize = 8;

/// Starts a pipeline's build (the server's queue; a builder in tests) and answers the image's
/// ARN once it is numbered.
#[async_trait]
pub trait Starter: Send + Sync {
    /// Starts `plan`'s build.
    async fn start(&self, plan: Plan) -> Result<String, String>;
}

/// kiln's further reasons to rebuild, checked over the last image (parent digest, OS
/// packages): [`LocalChecks`] does them for real; tests script them.
#[async_trait]
pub trait UpdateChecks: Send + Sync {
    /// Whether the parent moved since `last` was built.
    async fn parent_moved(&self, last: &ImageRecord) -> Result<Option<Trigger>, String>;
    /// The package updates `last` has, if any.
    async fn package_updates(&self, last: &ImageRecord) -> Result<Option<Trigger>, String>;
}

/// The checks of [`crate::updates`] on this machine: registries as the builds reach them, a
/// throwaway sandbox from the builds' launcher.
pub struct LocalChecks {
    /// The data directory.
    pub home: crate::store::Home,
    /// Registries and their credentials.
    pub options: crate::build::BuildOptions,
    /// Starts the sandbox the packages are checked in.
    pub launcher: Arc<dyn kiln_instance::Launcher>,
}

#[async_trait]
impl UpdateChecks for LocalChecks {
    async fn parent_moved(&self, last: &ImageRecord) -> Result<Option<Trigger>, String> {
        crate::updates::parent_moved(&self.options, last)
            .await
            .map(|m| m.map(Trigger::from))
            .map_err(|e| e.to_string())
    }

    async fn package_updates(&self, last: &ImageRecord) -> Result<Option<Trigger>, String> {
        let updates = crate::updates::package_updates(&self.home, &*self.launcher, last)
            .await
            .map_err(|e| e.to_string())?;
        Ok((!updates.is_empty()).then_some(Trigger::Packages { updates }))
    }
}

/// What the scheduler did about one pipeline in a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum Decision {
    /// A build started.
    Started {
        /// The image's ARN.
        image: String,
        /// Why it builds.
        reason: String,
    },
    /// The run was due and did not build.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The pipeline failed its scheduled runs too often and was disabled.
    Disabled {
        /// Failed scheduled runs in a row.
        failures: u32,
    },
    /// The day's run of every ENABLED lifecycle policy.
    Lifecycle {
        /// What the policies did, in words.
        summary: String,
    },
    /// The run could not start.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// One decision of a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The pipeline.
    pub pipeline: String,
    /// The scheduled instant, for runs.
    pub at: Option<DateTime<Utc>>,
    /// What happened.
    pub decision: Decision,
}

/// The role the one scheduler among the servers sharing a store holds.
pub const SCHEDULER_ROLE: &str = "scheduler";

/// Runs pipelines on their schedules.
pub struct Scheduler {
    resources: Resources,
    records: Records,
    clock: Arc<dyn Clock>,
    starter: Arc<dyn Starter>,
    checks: Option<Arc<dyn UpdateChecks>>,
    catch_up: Duration,
    lifecycle: Option<kiln_dist::RegistryAccess>,
}

/// The account of an ARN (its fifth field).
fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or("")
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Scheduler {
    /// A scheduler over a store's resources and records.
    pub fn new(
        resources: Resources,
        records: Records,
        clock: Arc<dyn Clock>,
        starter: Arc<dyn Starter>,
    ) -> Scheduler {
        Scheduler {
            resources,
            records,
            clock,
            starter,
            checks: None,
            catch_up: DEFAULT_CATCH_UP,
            lifecycle: None,
        }
    }

    /// Also runs every ENABLED lifecycle policy once a day (UTC), deleting through
    /// `registries` what was pushed to registries.
    pub fn with_lifecycle(mut self, registries: kiln_dist::RegistryAccess) -> Scheduler {
        self.lifecycle = Some(registries);
        self
    }

    /// With kiln's further rebuild checks (without them, pipelines that ask for them skip
    /// their runs, saying why).
    pub fn with_checks(mut self, checks: Arc<dyn UpdateChecks>) -> Scheduler {
        self.checks = Some(checks);
        self
    }

    /// With another catch-up window.
    pub fn with_catch_up(mut self, catch_up: Duration) -> Scheduler {
        self.catch_up = catch_up;
        self
    }

    /// The clock it reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Considers every scheduled pipeline once; returns what it decided (nothing for a
    /// pipeline with no run due).
    pub async fn tick(&self) -> Result<Vec<Outcome>, StoreError> {
        let now = self.clock.now();
        let rows = self
            .resources
            .store()
            .db()
            .list(&Filter {
                kind: Some(Kind::ImagePipeline),
                states: vec![PipelineStatus::Enabled.as_str().into()],
                order: Order::Oldest,
                ..Filter::default()
            })
            .await?;
        // Pipelines are considered a few at a time: a run due for a thousand pipelines at once
        // is a thousand claims, plans and enqueues, each mostly waiting on the store.
        use futures_util::stream::StreamExt;
        let decided: Vec<Result<Option<Outcome>, StoreError>> = futures_util::stream::iter(rows)
            .map(|row| self.consider_row(row, now))
            .buffered(TICK_PARALLELISM)
            .collect()
            .await;
        let mut out = Vec::new();
        for d in decided {
            if let Some(o) = d? {
                out.push(o);
            }
        }
        if let Some(o) = self.lifecycle_due(now).await? {
            out.push(o);
        }
        Ok(out)
    }

    /// One pipeline of a tick: its outcome when a run was due, or why it failed.
    async fn consider_row(
        &self,
        row: kiln_store::Row,
        now: DateTime<Utc>,
    ) -> Result<Option<Outcome>, StoreError> {
        let Some(found) = self.resources.store().db().get(&row.arn).await? else {
            return Ok(None);
        };
        let pipeline: Resource = match self
            .resources
            .store()
            .decode(&found.body, &format!("the pipeline {}", found.arn))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pipeline = %row.arn, error = %e, "cannot read the pipeline");
                return Ok(None);
            }
        };
        match self.consider(&pipeline, now).await {
            Ok(Some(o)) => {
                tracing::info!(pipeline = %o.pipeline, decision = ?o.decision, "scheduled run");
                Ok(Some(o))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(pipeline = %pipeline.arn, error = %e, "scheduling failed");
                Ok(Some(Outcome {
                    pipeline: pipeline.arn.clone(),
                    at: None,
                    decision: Decision::Failed {
                        error: e.to_string(),
                    },
                }))
            }
        }
    }

    /// Claims the run `key` (a pipeline's ARN, or [`LIFECYCLE_RUNS`]) at `at`: false when
    /// anyone claimed it before.
    async fn claim(
        &self,
        key: &str,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let run = Run {
            pipeline: key.to_owned(),
            at_ms: ms(at),
            claimed_ms: ms(now),
            image: None,
            note: "claimed".into(),
        };
        Ok(self.resources.store().db().claim_run(&run).await?)
    }

    /// The day's lifecycle run, when this scheduler is the one that claims it.
    async fn lifecycle_due(&self, now: DateTime<Utc>) -> Result<Option<Outcome>, StoreError> {
        let Some(registries) = &self.lifecycle else {
            return Ok(None);
        };
        let day = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |d| d.and_utc());
        let db = self.resources.store().db();
        if !self.claim(LIFECYCLE_RUNS, day, now).await? {
            return Ok(None);
        }
        let summary =
            match crate::lifecycle::apply_all(self.resources.store(), registries, now).await {
                Ok(runs) => {
                    let words: Vec<String> = runs
                        .iter()
                        .map(|(policy, r)| match r {
                            Ok(e) => format!("{policy}: {} ({} images)", e.id, e.resources.len()),
                            Err(e) => format!("{policy}: failed: {e}"),
                        })
                        .collect();
                    if words.is_empty() {
                        "no enabled lifecycle policies".to_string()
                    } else {
                        words.join("; ")
                    }
                }
                Err(e) => format!("failed: {e}"),
            };
        tracing::info!(%summary, "the day's lifecycle policies ran");
        db.finish_run(LIFECYCLE_RUNS, ms(day), None, &summary)
            .await?;
        Ok(Some(Outcome {
            pipeline: LIFECYCLE_RUNS.into(),
            at: Some(day),
            decision: Decision::Lifecycle { summary },
        }))
    }

    async fn consider(
        &self,
        pipeline: &Resource,
        now: DateTime<Utc>,
    ) -> Result<Option<Outcome>, ResourceError> {
        let spec = match spec::of(pipeline) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ResourceError::NotFound(format!(
                    "pipeline {}: {e}",
                    pipeline.name
                )))
            }
        };
        let outcome = |at: Option<DateTime<Utc>>, decision| Outcome {
            pipeline: pipeline.arn.clone(),
            at,
            decision,
        };
        let db = self.resources.store().db();
        let last = db
            .runs(&pipeline.arn, status::runs_to_read(spec.failure_limit))
            .await?;
        let failures = status::consecutive_failures(&self.records, pipeline, &last).await?;
        if failures >= spec.failure_limit {
            self.disable(pipeline, failures, now).await?;
            return Ok(Some(outcome(None, Decision::Disabled { failures })));
        }
        let reset = pipeline.date_updated.unwrap_or(pipeline.date_created);
        let since = last
            .first()
            .map(|r| instant(r.at_ms))
            .map_or(reset, |l| l.max(reset));
        let Some(due) = spec.schedule.latest_due(since, now) else {
            return Ok(None);
        };
        if !self.claim(&pipeline.arn, due, now).await? {
            return Ok(None);
        }
        let decision = if now - due > self.catch_up {
            Decision::Skipped {
                reason: format!(
                    "missed: kiln was not running at {due} and catches up only runs missed by \
                     less than {} hours",
                    self.catch_up.num_hours()
                ),
            }
        } else {
            self.run_due(pipeline, &spec).await
        };
        let (image, note) = match &decision {
            Decision::Started { image, reason } => (Some(image.as_str()), reason.clone()),
            Decision::Skipped { reason } => (None, format!("skipped: {reason}")),
            Decision::Failed { error } => (None, format!("failed: {error}")),
            Decision::Disabled { failures } => (None, format!("disabled after {failures}")),
            Decision::Lifecycle { summary } => (None, summary.clone()),
        };
        db.finish_run(&pipeline.arn, ms(due), image, &note).await?;
        Ok(Some(outcome(Some(due), decision)))
    }

    /// A due run: builds when its start condition holds.
    async fn run_due(&self, pipeline: &Resource, spec: &PipelineSchedule) -> Decision {
        let principal = Principal::new(account_of(&pipeline.arn), "scheduler");
        if let Some(running) = self.running_build(&pipeline.arn).await {
            return Decision::Skipped {
                reason: format!("its build {running} is still running"),
            };
        }
        let mut plan = match pipeline::plan_for(&self.resources, &principal, pipeline.clone()).await
        {
            Ok(p) => p,
            Err(e) => {
                return Decision::Failed {
                    error: e.to_string(),
                }
            }
        };
        let trigger = match spec.condition {
            StartCondition::ExpressionMatchOnly => Trigger::Schedule,
            StartCondition::DependencyUpdatesAvailable => {
                match self.updates(&principal, &plan, spec).await {
                    Ok(Some(trigger)) => trigger,
                    Ok(None) => {
                        return Decision::Skipped {
                            reason: "no dependency updates since its last image".into(),
                        }
                    }
                    Err(error) => return Decision::Failed { error },
                }
            }
        };
        let reason = match &trigger {
            Trigger::Schedule if spec.condition == StartCondition::ExpressionMatchOnly => {
                "the schedule matched".to_string()
            }
            Trigger::Schedule => "it has no image yet".to_string(),
            other => other.to_string(),
        };
        plan.origin.build_type = BuildType::Scheduled;
        plan.origin.triggers = vec![trigger];
        match self.starter.start(plan).await {
            Ok(image) => Decision::Started { image, reason },
            Err(error) => Decision::Failed { error },
        }
    }

    /// Why the pipeline's next build would differ from its last image, if it would.
    async fn updates(
        &self,
        principal: &Principal,
        plan: &Plan,
        spec: &PipelineSchedule,
    ) -> Result<Option<Trigger>, String> {
        let Some(last) = self
            .newest(&plan.pipeline.arn, &[State::Available])
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Some(Trigger::Schedule));
        };
        let changes = deps::changes(&self.resources, &self.records, principal, plan, &last)
            .await
            .map_err(|e| e.to_string())?;
        if !changes.is_empty() {
            return Ok(Some(Trigger::Dependencies { changes }));
        }
        if !spec.rebuild_when.any() {
            return Ok(None);
        }
        let Some(checks) = &self.checks else {
            return Err("this kiln checks no parent digests or packages".into());
        };
        if spec.rebuild_when.parent_digest {
            if let Some(why) = checks.parent_moved(&last).await? {
                return Ok(Some(why));
            }
        }
        if spec.rebuild_when.os_packages {
            if let Some(why) = checks.package_updates(&last).await? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// The newest image of a pipeline in one of `states` (any when empty).
    async fn newest(
        &self,
        pipeline: &str,
        states: &[State],
    ) -> Result<Option<ImageRecord>, StoreError> {
        let rows = self
            .records
            .summaries(&Filter {
                pipeline: Some(pipeline.to_owned()),
                states: states.iter().map(|s| s.as_str().to_string()).collect(),
                order: Order::Newest,
                limit: Some(1),
                ..Filter::default()
            })
            .await?;
        match rows.first() {
            Some(s) => self.records.get(&s.arn).await,
            None => Ok(None),
        }
    }

    /// A build of the pipeline that has not ended.
    async fn running_build(&self, pipeline: &str) -> Option<String> {
        match self.newest(pipeline, &State::RUNNING).await {
            Ok(found) => found.map(|r| r.arn),
            Err(e) => Some(format!("(unknown: {e})")),
        }
    }

    /// What a pipeline's runs came to, as of the scheduler's clock.
    pub async fn status(&self, pipeline: &Resource) -> Result<RunStatus, StoreError> {
        status(&self.records, pipeline, self.clock.now()).await
    }

    /// Disables a pipeline that failed too often, recording why in its description of
    /// itself: its status, and its `dateUpdated` (which restarts the count once re-enabled).
    async fn disable(
        &self,
        pipeline: &Resource,
        failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), ResourceError> {
        let mut p = pipeline.clone();
        p.status = Some(PipelineStatus::Disabled);
        p.date_updated = Some(now);
        if let Some(o) = p.request.as_object_mut() {
            o.insert("status".into(), PipelineStatus::Disabled.as_str().into());
        }
        let body = crate::state::to_json(&p)?;
        let summary = crate::state::to_json(&p.summary())?;
        let outbox = self.disabled_notice(pipeline, failures, now).await;
        tracing::warn!(pipeline = %pipeline.arn, failures, "pipeline disabled: its scheduled runs failed");
        self.resources
            .store()
            .db()
            .update(
                &pipeline.arn,
                kiln_store::Update {
                    state: Some(PipelineStatus::Disabled.as_str().into()),
                    summary: Some(summary),
                    body: Some(body),
                    outbox,
                    ..kiln_store::Update::default()
                },
            )
            .await?;
        Ok(())
    }

    /// The message to the pipeline's topic (its infrastructure configuration's) that it was
    /// disabled.
    async fn disabled_notice(
        &self,
        pipeline: &Resource,
        failures: u32,
        now: DateTime<Utc>,
    ) -> Vec<kiln_store::Message> {
        let Some(infra) = pipeline.field("infrastructureConfigurationArn") else {
            return Vec::new();
        };
        let principal = Principal::new(account_of(&pipeline.arn), "scheduler");
        let topics =
            crate::notify::topics_named(self.resources.store(), &principal, &[infra.to_owned()])
                .await;
        let body = serde_json::json!({
            "imagePipelineArn": pipeline.arn,
            "name": pipeline.name,
            "status": PipelineStatus::Disabled.as_str(),
            "consecutiveFailures": failures,
            "reason": format!("{failures} scheduled runs in a row failed"),
            "date": now.to_rfc3339(),
        });
        topics
            .iter()
            .map(|t| {
                crate::notify::message(
                    t,
                    crate::notify::Event::PipelineDisabled,
                    &format!("{}@{}", pipeline.arn, ms(now)),
                    &body,
                    ms(now),
                )
            })
            .collect()
    }

    /// Runs [`Scheduler::tick`] every `every` until `stop` says so, while this scheduler holds
    /// the store's [`SCHEDULER_ROLE`].
    pub async fn run(
        self: Arc<Self>,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // One scheduler among the servers sharing a store; another takes over within three
        // rounds (at least 15 s) of its holder stopping. A run is claimed once per pipeline and
        // instant whoever schedules, so a takeover never starts a run twice.
        let holder = crate::state::holder_name();
        let hold = (every * 3).max(std::time::Duration::from_secs(15));
        let leader = self.resources.store().leader();
        let mut told = false;
        loop {
            match leader.lead(SCHEDULER_ROLE, &holder, hold).await {
                Ok(true) => {
                    told = false;
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "the scheduler could not read the store");
                    }
                }
                Ok(false) if !told => {
                    tracing::info!(
                        "another kiln server schedules the pipelines; waiting to take over"
                    );
                    told = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask the store who schedules"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        if let Err(e) = leader.step_down(SCHEDULER_ROLE, &holder).await {
            tracing::debug!(error = %e, "could not give the scheduler role up");
        }
    }
}
