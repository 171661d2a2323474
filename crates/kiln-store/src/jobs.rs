//! The build queue: an image to build is a job, and workers claim jobs under leases.
//!
//! A claim gives the worker a fresh lease token that expires unless it is renewed (a
//! heartbeat), measured by the store's own clock so that workers on hosts whose clocks disagree
//! still agree on who holds a job. Every write a worker makes goes through its lease
//! ([`JobQueue::update_leased`], [`JobQueue::finish_job`]) and is refused once the lease is
//! gone, so a worker that was paused or cut off past its lease can neither finish nor publish:
//! the job has been given to another worker by then ([`JobQueue::requeue_expired`]). A job whose
//! workers keep vanishing ends after [`Job::max_attempts`] attempts; a build that failed on its
//! own merits ends at once.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::{Row, StoreError, Update};

/// What a job needs of the worker that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Needs {
    /// The builder kind the build runs on (`sandbox`, `vm`).
    pub builder: String,
    /// Hardware virtualisation (a VM builder that must not run under emulation).
    #[serde(default)]
    pub kvm: bool,
    /// The machine architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Labels every one of which the worker must have.
    #[serde(default)]
    pub labels: BTreeSet<String>,
}

/// What a worker can run.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The builder kinds it has.
    pub builders: BTreeSet<String>,
    /// Whether it has working hardware virtualisation.
    #[serde(default)]
    pub kvm: bool,
    /// Its machine architecture.
    pub arch: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeSet<String>,
}

impl Needs {
    /// Whether a worker with `caps` can run the job.
    pub fn met_by(&self, caps: &Capabilities) -> bool {
        caps.builders.contains(&self.builder)
            && (!self.kvm || caps.kvm)
            && caps.arch == self.arch
            && self.labels.is_subset(&caps.labels)
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Held by a worker under a lease.
    Running,
    /// The build ran to its end (whatever the image's state: a failed build is a finished job).
    Finished,
    /// Given up: every attempt's worker vanished.
    Abandoned,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Finished,
        JobState::Abandoned,
    ];

    /// The text stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Abandoned => "abandoned",
        }
    }

    /// The state a stored text names.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt at a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptEnd {
    /// Still running.
    Running,
    /// The worker finished the build.
    Finished,
    /// The worker stopped renewing its lease; the job went back to the queue (or was given up).
    Lost,
}

impl AttemptEnd {
    /// The text stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Running => "running",
            AttemptEnd::Finished => "finished",
            AttemptEnd::Lost => "lost",
        }
    }

    /// The end a stored text names.
    pub fn parse(s: &str) -> Option<AttemptEnd> {
        [AttemptEnd::Running, AttemptEnd::Finished, AttemptEnd::Lost]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AttemptEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker's attempt at a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The worker's name.
    pub worker: String,
    /// When it claimed the job (store clock, milliseconds since the Unix epoch).
    pub claimed_ms: i64,
    /// When the attempt ended.
    pub ended_ms: Option<i64>,
    /// How it ended.
    pub end: AttemptEnd,
}

/// A job to put in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Unique: the ARN of the image to build.
    pub id: String,
    /// The account that owns the build.
    pub owner: String,
    /// What its worker must be able to do.
    pub needs: Needs,
    /// What the worker needs to run it (JSON the store does not read).
    pub payload: String,
    /// Attempts before the job is given up when its workers vanish.
    pub max_attempts: u32,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// The ARN of the image it builds.
    pub id: String,
    /// The account that owns the build.
    pub owner: String,
    /// What its worker must be able to do.
    pub needs: Needs,
    /// What the worker needs to run it.
    pub payload: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts before it is given up.
    pub max_attempts: u32,
    /// Its attempts, the first first.
    pub attempts: Vec<Attempt>,
    /// When it was queued (store clock).
    pub created_ms: i64,
}

/// A worker's hold on a job: what every write of the worker names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The job.
    pub job: String,
    /// The attempt it is.
    pub attempt: u32,
    /// The worker holding it.
    pub worker: String,
    /// Fresh for every claim; a write naming another token is refused.
    pub token: String,
    /// When it lapses unless renewed (store clock).
    pub expires_ms: i64,
}

