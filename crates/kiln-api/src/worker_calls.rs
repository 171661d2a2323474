//! The worker protocol (`POST /kiln/worker/v1/call`): what a `kiln worker --server URL` may do
//! with the server's store, authenticated by its token (`Authorization: Bearer kwt_...`).
//!
//! A worker reads (resources, records, policies, jobs), claims jobs as itself, renews its own
//! leases, writes the image its lease names and its log and nothing else, and publishes shared
//! step cache entries. It never numbers, cancels, deletes, schedules, delivers or reaps: the server does.
//! A revoked token is refused from its next call on.

use std::time::Duration;

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_store::remote::{Call, Reply, WireError, LONGEST_WAIT};
use kiln_store::StoreError;
use serde_json::Value;

use crate::App;

/// The shortest and longest lease a worker may ask for.
const LEASES: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(600));

fn answer(status: StatusCode, reply: Reply) -> Response {
    (status, axum::Json(reply)).into_response()
}

fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, Reply::Error(WireError::refused(message)))
}

/// Answers one worker call.
pub async fn serve(app: &App, parts: &Parts, body: &[u8]) -> Response {
    if parts.method != axum::http::Method::POST {
        return refused(StatusCode::METHOD_NOT_ALLOWED, "worker calls are POSTs");
    }
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let store = app.records.store();
    let me = match kiln_core::workers::authenticate(store, token).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return answer(
                StatusCode::UNAUTHORIZED,
                Reply::Error(WireError::unauthorized(
                "the worker token is not one this server knows, or it was revoked: make one with `kiln worker token create NAME` on the server",
                )),
            )
        }
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let call: Call = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("not a worker call: {e}")),
    };
    match dispatch(store, &me.name, call).await {
        Ok(Ok(v)) => answer(StatusCode::OK, Reply::Ok(v)),
        Ok(Err(e)) => {
            // A lost lease or a missing row is the worker's to act on, not a server failure.
            let status = match &e {
                StoreError::LeaseLost { .. } => StatusCode::CONFLICT,
                StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::AlreadyExists { .. } => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            answer(status, Reply::Error(WireError::of(&e)))
        }
        Err(message) => {
            tracing::warn!(worker = %me.name, %message, "worker call refused");
            refused(StatusCode::FORBIDDEN, message)
        }
    }
}

fn json<T: serde::Serialize>(r: Result<T, StoreError>) -> Result<Value, StoreError> {
    r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| StoreError::Database {
            path: "worker reply".into(),
            detail: e.to_string(),
        })
    })
}

/// The call's result; `Err` when the worker may not make it.
async fn dispatch(
    store: &kiln_core::state::Store,
    me: &str,
    call: Call,
) -> Result<Result<Value, StoreError>, String> {
    let (db, jobs) = (store.db(), store.jobs());
    let own = |lease: &kiln_store::Lease, arn: Option<&str>| -> Result<(), String> {
        if lease.worker != me {
            return Err(format!(
                "the lease of {} is {}'s, not {me}'s",
                lease.job, lease.worker
            ));
        }
        match arn {
            Some(a) if a != lease.job => Err(format!(
                "a worker writes only the image its lease names ({}), not {a}",
                lease.job
            )),
            _ => Ok(()),
        }
    };
    let lease_of = |ms: u64| Duration::from_millis(ms).clamp(LEASES.0, LEASES.1);
    Ok(match call {
        Call::Whoami => json(Ok(me)),
        Call::Get { arn } => json(db.get(&arn).await),
        Call::List { filter } => json(db.list(&filter).await),
        Call::Count { filter } => json(db.count(&filter).await),
        Call::Referrers { prefix } => json(db.referrers(&prefix).await),
        Call::CancelRequested { arn } => json(db.cancel_requested(&arn).await),
        Call::Policy { arn } => json(db.policy(&arn).await),
        Call::CreateCacheEntry { row } => {
            if row.kind != kiln_store::Kind::StepCacheEntry {
                return Err(format!(
                    "a worker makes shared step cache entries, not {}",
                    row.kind
                ));
            }
            json(db.create(row, Vec::new(), None).await.map(|c| c.into_row()))
        }
        Call::ClockMs => json(jobs.clock_ms().await),
        Call::Claim { caps, lease_ms } => json(jobs.claim_job(me, &caps, lease_of(lease_ms)).await),
        Call::Renew { lease, lease_ms } => {
            own(&lease, None)?;
            json(jobs.renew_lease(&lease, lease_of(lease_ms)).await)
        }
        Call::UpdateLeased { lease, arn, update } => {
            own(&lease, Some(&arn))?;
            json(jobs.update_leased(&lease, &arn, update).await)
        }
        Call::Finish { lease, arn, update } => {
            own(&lease, Some(&arn))?;
            json(jobs.finish_job(&lease, &arn, update).await)
        }
        Call::Job { id } => json(jobs.job(&id).await),
        Call::WorkerSeen { caps } => json(jobs.worker_seen(me, &caps).await),
        Call::WaitForJobs { timeout_ms } => {
            let wait = Duration::from_millis(timeout_ms).min(LONGEST_WAIT);
            json(jobs.wait_for_jobs(wait).await)
        }
        Call::AppendLog { lease, lines } => {
            own(&lease, None)?;
            json(store.logs().append_log(&lease, &lines).await)
        }
        Call::PutLogFile { lease, name, text } => {
            own(&lease, None)?;
            json(store.logs().put_log_file(&lease, &name, &text).await)
        }
    })
}
