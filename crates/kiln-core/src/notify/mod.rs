//! Notifications: what kiln tells a topic's subscribers, and the outbox messages that carry it.
//!
//! A message is written into the store's outbox in the same transaction as the change it
//! tells of (an image's final state, a pipeline disabled), so a crash can neither lose it nor
//! send one for a change that never happened. Its id is derived from what it tells, so the
//! same event written twice is one message, and receivers see one `webhook-id`.

use std::fmt;

use sha2::{Digest, Sha256};

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
        body: body.to_string(),
        created_ms: now_ms,
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
    }
}
