//! 1,000 pipelines due at the same minute, all queued: COUNT pipelines (default 1,000) whose
//! daily schedule falls at one instant; one scheduler tick claims each run, plans it and
//! queues its build as `kiln serve` does (checked, numbered PENDING, its job in the queue).
//! Timed on the embedded SQLite store and on a PostgreSQL cluster the bench starts
//! (Debian's `postgresql`). The target: every build queued within 5 s.
//!
//! `cargo bench -p kiln-core --bench due [-- COUNT]`, or bench/due.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use kiln_core::build::{BuildOptions, Builder};
use kiln_core::pipeline::Plan;
use kiln_core::record::Records;
use kiln_core::resources::Resources;
use kiln_core::scheduler::{Decision, Scheduler, Starter};
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_instance::fake::{FakeLauncher, FakeReply};
use kiln_schedule::ManualClock;
use kiln_store::JobState;

/// Queues each build the way the server's `Builds::start` does.
struct Enqueue {
    home: Home,
    store: Store,
    launcher: Arc<FakeLauncher>,
}

#[async_trait]
impl Starter for Enqueue {
    async fn start(&self, plan: Plan) -> Result<String, String> {
        let builder = Builder::new(
            self.home.clone(),
            BuildOptions::default(),
            plan.origin.clone(),
            self.launcher.clone(),
        )
        .with_logging(plan.logging())
        .with_store(self.store.clone());
        let recipe = plan.build_recipe;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(builder.enqueue(&recipe)))
            .await
            .map_err(|e| e.to_string())?
            .map(|rec| rec.arn)
            .map_err(|e| e.to_string())
    }
}

/// Stores `count` pipelines due daily at 03:00, then times the tick at 03:00 that queues
/// them all. Returns (tick ms, builds queued).
async fn due_at_once(store: Store, home: Home, count: usize) -> (f64, usize) {
    let dir = home.root.clone();
    let res = Resources::new(store.clone());
    common::daily_pipelines(&res, &dir, count).await;
    let start = chrono::Utc::now();
    let clock = ManualClock::new(start);
    let starter = Arc::new(Enqueue {
        home: home.clone(),
        store: store.clone(),
        launcher: Arc::new(FakeLauncher::new(|_| FakeReply::ok())),
    });
    let scheduler = Scheduler::new(
        res.clone(),
        Records::new(store.clone()),
        Arc::new(clock.clone()),
        starter,
    );
    let due = common::next_due(start);
    clock.set(due + chrono::Duration::seconds(3));
    let t = Instant::now();
    let o = scheduler.tick().await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let started = o
        .iter()
        .filter(|o| matches!(o.decision, Decision::Started { .. }))
        .count();
    assert_eq!(
        started,
        count,
        "{:?}",
        o.iter()
            .find(|o| !matches!(o.decision, Decision::Started { .. }))
    );
    let queued = store
        .jobs()
        .jobs(&[JobState::Queued], u32::MAX)
        .await
        .unwrap()
        .len();
    (ms, queued)
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("| store | pipelines due | one tick: all queued | a build | queued |");
    println!("| --- | --- | --- | --- | --- |");
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(&home).await.unwrap();
        let (ms, queued) = due_at_once(store, home, count).await;
        println!(
            "| SQLite | {count} | {ms:.0} ms | {:.2} ms | {queued} |",
            ms / count as f64
        );

        let cluster = kiln_testkit::postgres::Cluster::start();
        cluster.create_database("due");
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let db = kiln_store::PgStore::connect(&cluster.url("due"))
            .await
            .unwrap();
        let store = Store::with_backend(&home, Arc::new(db));
        let (ms, queued) = due_at_once(store, home, count).await;
        println!(
            "| PostgreSQL | {count} | {ms:.0} ms | {:.2} ms | {queued} |",
            ms / count as f64
        );
    });
}
