//! What the build queue costs on each backend: queueing COUNT jobs, then claimers on their own
//! handles (as workers on many hosts) taking them all, each claim timed, and heartbeats.
//!
//! `cargo bench -p kiln-store --bench queue -- [COUNT]` (`bench/queue.sh`); the results are in
//! docs/benchmarks.md. The PostgreSQL server is the tests' throwaway cluster on this machine
//! (fsync off), so its numbers are the store's own cost, not a disk's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_store::{Capabilities, JobQueue, Needs, NewJob, PgStore, SqliteStore};

const LEASE: Duration = Duration::from_secs(60);

fn needs() -> Needs {
    Needs {
        builder: "sandbox".into(),
        arch: "x86_64".into(),
        ..Needs::default()
    }
}

fn caps() -> Capabilities {
    Capabilities {
        builders: BTreeSet::from(["sandbox".to_owned()]),
        arch: "x86_64".into(),
        ..Capabilities::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Queues `count` jobs, then `claimers` tasks on as many handles take them all.
async fn round<F, Fut>(name: &str, count: usize, claimers: usize, open: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn JobQueue>>,
{
    let first = open().await;
    let started = Instant::now();
    for i in 0..count {
        first
            .enqueue_job(NewJob {
                id: format!("job-{i}"),
                owner: "000000000000".into(),
                needs: needs(),
                payload: "{}".into(),
                max_attempts: 3,
            })
            .await
            .unwrap();
    }
    let queued = started.elapsed();
    let mut handles = vec![first];
    while handles.len() < claimers {
        handles.push(open().await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, q) in handles.iter().enumerate() {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut beats = Vec::new();
            loop {
                let t = Instant::now();
                let Some((_, lease)) = q.claim_job(&format!("w{n}"), &caps(), LEASE).await.unwrap()
                else {
                    break;
                };
                times.push(t.elapsed());
                let t = Instant::now();
                q.renew_lease(&lease, LEASE).await.unwrap();
                beats.push(t.elapsed());
            }
            (times, beats)
        }));
    }
    let mut claims = Vec::new();
    let mut beats = Vec::new();
    for t in tasks {
        let (c, b) = t.await.unwrap();
        claims.extend(c);
        beats.extend(b);
    }
    let took = started.elapsed();
    assert_eq!(claims.len(), count, "every job claimed once");
    claims.sort();
    beats.sort();
    println!(
        "| {name} | {claimers} | {} | {} | {} | {} | {:.0}/s | {} |",
        ms(queued),
        ms(percentile(&claims, 0.5)),
        ms(percentile(&claims, 0.99)),
        ms(*claims.last().unwrap_or(&Duration::ZERO)),
        count as f64 / took.as_secs_f64(),
        ms(percentile(&beats, 0.99)),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    println!(
        "| backend | claimers | queue {count} | claim p50 | claim p99 | claim max | claims | heartbeat p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for claimers in [1, 4, 16] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let open = || {
            let path = path.clone();
            async move { Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn JobQueue> }
        };
        round("SQLite", count, claimers, &open).await;
    }
    let cluster = kiln_testkit::postgres::Cluster::start();
    for claimers in [1, 4, 16] {
        let db = format!("bench{claimers}");
        cluster.create_database(&db);
        let url = cluster.url(&db);
        let open = || {
            let url = url.clone();
            async move { Arc::new(PgStore::connect(&url).await.unwrap()) as Arc<dyn JobQueue> }
        };
        round("PostgreSQL", count, claimers, &open).await;
    }
}
