//! Checks of the build queue ([`JobQueue`]): claims, leases, requeues and workers.
//!
//! A backend implements [`QueueBackend`] and invokes
//! [`job_queue_tests!`](crate::job_queue_tests) once, as it does `conformance_tests!`. Leases
//! are a second or more: a 200 ms one lapsed between two calls on a loaded 2-core machine.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{image, Must};
use crate::{
    AttemptEnd, BuildLogs, Capabilities, JobQueue, JobState, Lease, Needs, NewJob, StateStore,
    StoreError, Update,
};

/// A fresh queue under test, the same store's rows, and what keeps them alive.
pub struct FreshQueue<G> {
    /// The queue, empty.
    pub queue: Arc<dyn JobQueue>,
    /// The same store's rows (the rows leased writes change).
    pub store: Arc<dyn StateStore>,
    /// The same store's build logs.
    pub logs: Arc<dyn BuildLogs>,
    /// Dropped when the check ends.
    pub guard: G,
}

/// How the checks get queues of one backend.
#[async_trait::async_trait(?Send)]
pub trait QueueBackend {
    /// What keeps a store alive.
    type Guard;

    /// A new, empty store that no other check uses.
    async fn fresh_queue(&self) -> FreshQueue<Self::Guard>;

    /// Another handle on the store behind `guard`, with connections of its own (another
    /// server or worker process).
    async fn queue_again(&self, guard: &Self::Guard) -> Arc<dyn JobQueue>;
}

/// Makes one `#[tokio::test]` per check of the build queue on the
/// [`QueueBackend`](crate::conformance::QueueBackend) that `$backend` evaluates to.
#[macro_export]
macro_rules! job_queue_tests {
    (@each $backend:expr; $runtime:tt; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test $runtime]
            async fn $check() {
                $crate::conformance::$check(&$backend).await;
            }
        )+
    };
    ($backend:expr) => {
        $crate::job_queue_tests!(@each $backend; ();
            jobs_go_oldest_first_to_workers_that_can_run_them,
            a_lapsed_lease_is_refused_and_changes_nothing,
            a_lapsed_job_is_requeued_then_abandoned_naming_each_worker,
            a_finished_job_changes_its_row_with_it_and_is_not_requeued,
            workers_are_added_found_by_token_and_revoked,
            the_store_clock_is_the_time,
            a_queued_job_is_withdrawn_and_a_claimed_one_is_not,
            a_lapsed_job_is_requeued_at_once_and_its_lease_refused,
            a_build_log_is_numbered_across_attempts_and_kept_from_taken_ones,
        );
        $crate::job_queue_tests!(@each $backend; (flavor = "multi_thread", worker_threads = 2);
            a_hundred_claimers_never_claim_one_job_twice,
        );
    };
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn needs(builder: &str, kvm: bool, labels: &[&str]) -> Needs {
    Needs {
        builder: builder.to_owned(),
        kvm,
        arch: "x86_64".to_owned(),
        labels: set(labels),
    }
}

fn caps(builders: &[&str], kvm: bool, labels: &[&str]) -> Capabilities {
    Capabilities {
        builders: set(builders),
        kvm,
        arch: "x86_64".to_owned(),
        labels: set(labels),
    }
}

fn job(id: &str, needs: Needs, max_attempts: u32) -> NewJob {
    NewJob {
        id: id.to_owned(),
        owner: "000000000000".to_owned(),
        needs,
        payload: format!(r#"{{"image":"{id}"}}"#),
        max_attempts,
    }
}

/// An image row `name`, and its job queued and claimed by `w1` under a lease of `lease`.
async fn claimed_row<G>(fresh: &FreshQueue<G>, name: &str, lease: Duration) -> (String, Lease) {
    let row = image(name, [1, 0, 0], 1);
    let arn = row.arn.clone();
    fresh.store.create(row, Vec::new(), None).await.must();
    fresh
        .queue
        .enqueue_job(job(&arn, needs("sandbox", false, &[]), 3))
        .await
        .must();
    let plain = caps(&["sandbox"], false, &[]);
    let (_, lease) = fresh
        .queue
        .claim_job("w1", &plain, lease)
        .await
        .must()
        .expect("a job");
    (arn, lease)
}

const MINUTE: Duration = Duration::from_secs(60);

fn is_lease_lost<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseLost { .. }))
}

