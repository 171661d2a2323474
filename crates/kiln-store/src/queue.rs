//! What the store keeps besides rows: notifications waiting to go out (an outbox) and the
//! scheduled runs of pipelines already claimed.
//!
//! Both exist so that the service can promise things across restarts: a notification is
//! written in the same transaction as the change it tells of ([`crate::Update::outbox`]), so it
//! is neither lost nor invented; a scheduled run is claimed once per (pipeline, instant), so no
//! clock step, restart or second trigger starts it twice.

use std::fmt;

/// A notification to deliver to one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Unique and stable: the same event told twice has the same id and is stored once. It is
    /// what receivers see as `webhook-id`, to drop a delivery they already have.
    pub id: String,
    /// The topic's ARN.
    pub topic: String,
    /// What happened, such as `image.available`.
    pub event: String,
    /// The JSON delivered.
    pub body: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Where a message is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Not delivered yet; tried again at `next_ms`.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: the receiver said it is gone, or retries ran out.
    Dropped,
}

impl MessageState {
    /// The text stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Dropped => "dropped",
        }
    }

    /// The state a stored text names.
    pub fn parse(s: &str) -> Option<MessageState> {
        [
            MessageState::Pending,
            MessageState::Delivered,
            MessageState::Dropped,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored message with its delivery so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The store's sequence number, in the order messages were written.
    pub seq: i64,
    /// The message.
    pub message: Message,
    /// Where it is.
    pub state: MessageState,
    /// Deliveries tried.
    pub attempts: u32,
    /// When it is due (pending) or when it ended (delivered, dropped), in milliseconds.
    pub next_ms: i64,
    /// Why the last attempt failed, or why it was dropped.
    pub last_error: Option<String>,
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the receiver at this time.
    Delivered {
        /// Milliseconds since the Unix epoch.
        at_ms: i64,
    },
    /// Failed; try again then.
    Retry {
        /// Milliseconds since the Unix epoch.
        at_ms: i64,
        /// What went wrong, for people.
        error: String,
    },
    /// Given up for good.
    Dropped {
        /// Milliseconds since the Unix epoch.
        at_ms: i64,
        /// Why.
        reason: String,
    },
}

/// A scheduled run of a pipeline, claimed by the scheduler that starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The pipeline's ARN.
    pub pipeline: String,
    /// The instant the schedule named, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// When it was claimed.
    pub claimed_ms: i64,
    /// The image it built, when it built one.
    pub image: Option<String>,
    /// What the scheduler decided and why (`started`, `skipped: ...`), for people.
    pub note: String,
}
