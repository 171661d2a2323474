//! Notifications: what kiln tells a topic's subscribers, and the outbox messages that carry it.
//!
//! A message is written into the store's outbox in the same transaction as the change it
//! tells of (an image's final state, a pipeline disabled), so a crash can neither lose it nor
//! send one for a change that never happened. Its id is derived from what it tells, so the
//! same event written twice is one message, and receivers see one `webhook-id`.

mod deliver;
#[cfg(test)]
mod delivery_tests;
mod sign;
mod topic;

use std::fmt;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

pub use deliver::{
    retry_delay, system_clock, Clock, DeliverError, Deliverer, Running, ATTEMPT_TIMEOUT,
    GIVE_UP_AFTER, POLL_INTERVAL,
};
pub use sign::{sign_one, signature_header, Secret, SecretError, SECRET_PREFIX};
pub use topic::{
    check_url, parse_topic_arn, topic_of, topics_named, Topic, TopicState, TopicView, Topics,
    MAX_SECRETS,
};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// An image build ended AVAILABLE.
    ImageAvailable,
    /// An image build ended FAILED.
    ImageFailed,
    /// A pipeline was disabled after failed scheduled runs.
    PipelineDisabled,
    /// A lifecycle policy acted on an image.
    LifecycleAction,
}

impl Event {
    /// The name receivers see (the `type` of a Standard Webhooks payload).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ImageAvailable => "image.available",
            Event::ImageFailed => "image.failed",
            Event::PipelineDisabled => "pipeline.disabled",
            Event::LifecycleAction => "lifecycle.action",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outbox message telling `topic` that `event` happened to `subject` (an ARN, with
/// whatever makes this occurrence unique, such as the run's instant), carrying `body`.
///
/// The body delivered is a Standard Webhooks payload: `{"type": EVENT, "timestamp": NOW,
/// "data": BODY}`, where BODY is what the event is about (the Image object, as SNS would
/// carry it, for the image events).
pub fn message(
    topic: &str,
    event: Event,
    subject: &str,
    body: &serde_json::Value,
    now_ms: i64,
) -> kiln_store::Message {
    let mut h = Sha256::new();
    for part in [topic, event.as_str(), subject] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    kiln_store::Message {
        id: format!("msg_{}", &digest[..32]),
        topic: topic.to_owned(),
        event: event.as_str().to_owned(),
        body: envelope(event, body, now_ms).to_string(),
        created_ms: now_ms,
    }
}

/// The Standard Webhooks payload of an event: its type, when it happened, and its data.
fn envelope(event: Event, data: &serde_json::Value, now_ms: i64) -> serde_json::Value {
    let at = chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({"type": event.as_str(), "timestamp": at, "data": data})
}

/// What a build's final record tells subscribers: the outbox messages written with the final
/// save (none when its infrastructure configuration names no topic, or the state is not one
/// subscribers hear of).
///
/// kiln-api implements it with the Image object of GetImage; the build calls it through
/// [`crate::build::Builder::with_notices`] and knows nothing of views.
#[async_trait]
pub trait Notices: Send + Sync {
    /// The messages for `record`, which has just reached a final state; `now_ms` is when.
    async fn of_final(
        &self,
        record: &crate::record::ImageRecord,
        now_ms: i64,
    ) -> Vec<kiln_store::Message>;
}

/// What `notices` (when there are any) say of a record that has just reached a final state,
/// now.
pub async fn final_outbox(
    notices: Option<&dyn Notices>,
    record: &crate::record::ImageRecord,
) -> Vec<kiln_store::Message> {
    match notices {
        Some(n) => {
            n.of_final(record, chrono::Utc::now().timestamp_millis())
                .await
        }
        None => Vec::new(),
    }
}

/// The event a build's final state is, when subscribers hear of it (AVAILABLE, FAILED).
pub fn image_event(state: crate::record::State) -> Option<Event> {
    match state {
        crate::record::State::Available => Some(Event::ImageAvailable),
        crate::record::State::Failed => Some(Event::ImageFailed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_is_the_same_message_id() {
        let body = serde_json::json!({"a": 1});
        let a = message("t", Event::ImageAvailable, "img/1", &body, 1);
        let b = message("t", Event::ImageAvailable, "img/1", &body, 2);
        let c = message("t", Event::ImageFailed, "img/1", &body, 1);
        let d = message("t", Event::ImageAvailable, "img/2", &body, 1);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert!(a.id.starts_with("msg_") && a.id.len() == 36);
        let delivered: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            delivered,
            serde_json::json!({"type": "image.available", "timestamp": "1970-01-01T00:00:00.001Z", "data": {"a": 1}})
        );
    }
}
