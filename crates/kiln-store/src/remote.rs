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

/// A store error as it crosses the wire: the kinds a worker acts on, and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    /// `leaseLost`, `notFound`, `alreadyExists`, `refused` or `failed`.
    pub kind: String,
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
    /// A call the server does not let a worker make.
    pub fn refused(message: impl Into<String>) -> WireError {
        WireError {
            kind: "refused".into(),
            message: message.into(),
            lease: None,
            existing: None,
            arn: None,
        }
    }

    /// How a store error is sent.
    pub fn of(e: &StoreError) -> WireError {
        let mut w = WireError {
            kind: "failed".into(),
            message: e.to_string(),
            lease: None,
            existing: None,
            arn: None,
        };
        match e {
            StoreError::LeaseLost { job, worker } => {
                w.kind = "leaseLost".into();
                w.lease = Some((job.clone(), worker.clone()));
            }
            StoreError::NotFound { arn } => {
                w.kind = "notFound".into();
                w.arn = Some(arn.clone());
            }
            StoreError::AlreadyExists { existing } => {
                w.kind = "alreadyExists".into();
                w.existing = Some(existing.clone());
            }
            _ => {}
        }
        w
    }

    /// The store error a worker sees, `server` naming where it came from.
    pub fn into_store_error(self, server: &str) -> StoreError {
        match (self.kind.as_str(), self.lease, self.existing, self.arn) {
            ("leaseLost", Some((job, worker)), _, _) => StoreError::LeaseLost { job, worker },
            ("notFound", _, _, Some(arn)) => StoreError::NotFound { arn },
            ("alreadyExists", _, Some(existing), _) => StoreError::AlreadyExists { existing },
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
    }
}
