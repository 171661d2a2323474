//! Workers: loops that claim queued builds this host can run and run them one at a time each
//! ([`WorkerPool`]), and the reaper that gives lapsed leases' jobs back to the queue
//! ([`reap_until`]). `kiln serve` runs a pool of its own; `kiln worker run` is a pool alone.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_store::{Capabilities, Job, Lease};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::queued::{self, JobRunner};
use super::{BuildEvent, BuildObserver};

/// How often the reaper looks for jobs whose workers vanished.
pub const REAP_EVERY: Duration = Duration::from_secs(5);

/// How long an idle worker waits for a job before it asks again (and says it is alive).
const IDLE_WAIT: Duration = Duration::from_secs(10);

/// A host's workers: each claims a job it can run, runs it under its lease, and claims the
/// next, until the pool stops.
pub struct WorkerPool {
    runner: JobRunner,
    caps: Capabilities,
    closing: AtomicBool,
    wake: Notify,
    /// The builds the pool's workers run now, for cancelling them when it stops.
    running: Arc<Mutex<HashSet<String>>>,
}

impl WorkerPool {
    /// A pool that runs jobs with `runner`, claiming those that `caps` can run.
    pub fn new(runner: JobRunner, caps: Capabilities) -> Arc<WorkerPool> {
        Arc::new(WorkerPool {
            runner,
            caps,
            closing: AtomicBool::new(false),
            wake: Notify::new(),
            running: Arc::default(),
        })
    }

    /// Starts `count` workers named `NAME-1`, `NAME-2`, ...; their tasks end once the pool
    /// stops and their builds have recorded how they ended.
    pub fn spawn(self: &Arc<Self>, name: &str, count: usize) -> Vec<JoinHandle<()>> {
        (1..=count)
            .map(|i| {
                let pool = self.clone();
                let name = if count == 1 {
                    name.to_owned()
                } else {
                    format!("{name}-{i}")
                };
                tokio::spawn(async move { pool.work(name).await })
            })
            .collect()
    }

    /// Wakes an idle worker at once (a build was just queued by this process; other
    /// processes' builds wake it through the store).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the pool was told to stop.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Stops claiming and asks every build the pool runs to stop (a distributing one finishes
    /// first); the workers' tasks end once those builds recorded how they ended.
    pub async fn stop(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        let arns: Vec<String> = self
            .running
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        for arn in &arns {
            tracing::info!(image = %arn, "cancelling the build: the worker is stopping");
            if let Err(e) = self.runner.store.db().request_cancel(arn).await {
                tracing::warn!(image = %arn, error = %e, "could not ask the build to stop");
            }
        }
    }

    async fn work(self: Arc<Self>, name: String) {
        let jobs = self.runner.store.jobs();
        while !self.is_closing() {
            match jobs.claim_job(&name, &self.caps, queued::LEASE).await {
                Ok(Some((job, lease))) => self.run(job, lease).await,
                Ok(None) => {
                    if let Err(e) = jobs.worker_seen(&name, &self.caps).await {
                        tracing::warn!(worker = %name, error = %e, "cannot record the heartbeat");
                    }
                    tokio::select! {
                        _ = jobs.wait_for_jobs(IDLE_WAIT) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "cannot claim a job; trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run(&self, job: Job, lease: Lease) {
        tracing::info!(image = %job.id, attempt = lease.attempt, worker = %lease.worker,
            "build claimed");
        let arn = job.id.clone();
        if let Ok(mut r) = self.running.lock() {
            r.insert(arn.clone());
        }
        let runner = self.runner.clone();
        let observer: Arc<dyn BuildObserver> = Arc::new(Stages);
        // The build's future is not `Send` (it holds borrows across awaits that the compiler
        // cannot prove safe to move), so it is driven on a blocking thread of the runtime,
        // which may block on it, rather than spawned as a task.
        let handle = tokio::runtime::Handle::current();
        let done =
            tokio::task::spawn_blocking(move || handle.block_on(runner.run(&job, lease, observer)))
                .await;
        match done {
            Ok(Ok(rec)) => tracing::info!(image = %rec.arn, state = %rec.state, "build ended"),
            Ok(Err(e)) => tracing::warn!(image = %arn, error = %e, "build stopped"),
            Err(e) => tracing::error!(image = %arn, error = %e, "the build's thread failed"),
        }
        if let Ok(mut r) = self.running.lock() {
            r.remove(&arn);
        }
    }
}

/// Says each build's stages in the process's log (the build's own log has everything).
struct Stages;

impl BuildObserver for Stages {
    fn event(&self, e: &BuildEvent) {
        match e {
            BuildEvent::Started { record } => tracing::info!(image = %record.arn, "build started"),
            BuildEvent::Stage { state } => tracing::info!(%state, "build stage"),
            _ => {}
        }
    }
}

/// Runs [`queued::reap`] every [`REAP_EVERY`] until `stop` says so. Any number of processes
/// may reap one store at once: each lapsed job is taken back by exactly one.
pub async fn reap_until(
    store: crate::state::Store,
    registries: kiln_dist::RegistryAccess,
    notices: Option<Arc<dyn crate::notify::Notices>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        match queued::reap(&store, &registries, notices.as_deref()).await {
            Ok(failed) => {
                for b in failed {
                    tracing::warn!(image = %b, "every worker of the build vanished: it is now FAILED");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for lapsed leases"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REAP_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}
