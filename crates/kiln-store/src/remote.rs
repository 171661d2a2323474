//! What a `kiln worker --server URL` asks a server for, as JSON: the store calls a build makes
//! (reads, writes under its lease, the shared step cache's entries) and the queue's calls
//! (claim, renew, finish, wait). The server answers each with the result or a [`WireError`],
//! and decides what a worker may do; this module only says how the calls are written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Capabilities, Filter, Lease, Row, StoreError, Update};

/// The path a server answers worker calls on.
pub const PATH: &str = "/kiln/worker/v1/call";

/// The longest a server holds a [`Call::WaitForJobs`] open.
pub const LONGEST_WAIT: Duration = Duration::from_secs(20);

/// One call of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "call",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Call {
    /// Who the token belongs to: the worker's name.
    Whoami,
    /// [`crate::StateStore::get`].
    Get {
        /// The row's ARN.
        arn: String,
    },
    /// [`crate::StateStore::list`].
    List {
        /// Which rows.
        filter: Filter,
    },
    /// [`crate::StateStore::count`].
    Count {
        /// Which rows.
        filter: Filter,
    },
    /// [`crate::StateStore::referrers`].
    Referrers {
        /// The reference prefix.
        prefix: String,
    },
    /// [`crate::StateStore::cancel_requested`].
    CancelRequested {
        /// The image's ARN.
        arn: String,
    },
    /// [`crate::StateStore::policy`].
    Policy {
        /// The resource's ARN.
        arn: String,
    },
    /// [`crate::StateStore::create`] of a shared step cache entry (the only row a worker
    /// makes).
    CreateCacheEntry {
        /// The entry.
        row: Row,
    },
    /// [`crate::JobQueue::clock_ms`].
    ClockMs,
    /// [`crate::JobQueue::claim_job`], as the token's worker.
    Claim {
        /// What the worker can run.
        caps: Capabilities,
        /// The lease asked for, in milliseconds.
        lease_ms: u64,
    },
    /// [`crate::JobQueue::renew_lease`].
    Renew {
        /// The lease.
        lease: Lease,
        /// From now, in milliseconds.
        lease_ms: u64,
    },
    /// [`crate::JobQueue::update_leased`] of the lease's own image.
    UpdateLeased {
        /// The lease.
        lease: Lease,
        /// The image's ARN.
        arn: String,
        /// The change.
        update: Update,
    },
    /// [`crate::JobQueue::finish_job`] with the lease's own image's final change.
    Finish {
        /// The lease.
        lease: Lease,
        /// The image's ARN.
        arn: String,
        /// The change.
        update: Update,
    },
    /// [`crate::JobQueue::job`].
    Job {
        /// The job's id.
        id: String,
    },
    /// [`crate::JobQueue::worker_seen`], as the token's worker.
    WorkerSeen {
        /// What it can run.
        caps: Capabilities,
    },
    /// [`crate::JobQueue::wait_for_jobs`], at most [`LONGEST_WAIT`].
    WaitForJobs {
        /// How long, in milliseconds.
        timeout_ms: u64,
    },
    /// [`crate::BuildLogs::append_log`] to the lease's own image.
    AppendLog {
        /// The lease.
        lease: Lease,
        /// The lines.
        lines: Vec<String>,
    },
    /// [`crate::BuildLogs::put_log_file`] of the lease's own image.
    PutLogFile {
        /// The lease.
        lease: Lease,
        /// The file's name in the build's log folder.
        name: String,
        /// Its text.
        text: String,
    },
}

/// How a server answers a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// The call's result.
    Ok(serde_json::Value),
    /// Why it failed or was refused.
    Error(WireError),
}

/// What kind of failure a [`WireError`] is: the ones a worker acts on, and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WireErrorKind {
    /// The lease is not the worker's any more.
    LeaseLost,
    /// No such row.
    NotFound,
    /// The row exists already.
    AlreadyExists,
    /// The token is unknown or revoked: the worker stops.
    Unauthorized,
    /// A call the server does not let a worker make.
    Refused,
    /// Anything else (the store failed).
    Failed,
}

/// A store error as it crosses the wire: its kind, and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    /// What kind of failure it is.
    pub kind: WireErrorKind,
    /// What happened, for people.
    pub message: String,
    /// The job and worker of a lost lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<(String, String)>,
    /// The row that exists already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<Box<Row>>,
    /// The ARN that was not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
}

impl WireError {
    fn new(kind: WireErrorKind, message: impl Into<String>) -> WireError {
        WireError {
            kind,
            message: message.into(),
            lease: None,
            existing: None,
            arn: None,
        }
    }

    /// A call the server does not let a worker make.
    pub fn refused(message: impl Into<String>) -> WireError {
        WireError::new(WireErrorKind::Refused, message)
    }

    /// A token the server does not take.
    pub fn unauthorized(message: impl Into<String>) -> WireError {
        WireError::new(WireErrorKind::Unauthorized, message)
    }

    /// How a store error is sent.
    pub fn of(e: &StoreError) -> WireError {
        let mut w = WireError::new(WireErrorKind::Failed, e.to_string());
        match e {
            StoreError::LeaseLost { job, worker } => {
                w.kind = WireErrorKind::LeaseLost;
                w.lease = Some((job.clone(), worker.clone()));
            }
            StoreError::NotFound { arn } => {
                w.kind = WireErrorKind::NotFound;
                w.arn = Some(arn.clone());
            }
            StoreError::AlreadyExists { existing } => {
                w.kind = WireErrorKind::AlreadyExists;
                w.existing = Some(existing.clone());
            }
            _ => {}
        }
        w
    }

    /// The store error a worker sees, `server` naming where it came from.
    pub fn into_store_error(self, server: &str) -> StoreError {
        use WireErrorKind as K;
        match (self.kind, self.lease, self.existing, self.arn) {
            (K::LeaseLost, Some((job, worker)), _, _) => StoreError::LeaseLost { job, worker },
            (K::NotFound, _, _, Some(arn)) => StoreError::NotFound { arn },
            (K::AlreadyExists, _, Some(existing), _) => StoreError::AlreadyExists { existing },
            (K::Unauthorized, ..) => StoreError::Unauthorized {
                server: server.to_owned(),
                detail: self.message,
            },
            _ => StoreError::Remote {
                server: server.to_owned(),
                detail: self.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_errors_cross_the_wire_unchanged() {
        let call = Call::WaitForJobs { timeout_ms: 500 };
        let text = serde_json::to_string(&call).unwrap();
        assert_eq!(text, r#"{"call":"waitForJobs","timeoutMs":500}"#);
        assert!(matches!(
            serde_json::from_str::<Call>(&text).unwrap(),
            Call::WaitForJobs { timeout_ms: 500 }
        ));
        let lost = StoreError::LeaseLost {
            job: "j".into(),
            worker: "w".into(),
        };
        let back = WireError::of(&lost).into_store_error("http://s");
        assert!(
            matches!(back, StoreError::LeaseLost { job, worker } if job == "j" && worker == "w")
        );
        let other = WireError::refused("no").into_store_error("http://s");
        assert!(matches!(other, StoreError::Remote { server, .. } if server == "http://s"));
        let text = serde_json::to_string(&WireError::unauthorized("revoked")).unwrap();
        assert_eq!(text, r#"{"kind":"unauthorized","message":"revoked"}"#);
        let back: WireError = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            back.into_store_error("http://s"),
            StoreError::Unauthorized { .. }
        ));
    }
}
