//! Checks of the outbox and of claimed scheduled runs.

use super::{image, new_row, Backend, Must, PREFIX};
use crate::{Delivery, Message, MessageState, Run, StoreError, Update};

fn message(id: &str, topic: &str, created_ms: i64) -> Message {
    Message {
        id: id.to_owned(),
        topic: topic.to_owned(),
        event: "image.available".to_owned(),
        body: format!(r#"{{"id":"{id}"}}"#),
        created_ms,
    }
}

fn topic(name: &str) -> String {
    format!("{PREFIX}:topic/{name}")
}

/// Messages are stored once per id, come due oldest first from their creation time, and
/// leave the due list once delivered.
pub async fn outbox_messages_are_stored_once_and_come_due_in_order<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let t = topic("builds");
    store
        .enqueue(vec![message("b", &t, 20), message("a", &t, 10)])
        .await
        .must();
    store.enqueue(vec![message("a", &t, 30)]).await.must();
    assert!(store.due_messages(5, 10).await.must().is_empty());
    let due = store.due_messages(25, 10).await.must();
    let ids: Vec<_> = due.iter().map(|q| q.message.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "oldest first, `a` stored once");
    assert_eq!(
        due[0].message.created_ms, 10,
        "the first `a` is the one kept"
    );
    assert_eq!(due[0].state, MessageState::Pending);
    assert_eq!(store.due_messages(25, 1).await.must().len(), 1);
    store
        .record_delivery(due[0].seq, Delivery::Delivered { at_ms: 26 })
        .await
        .must();
    let left = store.due_messages(100, 10).await.must();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.id, "b");
    let all = store.messages(&t, 10).await.must();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].message.id, "a", "the last written first");
    assert_eq!(all[0].state, MessageState::Delivered);
    assert_eq!(all[0].attempts, 1);
    assert_eq!(all[1].state, MessageState::Pending);
    assert!(store.messages(&topic("other"), 10).await.must().is_empty());
}

/// An update's messages are stored with it, and not at all when the update fails.
pub async fn update_stores_its_outbox_in_its_transaction<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let row = new_row(store, image("web", [1, 0, 0], 1), &[]).await;
    let t = topic("builds");
    store
        .update(
            &row.arn,
            Update {
                state: Some("FAILED".to_owned()),
                outbox: vec![message("m1", &t, 1)],
                ..Update::default()
            },
        )
        .await
        .must();
    let missing = store
        .update(
            &format!("{PREFIX}:image/missing/1.0.0/1"),
            Update {
                state: Some("FAILED".to_owned()),
                outbox: vec![message("m2", &t, 1)],
                ..Update::default()
            },
        )
        .await
        .must_fail();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
    let ids: Vec<_> = store
        .messages(&t, 10)
        .await
        .must()
        .into_iter()
        .map(|q| q.message.id)
        .collect();
    assert_eq!(ids, ["m1"]);
}

/// A retry moves a message's due time and keeps its error; a dropped message stays dropped
/// whatever answer comes late; a topic's pending messages can be dropped together.
pub async fn retries_and_drops<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let (t, u) = (topic("t"), topic("u"));
    store
        .enqueue(vec![
            message("1", &t, 0),
            message("2", &t, 0),
            message("3", &u, 0),
        ])
        .await
        .must();
    let due = store.due_messages(0, 10).await.must();
    let first = due[0].seq;
    store
        .record_delivery(
            first,
            Delivery::Retry {
                at_ms: 500,
                error: "connection refused".to_owned(),
            },
        )
        .await
        .must();
    let ids = |v: Vec<crate::Queued>| v.into_iter().map(|q| q.message.id).collect::<Vec<_>>();
    assert_eq!(ids(store.due_messages(499, 10).await.must()), ["2", "3"]);
    let later = store.due_messages(500, 10).await.must();
    assert_eq!(
        ids(later.clone()),
        ["2", "3", "1"],
        "due times order the list"
    );
    let retried = &later[2];
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("connection refused"));
    store
        .record_delivery(
            first,
            Delivery::Dropped {
                at_ms: 600,
                reason: "410 Gone".to_owned(),
            },
        )
        .await
        .must();
    store
        .record_delivery(first, Delivery::Delivered { at_ms: 700 })
        .await
        .must();
    let kept = store.messages(&t, 10).await.must();
    let one = kept.iter().find(|q| q.seq == first).must_some();
    assert_eq!(
        one.state,
        MessageState::Dropped,
        "a late answer undoes no drop"
    );
    assert_eq!(one.last_error.as_deref(), Some("410 Gone"));
    assert_eq!(store.drop_topic_messages(&t, 800, "gone").await.must(), 1);
    assert_eq!(ids(store.due_messages(10_000, 10).await.must()), ["3"]);
    let missing = store
        .record_delivery(first + 1000, Delivery::Delivered { at_ms: 1 })
        .await
        .must_fail();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
}

fn run(pipeline: &str, at_ms: i64) -> Run {
    Run {
        pipeline: pipeline.to_owned(),
        at_ms,
        claimed_ms: at_ms + 1,
        image: None,
        note: "claimed".to_owned(),
    }
}

/// A scheduled run is claimed once; what it came to is recorded; runs list latest first.
pub async fn scheduled_runs_are_claimed_once<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let p = format!("{PREFIX}:image-pipeline/nightly");
    assert!(store.claim_run(&run(&p, 1_000)).await.must());
    assert!(
        !store.claim_run(&run(&p, 1_000)).await.must(),
        "claimed twice"
    );
    assert!(store.claim_run(&run(&p, 3_000)).await.must());
    assert!(store.claim_run(&run(&p, 2_000)).await.must());
    assert!(store.claim_run(&run("other", 1_000)).await.must());
    store
        .finish_run(&p, 1_000, Some("arn:image"), "started")
        .await
        .must();
    let runs = store.runs(&p, 10).await.must();
    let at: Vec<_> = runs.iter().map(|r| r.at_ms).collect();
    assert_eq!(at, [3_000, 2_000, 1_000]);
    assert_eq!(runs[2].image.as_deref(), Some("arn:image"));
    assert_eq!(runs[2].note, "started");
    assert_eq!(store.runs(&p, 1).await.must().len(), 1);
    let missing = store.finish_run(&p, 9, None, "x").await.must_fail();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
}

/// Two handles claiming the same runs at once claim each exactly once between them.
pub async fn two_handles_claim_each_run_once<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let other = backend.open_again(&fresh.guard).await;
    let claims = |store: std::sync::Arc<dyn crate::StateStore>| async move {
        let mut won = 0;
        for at in 0..20 {
            if store.claim_run(&run("p", at)).await.must() {
                won += 1;
            }
        }
        won
    };
    let a = tokio::spawn(claims(fresh.store.clone()));
    let b = tokio::spawn(claims(other));
    let (a, b) = (a.await.must_some(), b.await.must_some());
    assert_eq!(a + b, 20, "{a} + {b} claims");
}

trait MustSome<T> {
    fn must_some(self) -> T;
}

impl<T> MustSome<T> for Option<T> {
    #[track_caller]
    fn must_some(self) -> T {
        match self {
            Some(v) => v,
            None => panic!("expected a value"),
        }
    }
}

impl<T, E: std::fmt::Debug> MustSome<T> for Result<T, E> {
    #[track_caller]
    fn must_some(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("expected a value: {e:?}"),
        }
    }
}