/// The oldest queued job a worker can run is its; what it cannot run (another builder, KVM,
/// another architecture, a label it lacks) waits for a worker that can. A job is queued once.
pub async fn jobs_go_oldest_first_to_workers_that_can_run_them<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    assert!(q
        .enqueue_job(job("vm-kvm", needs("vm", true, &[]), 3))
        .await
        .must());
    assert!(q
        .enqueue_job(job("sandbox", needs("sandbox", false, &[]), 3))
        .await
        .must());
    let mut arm = needs("sandbox", false, &[]);
    arm.arch = "aarch64".to_owned();
    assert!(q.enqueue_job(job("arm", arm, 3)).await.must());
    assert!(q
        .enqueue_job(job("gpu", needs("sandbox", false, &["gpu"]), 3))
        .await
        .must());
    assert!(
        !q.enqueue_job(job("sandbox", needs("vm", false, &[]), 3))
            .await
            .must(),
        "a job is queued once"
    );

    let plain = caps(&["sandbox"], false, &[]);
    let (first, lease) = q
        .claim_job("w1", &plain, MINUTE)
        .await
        .must()
        .expect("a job");
    assert_eq!(first.id, "sandbox");
    assert_eq!(
        first.needs.builder, "sandbox",
        "the first enqueue's job is kept"
    );
    assert_eq!(first.state, JobState::Running);
    assert_eq!(first.payload, r#"{"image":"sandbox"}"#);
    assert_eq!((lease.job.as_str(), lease.attempt), ("sandbox", 1));
    assert!(q.claim_job("w1", &plain, MINUTE).await.must().is_none());

    let labelled = caps(&["sandbox", "vm"], false, &["gpu", "big"]);
    let (second, _) = q
        .claim_job("w2", &labelled, MINUTE)
        .await
        .must()
        .expect("a job");
    assert_eq!(second.id, "gpu", "no KVM: the older vm-kvm job waits");
    let kvm = caps(&["vm"], true, &[]);
    let (third, _) = q.claim_job("w3", &kvm, MINUTE).await.must().expect("a job");
    assert_eq!(third.id, "vm-kvm");
    let queued = q.jobs(&[JobState::Queued], 10).await.must();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, "arm");
    assert_eq!(q.jobs(&[], 10).await.must().len(), 4);
    assert_eq!(q.jobs(&[], 2).await.must().len(), 2);
}

/// A cancelled build's job leaves the queue only while no worker holds it.
pub async fn a_queued_job_is_withdrawn_and_a_claimed_one_is_not<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let plain = caps(&["sandbox"], false, &[]);
    assert!(q
        .enqueue_job(job("a", needs("sandbox", false, &[]), 3))
        .await
        .must());
    assert!(q
        .enqueue_job(job("b", needs("sandbox", false, &[]), 3))
        .await
        .must());
    assert!(
        q.withdraw_job("a").await.must(),
        "a queued job is withdrawn"
    );
    assert!(!q.withdraw_job("a").await.must(), "once");
    assert!(!q.withdraw_job("none").await.must());
    assert_eq!(
        q.job("a").await.must().map(|j| j.state),
        Some(JobState::Finished)
    );
    let (claimed, _) = q
        .claim_job("w1", &plain, MINUTE)
        .await
        .must()
        .expect("a job");
    assert_eq!(claimed.id, "b", "a withdrawn job is never claimed");
    assert!(
        !q.withdraw_job("b").await.must(),
        "a claimed job is its worker's"
    );
    assert_eq!(
        q.job("b").await.must().map(|j| j.state),
        Some(JobState::Running)
    );
}

