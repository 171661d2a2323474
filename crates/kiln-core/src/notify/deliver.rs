//! Delivering the outbox: each due message POSTed to its topic's webhook, signed, and what the
//! receiver answered recorded in the store, so that a restarted kiln goes on where this one
//! stopped.
//!
//! 2xx is delivered; 410 Gone drops every pending message of the topic and marks it GONE;
//! anything else (another status, no connection, no answer within [`ATTEMPT_TIMEOUT`]) is
//! tried again after [`retry_delay`], until [`GIVE_UP_AFTER`] from when the message was
//! written. A delivery whose answer was not recorded (kiln killed in between) is sent again
//! with the same `webhook-id`: at least once, never silently lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_store::{Delivery, Queued};

use super::sign::signature_header;
use super::topic::{TopicState, Topics};
use crate::state::Store;

/// What time it is, for the deliverer: the system clock in the server, a hand-moved one in
/// tests (and the scheduler's clock once there is one).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// How long one delivery may take, connection and answer together.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after it was written a message is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
/// How often the outbox is read for due messages.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most messages read from the outbox at once.
const BATCH: u32 = 100;

/// The first retries' delays, after the 1st, 2nd, ... failed attempt; later ones are 2 to 4
/// hours.
const FIRST_DELAYS: [u64; 6] = [5, 30, 120, 600, 1800, 3600];

/// The delay before the next attempt after `failures` failed ones (1 for the first), with
/// `jitter` in [0, 1): 5 s, 30 s, 2 min, 10 min, 30 min and 1 h, each ±20 %, then 2 to 4 h.
/// Jitter keeps the messages of a receiver that was down for a while from all coming back
/// at one instant.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let index = failures.max(1) as usize - 1;
    match FIRST_DELAYS.get(index) {
        Some(&secs) => Duration::from_secs_f64(secs as f64 * (0.8 + 0.4 * jitter)),
        None => Duration::from_secs_f64(7200.0 + 7200.0 * jitter),
    }
}

/// A number in [0, 1) from the system's random source (0.5 when it fails: no jitter is no
/// harm).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// What one attempt came to, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 2xx.
    Delivered,
    /// 410: the endpoint does not want more.
    Gone,
    /// Anything else, said for people.
    Failed(String),
}

/// Delivers a store's outbox.
#[derive(Clone)]
pub struct Deliverer {
    store: Store,
    topics: Topics,
    clock: Clock,
    http: reqwest::Client,
    /// Who this deliverer is when it holds the deliverer role.
    holder: String,
}

/// The role one deliverer among the servers sharing a store holds.
pub const DELIVERER_ROLE: &str = "deliverer";

/// How long the deliverer role outlives its holder's last renewal: how long the outbox waits
/// when the delivering server dies (an attempt is at most [`ATTEMPT_TIMEOUT`] per message, and
/// the role is renewed between passes).
const ROLE_HOLD: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// Why the deliverer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The HTTP client could not be made (no TLS roots, say).
    #[error("cannot make the webhook client: {0}")]
    Client(String),
}

impl Deliverer {
    /// A deliverer over a store, on the system clock.
    pub fn new(store: Store) -> Result<Deliverer, DeliverError> {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A webhook that moved says so by failing, not by sending its deliveries elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
            .build()
            .map_err(|e| DeliverError::Client(e.without_url().to_string()))?;
        Ok(Deliverer {
            topics: Topics::new(store.clone()),
            store,
            clock: system_clock(),
            http,
            holder: crate::state::holder_name(),
        })
    }

    /// The same deliverer on another clock.
    pub fn with_clock(mut self, clock: Clock) -> Deliverer {
        self.clock = clock;
        self
    }

    /// Delivers every message due now, once each; returns how many were attempted.
    ///
    /// Topics are delivered to side by side, each topic's messages one after the other; a
    /// failure leaves that topic's later messages for the next pass, so a receiver that is down
    /// is not hammered.
    pub async fn deliver_due(&self) -> Result<usize, crate::store::StoreError> {
        let (_keep, never) = tokio::sync::watch::channel(false);
        self.deliver_due_until(&never).await
    }

    /// [`Deliverer::deliver_due`], starting no attempt once `stop` is true.
    async fn deliver_due_until(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<usize, crate::store::StoreError> {
        let now = (self.clock)();
        let due = self
            .store
            .db()
            .due_messages(crate::state::millis(now), BATCH)
            .await?;
        let mut by_topic: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
        for q in due {
            by_topic.entry(q.message.topic.clone()).or_default().push(q);
        }
        let passes = by_topic
            .into_iter()
            .map(|(topic, queue)| self.deliver_topic(topic, queue, stop));
        let counts = futures_util::future::join_all(passes).await;
        let mut attempted = 0;
        for c in counts {
            attempted += c?;
        }
        Ok(attempted)
    }

    async fn deliver_topic(
        &self,
        arn: String,
        queue: Vec<Queued>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<usize, crate::store::StoreError> {
        let db = self.store.db();
        let topic = match self.topics.by_arn(&arn).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(topic = %arn, error = %e, "cannot read the topic; its messages wait");
                return Ok(0);
            }
        };
        let topic = match topic {
            Some(t) if t.state == TopicState::Active => t,
            other => {
                let why = match other {
                    None => "the topic was deleted",
                    Some(_) => "the topic is GONE (its endpoint answered 410)",
                };
                let at = crate::state::millis((self.clock)());
                db.drop_topic_messages(&arn, at, why).await?;
                return Ok(0);
            }
        };
        let mut attempted = 0;
        for q in queue {
            if *stop.borrow() {
                break;
            }
            attempted += 1;
            let outcome = self.attempt(&topic.webhook_url, &topic.secrets, &q).await;
            let now = (self.clock)();
            let at_ms = crate::state::millis(now);
            match outcome {
                Outcome::Delivered => {
                    tracing::info!(topic = %arn, id = %q.message.id, event = %q.message.event, "webhook delivered");
                    db.record_delivery(q.seq, Delivery::Delivered { at_ms })
                        .await?;
                }
                Outcome::Gone => {
                    let reason = "the endpoint answered 410 Gone";
                    tracing::warn!(topic = %arn, "webhook endpoint is gone (410): the topic is now GONE");
                    db.record_delivery(
                        q.seq,
                        Delivery::Dropped {
                            at_ms,
                            reason: reason.into(),
                        },
                    )
                    .await?;
                    db.drop_topic_messages(&arn, at_ms, reason).await?;
                    if let Err(e) = self.topics.mark_gone(&arn, reason).await {
                        tracing::warn!(topic = %arn, error = %e, "cannot mark the topic GONE");
                    }
                    break;
                }
                Outcome::Failed(error) => {
                    let record = self.failed(&q, now, error);
                    db.record_delivery(q.seq, record).await?;
                    break;
                }
            }
        }
        Ok(attempted)
    }

