//! Checks of [`Leadership`]: one holder of a role at a time, until its hold lapses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::Must;
use crate::Leadership;

/// How the checks get stores of one backend, as [`Leadership`].
#[async_trait::async_trait(?Send)]
pub trait LeaderBackend {
    /// What keeps a store alive.
    type Guard;

    /// A new, empty store that no other check uses, and what keeps it.
    async fn fresh_leader(&self) -> (Arc<dyn Leadership>, Self::Guard);

    /// Another handle on the store behind `guard` (another server).
    async fn leader_again(&self, guard: &Self::Guard) -> Arc<dyn Leadership>;
}

/// Makes one `#[tokio::test]` per check of [`Leadership`] on the
/// [`LeaderBackend`](crate::conformance::LeaderBackend) that `$backend` evaluates to.
#[macro_export]
macro_rules! leadership_tests {
    ($backend:expr) => {
        #[::tokio::test]
        async fn one_holder_at_a_time_until_its_hold_lapses() {
            $crate::conformance::one_holder_at_a_time_until_its_hold_lapses(&$backend).await;
        }

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_servers_get_one_leader() {
            $crate::conformance::racing_servers_get_one_leader(&$backend).await;
        }
    };
}

/// A role is its holder's while it renews it; another takes it only once the hold lapsed or
/// the holder stepped down.
pub async fn one_holder_at_a_time_until_its_hold_lapses<B: LeaderBackend>(backend: &B) {
    let (l, _guard) = backend.fresh_leader().await;
    let hold = Duration::from_millis(1000);
    assert!(l.lead("scheduler", "a", hold).await.must());
    assert!(!l.lead("scheduler", "b", hold).await.must());
    assert!(
        l.lead("deliverer", "b", hold).await.must(),
        "roles are apart"
    );
    assert!(l.lead("scheduler", "a", hold).await.must(), "renewed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        l.lead("scheduler", "b", hold).await.must(),
        "lapsed: b takes it"
    );
    assert!(!l.lead("scheduler", "a", hold).await.must());
    l.step_down("scheduler", "a").await.must();
    assert!(
        !l.lead("scheduler", "a", hold).await.must(),
        "a cannot step b down"
    );
    l.step_down("scheduler", "b").await.must();
    assert!(
        l.lead("scheduler", "a", hold).await.must(),
        "b stepped down"
    );
}

/// Twenty servers on two handles asking at once: one of them leads.
pub async fn racing_servers_get_one_leader<B: LeaderBackend>(backend: &B) {
    let (first, guard) = backend.fresh_leader().await;
    let handles = [first, backend.leader_again(&guard).await];
    let mut tasks = Vec::new();
    for n in 0..20 {
        let l = handles[n % 2].clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("server-{n}");
            let led = l
                .lead("scheduler", &me, Duration::from_secs(60))
                .await
                .expect("lead answers");
            led.then_some(me)
        }));
    }
    let mut leaders = BTreeSet::new();
    for t in tasks {
        leaders.extend(t.await.expect("the task ran"));
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
}