/// A job whose worker is known to be gone is lapsed: the next reaping takes it, and the old
/// lease is refused.
pub async fn a_lapsed_job_is_requeued_at_once_and_its_lease_refused<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let plain = caps(&["sandbox"], false, &[]);
    assert!(q
        .enqueue_job(job("a", needs("sandbox", false, &[]), 3))
        .await
        .must());
    assert!(
        !q.lapse_job("a").await.must(),
        "a queued job has no lease to end"
    );
    let (_, lease) = q
        .claim_job("w1", &plain, MINUTE)
        .await
        .must()
        .expect("a job");
    assert!(
        q.requeue_expired().await.must().is_empty(),
        "the lease holds"
    );
    assert!(q.lapse_job("a").await.must());
    assert!(!q.lapse_job("a").await.must(), "once");
    let taken = q.requeue_expired().await.must();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].job.state, taken[0].worker.as_str()),
        (JobState::Queued, "w1")
    );
    assert!(is_lease_lost(q.renew_lease(&lease, MINUTE).await));
}

/// A build's log lines are numbered by the store across attempts and read from any line on;
/// an attempt taken from its worker adds nothing more, a finished one may add its last lines,
/// and a log file is replaced by a later attempt's.
pub async fn a_build_log_is_numbered_across_attempts_and_kept_from_taken_ones<B: QueueBackend>(
    backend: &B,
) {
    let fresh = backend.fresh_queue().await;
    let (q, logs) = (&*fresh.queue, &*fresh.logs);
    let (arn, first) = claimed_row(&fresh, "logged", MINUTE).await;
    let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(logs.append_log(&first, &lines(&["a", "b"])).await.must(), 2);
    assert_eq!(logs.append_log(&first, &[]).await.must(), 2);
    logs.put_log_file(&first, "test/console.log", "one")
        .await
        .must();
    let mut forged = first.clone();
    forged.worker = "w9".into();
    assert!(is_lease_lost(
        logs.append_log(&forged, &lines(&["x"])).await
    ));

    assert!(q.lapse_job(&arn).await.must());
    assert_eq!(q.requeue_expired().await.must().len(), 1);
    assert!(
        is_lease_lost(logs.append_log(&first, &lines(&["late"])).await),
        "a taken attempt adds nothing"
    );
    assert!(is_lease_lost(
        logs.put_log_file(&first, "test/console.log", "late").await
    ));
    let plain = caps(&["sandbox"], false, &[]);
    let (_, second) = q
        .claim_job("w2", &plain, MINUTE)
        .await
        .must()
        .expect("the job again");
    assert_eq!(logs.append_log(&second, &lines(&["c"])).await.must(), 3);
    logs.put_log_file(&second, "test/console.log", "two")
        .await
        .must();
    q.finish_job(&second, &arn, Update::default()).await.must();
    assert_eq!(
        logs.append_log(&second, &lines(&["end"])).await.must(),
        4,
        "a finished attempt adds its last lines"
    );

    let all = logs.log_lines(&arn, 0, 100).await.must();
    let seen: Vec<(u64, u32, &str)> = all
        .iter()
        .map(|l| (l.number, l.attempt, l.text.as_str()))
        .collect();
    assert_eq!(seen, [(0, 1, "a"), (1, 1, "b"), (2, 2, "c"), (3, 2, "end")]);
    let tail = logs.log_lines(&arn, 2, 1).await.must();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].text, "c");
    assert!(logs.log_lines("arn:none", 0, 10).await.must().is_empty());
    assert_eq!(logs.log_files(&arn).await.must(), ["test/console.log"]);
    assert_eq!(
        logs.log_file(&arn, "test/console.log")
            .await
            .must()
            .as_deref(),
        Some("two")
    );
    assert_eq!(logs.log_file(&arn, "nope").await.must(), None);

    // Deleting the image takes its log with it.
    fresh.store.delete(&arn).await.must();
    assert!(logs.log_lines(&arn, 0, 10).await.must().is_empty());
    assert!(logs.log_files(&arn).await.must().is_empty());
}