    /// What a failed attempt of `q` at `now` is recorded as: tried again later, or dropped
    /// after [`GIVE_UP_AFTER`].
    fn failed(&self, q: &Queued, now: DateTime<Utc>, error: String) -> Delivery {
        let at_ms = crate::state::millis(now);
        let give_up_ms = q.message.created_ms + GIVE_UP_AFTER.as_millis() as i64;
        let attempts = q.attempts + 1;
        tracing::info!(topic = %q.message.topic, id = %q.message.id, attempts, %error, "webhook delivery failed");
        if at_ms >= give_up_ms {
            return Delivery::Dropped {
                at_ms,
                reason: format!(
                    "gave up after {attempts} attempts over {} days; the last: {error}",
                    GIVE_UP_AFTER.as_secs() / 86400
                ),
            };
        }
        let delay = retry_delay(attempts, jitter()).as_millis() as i64;
        Delivery::Retry {
            at_ms: (at_ms + delay).min(give_up_ms),
            error,
        }
    }

    /// One POST of a message, signed now.
    async fn attempt(&self, url: &str, secrets: &[super::sign::Secret], q: &Queued) -> Outcome {
        let timestamp = (self.clock)().timestamp();
        let body = q.message.body.as_bytes();
        let signature = signature_header(secrets, &q.message.id, timestamp, body);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &q.message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(q.message.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Outcome::Gone,
            Ok(r) => Outcome::Failed(format!("the endpoint answered HTTP {}", r.status())),
            // The URL is the topic's (`kiln topic get` shows it); a query in it may carry a
            // token, so errors say what happened without it.
            Err(e) => {
                let e = e.without_url();
                if e.is_timeout() {
                    Outcome::Failed(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))
                } else if e.is_connect() {
                    Outcome::Failed(format!("cannot connect: {}", source_chain(&e)))
                } else {
                    Outcome::Failed(source_chain(&e))
                }
            }
        }
    }

    /// Delivers until `stop` turns true (or its sender goes), every [`POLL_INTERVAL`]. An
    /// attempt under way when it stops is finished and recorded first, so that a restart sends
    /// nothing twice.
    ///
    /// Only one deliverer among the processes sharing a store delivers at a time (it holds the
    /// store's [`DELIVERER_ROLE`], renewed between passes); another, such as a second
    /// `kiln serve` over the same store, waits, so that no message goes out twice and a server
    /// that dies leaves the outbox to another within a minute.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut told = false;
        loop {
            if *stop.borrow() {
                break;
            }
            match self
                .store
                .leader()
                .lead(DELIVERER_ROLE, &self.holder, ROLE_HOLD)
                .await
            {
                Ok(true) => {
                    told = false;
                    if let Err(e) = self.deliver_due_until(&stop).await {
                        tracing::warn!(error = %e, "cannot read the outbox; trying again");
                    }
                }
                Ok(false) if !told => {
                    tracing::info!(
                        "another kiln process delivers the store's notifications; waiting to take over"
                    );
                    told = true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the store who delivers; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                r = stop.changed() => if r.is_err() { break },
            }
        }
        if let Err(e) = self
            .store
            .leader()
            .step_down(DELIVERER_ROLE, &self.holder)
            .await
        {
            tracing::debug!(error = %e, "could not give the deliverer role up");
        }
    }
}

/// A deliverer running on a task of its own, until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `deliverer` on a task.
    pub fn spawn(deliverer: Deliverer) -> Running {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(deliverer.run(rx));
        Running { stop, task }
    }

    /// Stops it once the attempts under way are recorded.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// An error with its causes (reqwest's display names only the outermost).
fn source_chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_come_every_two_to_four_hours() {
        let mid: Vec<u64> = (1..=8).map(|n| retry_delay(n, 0.5).as_secs()).collect();
        assert_eq!(mid, [5, 30, 120, 600, 1800, 3600, 10800, 10800]);
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(1, 1.0), Duration::from_secs(6));
        assert_eq!(retry_delay(40, 0.0), Duration::from_secs(7200));
        assert_eq!(retry_delay(40, 1.0), Duration::from_secs(14400));
        assert_eq!(retry_delay(0, 0.5), Duration::from_secs(5));
        // Five days hold the first six and about forty more.
        let first: u64 = FIRST_DELAYS.iter().sum();
        assert!(first < 2 * 3600);
    }
}
