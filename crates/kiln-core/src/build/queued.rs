//! Builds through the job queue: the server checks the input, numbers the image PENDING and
//! queues a job ([`Builder::enqueue`]); a worker claims it under a lease and runs it
//! ([`JobRunner::run`]), renewing the lease while it runs and writing the record only
//! through it. A worker that vanishes loses the job to the next claim once its lease lapses;
//! [`reap`] gives the job back to the queue, or ends the image FAILED naming every worker
//! that held it when none is left to try.

use std::sync::Arc;
use std::time::Duration;

use kiln_dist::logs::LogDestination;
use kiln_instance::BuilderKind;
use kiln_store::{Capabilities, Job, JobState, Lease, Needs, NewJob};
use serde::{Deserialize, Serialize};

use super::shipped_log::{self, LogOutbox};
use super::{BuildError, BuildEvent, BuildObserver, Builder, Executed, Execution, Origin};
use crate::recipe::Recipe;
use crate::record::{FailureInfo, ImageRecord, Records, State};

/// How long a claim holds a job unless renewed.
pub const LEASE: Duration = Duration::from_secs(60);

/// How often a running build renews its lease: six chances before it lapses.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Attempts before a job whose workers keep vanishing is given up.
pub const MAX_ATTEMPTS: u32 = 3;

/// How long a worker keeps trying to send a build's last log lines while the store cannot be
/// reached, before it takes its next job.
const LAST_LINES_PATIENCE: Duration = Duration::from_secs(20);

/// What a worker needs to run a queued build, stored with its job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPayload {
    /// The recipe as it was started.
    pub recipe: Recipe,
    /// The builder the server chose for it (its trust policy's decision, which the worker
    /// follows).
    pub choice: crate::trust::BuilderChoice,
    /// Who started it, for the record and for reading components named by ARN.
    pub origin: Origin,
    /// Where its logs are shipped when it ends.
    #[serde(default)]
    pub logging: Vec<LogDestination>,
}

/// What this host's launcher can run, as a worker tells the queue.
pub fn local_capabilities(launcher: &dyn kiln_instance::Launcher) -> Capabilities {
    let mut builders = std::collections::BTreeSet::new();
    builders.insert(BuilderKind::Sandbox.to_string());
    if launcher.preflight(BuilderKind::Vm).is_ok() {
        builders.insert(BuilderKind::Vm.to_string());
    }
    Capabilities {
        builders,
        kvm: kiln_instance::vm::kvm_device_usable(),
        arch: std::env::consts::ARCH.to_owned(),
        labels: Default::default(),
    }
}

impl Builder {
    /// Checks a build and queues it: the image is numbered and PENDING when this returns, and
    /// a worker runs it once one that can is free. Bad input is an error and queues nothing.
    pub async fn enqueue(&self, recipe: &Recipe) -> Result<ImageRecord, BuildError> {
        let prepared = self.prepare(recipe).await?;
        let payload = JobPayload {
            recipe: recipe.clone(),
            choice: prepared.choice.clone(),
            origin: self.origin.clone(),
            logging: self.logging.clone(),
        };
        let payload = serde_json::to_string(&payload)
            .map_err(|e| BuildError::Environment(format!("encoding the build's job: {e}")))?;
        let records = Records::new(self.store().await?);
        let mut rec = self.new_record(&prepared.recipe, &prepared.components, None);
        rec.builder = Some(prepared.choice.clone());
        records.create(&mut rec).await?;
        let job = NewJob {
            id: rec.arn.clone(),
            owner: rec.account.clone(),
            needs: Needs {
                builder: prepared.choice.kind.to_string(),
                kvm: false,
                arch: std::env::consts::ARCH.to_owned(),
                labels: Default::default(),
            },
            payload,
            max_attempts: MAX_ATTEMPTS,
        };
        if let Err(e) = records.store().jobs().enqueue_job(job).await {
            // Numbered but never queued: say so on the record rather than leave it PENDING.
            let reason = format!("the build could not be queued: {e}");
            rec.set_state(State::Failed, Some(reason.clone()));
            rec.failure = Some(FailureInfo::of_stage(State::Pending, reason));
            records.save(&rec).await?;
            return Err(BuildError::Store(crate::store::StoreError::State(e)));
        }
        Ok(rec)
    }
}

/// What a worker runs claimed jobs with: its data directory, its build settings and its
/// launcher, over the store the jobs are in.
#[derive(Clone)]
pub struct JobRunner {
    /// The worker's data directory (layers, run folders, logs).
    pub home: crate::store::Home,
    /// How its builds run (registries, regions, trust, cache bound).
    pub options: super::BuildOptions,
    /// Starts its builder and test instances.
    pub launcher: Arc<dyn kiln_instance::Launcher>,
    /// The store the jobs and records are in.
    pub store: crate::state::Store,
    /// Writes what a final record tells subscribers into the outbox.
    pub notices: Option<Arc<dyn crate::notify::Notices>>,
}