/// A lease is renewed while it holds; once it lapsed, renewing, writing and finishing under it
/// are refused, and the row it wanted to change stays as it was.
pub async fn a_lapsed_lease_is_refused_and_changes_nothing<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let (q, store) = (&*fresh.queue, &*fresh.store);
    let (arn, lease) = claimed_row(&fresh, "leased", Duration::from_millis(1500)).await;
    let renewed = q
        .renew_lease(&lease, Duration::from_millis(1500))
        .await
        .must();
    assert!(renewed.expires_ms >= lease.expires_ms);
    let building = Update {
        state: Some("BUILDING".into()),
        ..Update::default()
    };
    let row = q.update_leased(&renewed, &arn, building).await.must();
    assert_eq!(row.state.as_deref(), Some("BUILDING"));

    let mut forged = renewed.clone();
    forged.token = "not-the-token".into();
    assert!(is_lease_lost(q.renew_lease(&forged, MINUTE).await));
    let mut other = renewed.clone();
    other.worker = "w2".into();
    assert!(is_lease_lost(q.renew_lease(&other, MINUTE).await));

    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(is_lease_lost(q.renew_lease(&renewed, MINUTE).await));
    let available = || Update {
        state: Some("AVAILABLE".into()),
        ..Update::default()
    };
    assert!(is_lease_lost(
        q.update_leased(&renewed, &arn, available()).await
    ));
    assert!(is_lease_lost(
        q.finish_job(&renewed, &arn, available()).await
    ));
    let row = store.get(&arn).await.must().expect("the row");
    assert_eq!(
        row.state.as_deref(),
        Some("BUILDING"),
        "nothing was written"
    );
    assert_eq!(
        q.job(&arn).await.must().expect("the job").state,
        JobState::Running,
        "not finished"
    );
}

/// A job whose worker stopped renewing goes back to the queue for another worker, with a new
/// token (the old one stays refused); after its last attempt it is abandoned, its attempts
/// naming each worker.
pub async fn a_lapsed_job_is_requeued_then_abandoned_naming_each_worker<B: QueueBackend>(
    backend: &B,
) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let plain = caps(&["sandbox"], false, &[]);
    q.enqueue_job(job("j", needs("sandbox", false, &[]), 2))
        .await
        .must();
    let short = Duration::from_millis(1000);
    let (_, first) = q
        .claim_job("w1", &plain, short)
        .await
        .must()
        .expect("a job");
    assert!(q.requeue_expired().await.must().is_empty(), "still leased");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let back = q.requeue_expired().await.must();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].worker, "w1");
    assert_eq!(back[0].job.state, JobState::Queued);
    assert!(q.requeue_expired().await.must().is_empty(), "requeued once");

    let (_, second) = q
        .claim_job("w2", &plain, short)
        .await
        .must()
        .expect("again");
    assert_eq!(second.attempt, 2);
    assert_ne!(second.token, first.token, "a fresh token per claim");
    assert!(is_lease_lost(q.renew_lease(&first, MINUTE).await));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let gone = q.requeue_expired().await.must();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].job.state, JobState::Abandoned);
    let attempts: Vec<(&str, AttemptEnd)> = gone[0]
        .job
        .attempts
        .iter()
        .map(|a| (a.worker.as_str(), a.end))
        .collect();
    assert_eq!(
        attempts,
        [("w1", AttemptEnd::Lost), ("w2", AttemptEnd::Lost)]
    );
    assert!(gone[0].job.attempts.iter().all(|a| a.ended_ms.is_some()));
    assert!(q.claim_job("w3", &plain, MINUTE).await.must().is_none());
}

/// Finishing writes the row's last change and ends the job in one step; a finished job is
/// never requeued, and its lease is spent.
pub async fn a_finished_job_changes_its_row_with_it_and_is_not_requeued<B: QueueBackend>(
    backend: &B,
) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let (arn, lease) = claimed_row(&fresh, "finished", Duration::from_millis(1000)).await;
    let done = Update {
        state: Some("FAILED".into()),
        ..Update::default()
    };
    let row = q.finish_job(&lease, &arn, done.clone()).await.must();
    assert_eq!(row.state.as_deref(), Some("FAILED"));
    let job = q.job(&arn).await.must().expect("the job");
    assert_eq!(
        job.state,
        JobState::Finished,
        "a failed build is a finished job"
    );
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].end, AttemptEnd::Finished);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(q.requeue_expired().await.must().is_empty());
    assert!(is_lease_lost(q.finish_job(&lease, &arn, done).await));
    assert!(q.job("no-such-job").await.must().is_none());
}

