//! What one scheduler tick costs with many pipelines: COUNT pipelines (default 1,000) with a
//! daily schedule in one store, timed when no run is due (every tick of the day) and when
//! every pipeline's run is due at once (each claimed, planned and handed to a starter that
//! records it). The tick runs every 5 s in `kiln serve`; it must stay far below that.
//!
//! `cargo bench -p kiln-core --bench scheduler [-- COUNT]`, or bench/scheduler.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_core::pipeline::Plan;
use kiln_core::record::Records;
use kiln_core::resources::Resources;
use kiln_core::scheduler::{Decision, Scheduler, Starter};
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_schedule::ManualClock;

/// Counts the builds it is handed; builds nothing.
#[derive(Default)]
struct Count(AtomicUsize);

#[async_trait]
impl Starter for Count {
    async fn start(&self, _plan: Plan) -> Result<String, String> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Ok(format!("counted-{n}"))
    }
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::new(dir.path())).await.unwrap();
        let res = Resources::new(store.clone());
        let t = Instant::now();
        common::daily_pipelines(&res, dir.path(), count).await;
        eprintln!(
            "{count} pipelines stored in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let start = chrono::Utc::now();
        let clock = ManualClock::new(start);
        let counted = Arc::new(Count::default());
        let scheduler = Scheduler::new(
            res.clone(),
            Records::new(store.clone()),
            Arc::new(clock.clone()),
            counted.clone(),
        );
        // Nothing due: the pipelines were made after today's 03:00 or before it, and the next
        // one is hours away at most a day.
        let first_due = common::next_due(start);
        let mut quiet = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let o = scheduler.tick().await.unwrap();
            quiet.push(t.elapsed());
            assert!(o.is_empty(), "{o:?}");
        }
        quiet.sort();
        clock.set(first_due + chrono::Duration::seconds(3));
        let t = Instant::now();
        let o = scheduler.tick().await.unwrap();
        let due = t.elapsed();
        let started = o
            .iter()
            .filter(|o| matches!(o.decision, Decision::Started { .. }))
            .count();
        assert_eq!(started, count, "{:?}", o.first());
        let t = Instant::now();
        let after = scheduler.tick().await.unwrap();
        let again = t.elapsed();
        assert!(after.is_empty());
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| pipelines | tick, nothing due (median of 7) | tick, every run due | next tick |"
        );
        println!("| --- | --- | --- | --- |");
        println!(
            "| {count} | {:.0} ms | {:.0} ms ({:.2} ms a run) | {:.0} ms |",
            ms(quiet[3]),
            ms(due),
            ms(due) / count as f64,
            ms(again)
        );
    });
}