impl JobRunner {
    /// Runs a job this worker claimed under `lease`. The lease is renewed every
    /// [`HEARTBEAT`] while the build runs; once a renewal is refused the build stops and
    /// records nothing more, and this returns [`BuildError::LeaseLost`].
    pub async fn run(
        &self,
        job: &Job,
        lease: Lease,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<ImageRecord, BuildError> {
        let records = Records::leased(self.store.clone(), lease.clone());
        let Some(mut rec) = records.get(&job.id).await? else {
            return Err(BuildError::Environment(format!(
                "the job {} names an image that is not stored",
                job.id
            )));
        };
        let payload: JobPayload = match serde_json::from_str(&job.payload) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("the build's job cannot be read by this kiln: {e}");
                return self.fail_job(&records, &lease, rec, reason).await;
            }
        };
        let outbox = Arc::new(LogOutbox::default());
        let mut builder = Builder::new(
            self.home.clone(),
            self.options.clone(),
            payload.origin,
            self.launcher.clone(),
        )
        .with_store(self.store.clone())
        .with_logging(payload.logging)
        .with_log_outbox(outbox.clone());
        if let Some(n) = &self.notices {
            builder = builder.with_notices(n.clone());
        }
        // The server checked the input; the worker's host is checked here (its tools, its
        // launcher, the components as they load now).
        let prepared = match builder
            .prepare_with(&payload.recipe, Some(payload.choice))
            .await
        {
            Ok(p) => p,
            Err(e) => return self.fail_job(&records, &lease, rec, e.to_string()).await,
        };
        kiln_instance::runlock::sweep(&self.home.run());
        let (run_dir, lock) = builder.hold_run_dir(&prepared.recipe)?;
        if lease.attempt > 1 {
            let told = self.after_lost_attempt(&records, &mut rec, job).await;
            outbox.push(told.clone());
            observer.event(&BuildEvent::Progress { message: told });
        }
        rec.run_dir = Some(run_dir.clone());
        rec.host = Some(crate::record::this_host().to_owned());
        rec.attempt = Some(lease.attempt);
        rec.logs = records.logs_dir(&rec.account, &rec.name, &rec.version, rec.build);
        records.save(&rec).await?;
        let beat = heartbeat(self.store.clone(), lease.clone());
        let lost = async {
            tokio::select! {
                _ = beat => {}
                _ = records.lease_refused() => {}
            }
        };
        let run = Execution {
            prepared: &prepared,
            records: &records,
            rec,
            run_dir,
            lock,
            observer,
        };
        let shipping = tokio::spawn(outbox.clone().run(self.store.clone(), lease.clone()));
        let executed = builder.execute(run, lost).await;
        shipping.abort();
        // The last lines (the final state) and the component and test logs, once: a lost
        // attempt's are refused by the store.
        outbox
            .finish(self.store.logs(), &lease, LAST_LINES_PATIENCE)
            .await;
        match executed? {
            Executed::Ended(rec) => {
                shipped_log::ship_files(self.store.logs(), &lease, &rec.logs).await;
                Ok(*rec)
            }
            Executed::LeaseLost => Err(BuildError::LeaseLost),
        }
    }

    /// Ends a claimed job FAILED before its stages ran (its input no longer loads here).
    async fn fail_job(
        &self,
        records: &Records,
        lease: &Lease,
        mut rec: ImageRecord,
        reason: String,
    ) -> Result<ImageRecord, BuildError> {
        rec.set_state(State::Failed, Some(reason.clone()));
        rec.failure = Some(FailureInfo::of_stage(State::Pending, reason));
        let outbox = crate::notify::final_outbox(self.notices.as_deref(), &rec).await;
        records.save_with(&rec, outbox).await?;
        // The log's one line, which readers wait for.
        let last = BuildEvent::Finished {
            record: Box::new(rec.clone()),
        };
        if let Some(line) = super::log::render(&last) {
            let lines = LogOutbox::default();
            lines.push(line);
            lines
                .finish(self.store.logs(), lease, LAST_LINES_PATIENCE)
                .await;
        }
        Ok(rec)
    }

    /// Says on the record that an earlier attempt's worker vanished, and takes back what it
    /// had written to the regions when it was distributing; what it says, for the log.
    async fn after_lost_attempt(
        &self,
        records: &Records,
        rec: &mut ImageRecord,
        job: &Job,
    ) -> String {
        let before: Vec<&str> = job
            .attempts
            .iter()
            .filter(|a| a.end == kiln_store::AttemptEnd::Lost)
            .map(|a| a.worker.as_str())
            .collect();
        let mut reason = format!(
            "attempt {} of {}: the worker of the earlier attempt ({}) stopped renewing its lease",
            job.attempts.len(),
            job.max_attempts,
            before.join(", ")
        );
        if rec.state == State::Distributing && !rec.distributing.is_empty() {
            let access = self.options.access();
            reason.push_str(&records.take_back_distributed(rec, &access).await);
            rec.distributing.clear();
        }
        rec.set_state(State::Pending, Some(reason.clone()));
        reason
    }
}