/// Workers are found by the digest of their token until it is revoked; a name is taken while
/// its token is live; the list shows when each was last heard from and the job it holds.
pub async fn workers_are_added_found_by_token_and_revoked<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let added = q.add_worker("w1", "digest-1").await.must();
    assert_eq!(added.name, "w1");
    assert!(matches!(
        q.add_worker("w1", "digest-2").await,
        Err(StoreError::WorkerExists { .. })
    ));
    q.add_worker("w2", "digest-3").await.must();
    let found = q.worker_by_token("digest-1").await.must().expect("w1");
    assert_eq!(found.name, "w1");
    assert!(found.last_seen_ms.is_none());
    assert!(q.worker_by_token("digest-2").await.must().is_none());

    let plain = caps(&["sandbox"], false, &["fast"]);
    q.enqueue_job(job("j", needs("sandbox", false, &[]), 3))
        .await
        .must();
    q.claim_job("w1", &plain, MINUTE)
        .await
        .must()
        .expect("a job");
    q.worker_seen("w2", &caps(&["vm"], true, &[])).await.must();
    let all = q.workers().await.must();
    let names: Vec<&str> = all.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(all[0].current_job.as_deref(), Some("j"));
    assert!(all[0].last_seen_ms.is_some());
    assert_eq!(all[0].capabilities.as_ref(), Some(&plain));
    assert!(all[1].current_job.is_none());
    assert!(all[1].capabilities.as_ref().is_some_and(|c| c.kvm));

    assert!(q.revoke_worker("w1").await.must());
    assert!(!q.revoke_worker("w1").await.must(), "revoked once");
    assert!(!q.revoke_worker("nobody").await.must());
    assert!(q.worker_by_token("digest-1").await.must().is_none());
    let again = q.add_worker("w1", "digest-4").await.must();
    assert!(
        again.revoked_ms.is_none(),
        "a revoked name can be given a new token"
    );
    assert!(q.worker_by_token("digest-4").await.must().is_some());
}

/// The store's clock is the time (leases are measured by it) and it moves on.
pub async fn the_store_clock_is_the_time<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    let q = &*fresh.queue;
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let a = q.clock_ms().await.must();
    assert!((a - system).abs() < 60_000, "store {a}, system {system}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = q.clock_ms().await.must();
    assert!(b > a, "{b} after {a}");
}

/// A hundred claimers on four handles (as many servers' or workers' connections) racing for
/// sixty jobs: every job is claimed, and none twice.
pub async fn a_hundred_claimers_never_claim_one_job_twice<B: QueueBackend>(backend: &B) {
    let fresh = backend.fresh_queue().await;
    for i in 0..60 {
        fresh
            .queue
            .enqueue_job(job(&format!("job-{i:02}"), needs("sandbox", false, &[]), 3))
            .await
            .must();
    }
    let mut handles = vec![fresh.queue.clone()];
    for _ in 0..3 {
        handles.push(backend.queue_again(&fresh.guard).await);
    }
    let mut tasks = Vec::new();
    for n in 0..100 {
        let q = handles[n % handles.len()].clone();
        tasks.push(tokio::spawn(async move {
            let plain = caps(&["sandbox"], false, &[]);
            let mut mine = Vec::new();
            while let Some((job, _)) = q
                .claim_job(&format!("w{n}"), &plain, MINUTE)
                .await
                .expect("claims succeed")
            {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.expect("the claimer ran"));
    }
    let distinct: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a job claimed twice: {claimed:?}"
    );
    assert_eq!(claimed.len(), 60);
}

#[cfg(test)]
mod tests {
    /// A check that the macro does not list would never run for any backend.
    #[test]
    fn the_macro_runs_every_check() {
        let source = include_str!("jobs.rs");
        let checks: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split(['<', '(']).next())
            .collect();
        assert_eq!(checks.len(), 10, "{checks:?}");
        let (_, after) = source
            .split_once("macro_rules! job_queue_tests")
            .expect("the macro is in this file");
        let (body, _) = after
            .split_once("\nfn set")
            .expect("the macro ends before set");
        for check in checks {
            assert!(body.contains(check), "job_queue_tests! misses {check}");
        }
    }
}