/// A job [`JobQueue::requeue_expired`] took from a vanished worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The job as it is now: queued again, or abandoned after its last attempt.
    pub job: Job,
    /// The worker that lost it.
    pub worker: String,
}

/// A build worker known to the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Worker {
    /// Its unique name.
    pub name: String,
    /// The sha256 (hex) of its token; the token itself is never stored.
    pub token_sha256: String,
    /// When its token was made.
    pub created_ms: i64,
    /// When its token was revoked.
    pub revoked_ms: Option<i64>,
    /// When it was last heard from (store clock).
    pub last_seen_ms: Option<i64>,
    /// What it said it can run, last time it asked for work.
    pub capabilities: Option<Capabilities>,
    /// The job it holds now.
    pub current_job: Option<String>,
}

/// The build queue and its workers. Every method is atomic on its own and safe across
/// processes and hosts sharing one store.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + fmt::Debug {
    /// The store's clock, in milliseconds since the Unix epoch: leases are measured by it.
    async fn clock_ms(&self) -> Result<i64, StoreError>;

    /// Puts a job in the queue; false when a job with its id is there already (nothing changes).
    async fn enqueue_job(&self, job: NewJob) -> Result<bool, StoreError>;

    /// Gives the oldest queued job that `caps` can run to `worker`, under a new lease of
    /// `lease` from now, and records the attempt. Two callers never get one job.
    async fn claim_job(
        &self,
        worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, StoreError>;

    /// Extends a lease to `lease` from now; `Err(LeaseLost)` when the lease has lapsed or the
    /// job is no longer the worker's.
    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError>;

    /// Changes row `arn` only while `lease` holds, in one transaction with the check.
    async fn update_leased(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError>;

    /// Ends the job (and its attempt) as finished while `lease` holds, with the final change of
    /// row `arn` in the same transaction; `Err(LeaseLost)` changes nothing.
    async fn finish_job(&self, lease: &Lease, arn: &str, update: Update)
        -> Result<Row, StoreError>;

    /// Takes a job out of the queue before any worker claimed it (its build was cancelled): it
    /// ends finished. False when it is not queued (a worker holds it, or it ended).
    async fn withdraw_job(&self, id: &str) -> Result<bool, StoreError>;

    /// Ends a running job's lease now (its worker is known to be gone), so that the next
    /// [`JobQueue::requeue_expired`] takes it. False when it is not running.
    async fn lapse_job(&self, id: &str) -> Result<bool, StoreError>;

    /// Takes every running job whose lease lapsed from its worker: queued again while it has
    /// attempts left, else abandoned.
    async fn requeue_expired(&self) -> Result<Vec<Reclaimed>, StoreError>;

    /// One job.
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Jobs in any of `states` (every job when empty), oldest first, at most `limit`.
    async fn jobs(&self, states: &[JobState], limit: u32) -> Result<Vec<Job>, StoreError>;

    /// Records a worker and the sha256 of its token; `Err(WorkerExists)` when a worker of that
    /// name has a token that is not revoked (a revoked one is replaced).
    async fn add_worker(&self, name: &str, token_sha256: &str) -> Result<Worker, StoreError>;

    /// Revokes a worker's token: it is refused from now on. False when there is no such worker.
    async fn revoke_worker(&self, name: &str) -> Result<bool, StoreError>;

    /// The worker whose token has this sha256 and is not revoked.
    async fn worker_by_token(&self, token_sha256: &str) -> Result<Option<Worker>, StoreError>;

    /// Notes that a worker was heard from, with what it can run.
    async fn worker_seen(&self, name: &str, caps: &Capabilities) -> Result<(), StoreError>;

    /// Every worker, by name.
    async fn workers(&self) -> Result<Vec<Worker>, StoreError>;

    /// Waits until a job may have been queued or `timeout` passed. A backend that can be told
    /// (PostgreSQL's LISTEN/NOTIFY) wakes at once; the default polls by just waiting.
    async fn wait_for_jobs(&self, timeout: Duration) -> Result<(), StoreError> {
        tokio::time::sleep(timeout.min(Duration::from_secs(1))).await;
        Ok(())
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