/// Renews `lease` every [`HEARTBEAT`] until a renewal is refused (the lease is gone), then
/// resolves. A renewal that fails for another reason (the database restarting) is tried again
/// at the next beat: the lease still holds until it lapses, and only the store says it did.
async fn heartbeat(store: crate::state::Store, lease: Lease) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match store.jobs().renew_lease(&lease, LEASE).await {
            Ok(_) => {}
            Err(kiln_store::StoreError::LeaseLost { .. }) => return,
            Err(e) => tracing::warn!(job = %lease.job, error = %e, "cannot renew the lease"),
        }
    }
}

/// Gives back to the queue every job whose worker stopped renewing its lease; a job that has
/// had its last attempt ends its image FAILED, naming each worker that held it. Returns the
/// images so ended.
pub async fn reap(
    store: &crate::state::Store,
    registries: &kiln_dist::RegistryAccess,
    notices: Option<&dyn crate::notify::Notices>,
) -> Result<Vec<String>, crate::store::StoreError> {
    let records = Records::new(store.clone());
    lapse_dead_local_workers(store, &records).await?;
    let mut failed = Vec::new();
    for reclaimed in store.jobs().requeue_expired().await? {
        let job = &reclaimed.job;
        tracing::warn!(image = %job.id, worker = %reclaimed.worker, state = %job.state,
            "a worker stopped renewing its lease");
        if job.state != JobState::Abandoned {
            continue;
        }
        let Some(mut rec) = records.get(&job.id).await? else {
            continue;
        };
        if rec.state.is_final() {
            continue;
        }
        let workers: Vec<&str> = job.attempts.iter().map(|a| a.worker.as_str()).collect();
        let stage = rec.state;
        let mut reason = format!(
            "abandoned: the worker of each of its {} attempts stopped renewing its lease ({})",
            job.attempts.len(),
            workers.join(", ")
        );
        if stage == State::Distributing {
            reason.push_str(&records.take_back_distributed(&mut rec, registries).await);
        }
        rec.distributing.clear();
        rec.set_state(State::Failed, Some(reason.clone()));
        rec.failure = Some(FailureInfo::of_stage(stage, reason));
        let outbox = crate::notify::final_outbox(notices, &rec).await;
        records.save_with(&rec, outbox).await?;
        failed.push(rec.build_version());
    }
    Ok(failed)
}

/// Ends at once the leases of builds whose worker ran on this host and is gone for sure (its
/// run folder is no longer held: the process died), so that their jobs are requeued now
/// rather than when the lease would have lapsed. A paused worker still holds its folder and is
/// left to its lease.
async fn lapse_dead_local_workers(
    store: &crate::state::Store,
    records: &Records,
) -> Result<(), crate::store::StoreError> {
    let jobs = store.jobs();
    for job in jobs.jobs(&[JobState::Running], 1000).await? {
        let Some(rec) = records.get(&job.id).await? else {
            continue;
        };
        let current = u32::try_from(job.attempts.len()).unwrap_or(u32::MAX);
        let here = rec.host.as_deref() == Some(crate::record::this_host());
        let dead = rec
            .run_dir
            .as_deref()
            .is_some_and(|d| !kiln_instance::runlock::is_held(d));
        if here && rec.attempt == Some(current) && dead && jobs.lapse_job(&job.id).await? {
            tracing::warn!(image = %job.id, attempt = current,
                "the worker running the build on this host is gone: its job goes back to the queue");
        }
    }
    Ok(())
}

/// Asks a build to stop: a build no worker holds yet leaves the queue and ends CANCELLED at
/// once; a running one is asked through the store and stops at its next step (a distributing
/// one finishes first). True when it ended now.
pub async fn cancel(
    store: &crate::state::Store,
    arn: &str,
    notices: Option<&dyn crate::notify::Notices>,
) -> Result<bool, crate::store::StoreError> {
    store.db().request_cancel(arn).await?;
    if !store.jobs().withdraw_job(arn).await? {
        return Ok(false);
    }
    let records = Records::new(store.clone());
    let Some(mut rec) = records.get(arn).await? else {
        return Ok(true);
    };
    rec.set_state(
        State::Cancelled,
        Some("cancelled on request before a worker took it".into()),
    );
    let outbox = crate::notify::final_outbox(notices, &rec).await;
    records.save_with(&rec, outbox).await?;
    Ok(true)
}
