//! The store of a `kiln worker --server URL`: every call goes to the server as a
//! [`kiln_store::remote::Call`], authenticated by the worker's token, so that a worker host
//! holds no database password. The server decides what a worker may do (read, write its
//! leased image, publish shared step cache entries, claim and renew); the rest is refused
//! here already, naming the call.

use std::time::Duration;

use kiln_store::remote::{Call, Reply, LONGEST_WAIT, PATH};
use kiln_store::{
    BuildLogs, Capabilities, Created, Delivery, Filter, Job, JobQueue, JobState, Leadership, Lease,
    LogLine, MakeBuild, Message, NewJob, Policy, Queued, Reclaimed, Row, Run, StateStore,
    StoreError, Update, Worker,
};
use serde::de::DeserializeOwned;

/// A store reached through a kiln server.
pub struct RemoteStore {
    server: String,
    token: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for RemoteStore {
    // The token is a secret: never in a debug line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RemoteStore {
    /// The store of the server at `server` (`https://HOST:PORT`), as the worker `token` names.
    pub fn new(server: &str, token: &str) -> Result<RemoteStore, StoreError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(LONGEST_WAIT + Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::Remote {
                server: server.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(RemoteStore {
            server: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client,
        })
    }

    /// The worker's name, as the server knows its token; an error when the server refuses it.
    pub async fn whoami(&self) -> Result<String, StoreError> {
        self.call(Call::Whoami).await
    }

    async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, StoreError> {
        let fail = |detail: String| StoreError::Remote {
            server: self.server.clone(),
            detail,
        };
        let body = serde_json::to_vec(&call).map_err(|e| fail(e.to_string()))?;
        let response = self
            .client
            .post(format!("{}{PATH}", self.server))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| fail(format!("cannot reach it: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| fail(format!("its answer broke off: {e}")))?;
        let reply: Reply = serde_json::from_slice(&bytes).map_err(|_| {
            fail(format!(
                "it answered HTTP {status}, not a worker reply: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        match reply {
            Reply::Ok(v) => serde_json::from_value(v)
                .map_err(|e| fail(format!("its answer cannot be read: {e}"))),
            Reply::Error(e) => Err(e.into_store_error(&self.server)),
        }
    }

    fn not_for_workers<T>(&self, what: &str) -> Result<T, StoreError> {
        Err(StoreError::Remote {
            server: self.server.clone(),
            detail: format!("a worker does not {what}: the server does"),
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl StateStore for RemoteStore {
    async fn create(
        &self,
        row: Row,
        refs: Vec<String>,
        client_token: Option<String>,
    ) -> Result<Created, StoreError> {
        if row.kind != kiln_store::Kind::StepCacheEntry
            || !refs.is_empty()
            || client_token.is_some()
        {
            return self.not_for_workers("create resources");
        }
        let row: Row = self.call(Call::CreateCacheEntry { row }).await?;
        Ok(Created::New(row))
    }

    async fn create_build(
        &self,
        _row: Row,
        _refs: Vec<String>,
        _make: &MakeBuild<'_>,
    ) -> Result<Row, StoreError> {
        self.not_for_workers("number builds")
    }

    async fn get(&self, arn: &str) -> Result<Option<Row>, StoreError> {
        self.call(Call::Get {
            arn: arn.to_owned(),
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Row>, StoreError> {
        self.call(Call::List {
            filter: filter.clone(),
        })
        .await
    }

    async fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        self.call(Call::Count {
            filter: filter.clone(),
        })
        .await
    }

    async fn update(&self, _arn: &str, _update: Update) -> Result<Row, StoreError> {
        self.not_for_workers("change rows outside its lease")
    }

    async fn delete(&self, _arn: &str) -> Result<(), StoreError> {
        self.not_for_workers("delete rows")
    }

    async fn referrers(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.call(Call::Referrers {
            prefix: prefix.to_owned(),
        })
        .await
    }

    async fn request_cancel(&self, _arn: &str) -> Result<bool, StoreError> {
        self.not_for_workers("cancel builds")
    }

    async fn cancel_requested(&self, arn: &str) -> Result<bool, StoreError> {
        self.call(Call::CancelRequested {
            arn: arn.to_owned(),
        })
        .await
    }

    async fn import_with_refs(&self, _rows: Vec<(Row, Vec<String>)>) -> Result<u64, StoreError> {
        self.not_for_workers("import rows")
    }

    async fn enqueue(&self, _messages: Vec<Message>) -> Result<(), StoreError> {
        self.not_for_workers("write notifications outside its build's record")
    }

    async fn due_messages(&self, _now_ms: i64, _limit: u32) -> Result<Vec<Queued>, StoreError> {
        self.not_for_workers("deliver notifications")
    }

    async fn record_delivery(&self, _seq: i64, _outcome: Delivery) -> Result<(), StoreError> {
        self.not_for_workers("deliver notifications")
    }

    async fn drop_topic_messages(
        &self,
        _topic: &str,
        _at_ms: i64,
        _reason: &str,
    ) -> Result<u64, StoreError> {
        self.not_for_workers("deliver notifications")
    }

    async fn messages(&self, _topic: &str, _limit: u32) -> Result<Vec<Queued>, StoreError> {
        self.not_for_workers("read notifications")
    }

    async fn claim_run(&self, _run: &Run) -> Result<bool, StoreError> {
        self.not_for_workers("schedule pipelines")
    }

    async fn finish_run(
        &self,
        _pipeline: &str,
        _at_ms: i64,
        _image: Option<&str>,
        _note: &str,
    ) -> Result<(), StoreError> {
        self.not_for_workers("schedule pipelines")
    }

    async fn runs(&self, _pipeline: &str, _limit: u32) -> Result<Vec<Run>, StoreError> {
        self.not_for_workers("schedule pipelines")
    }

    async fn put_policy(&self, _arn: &str, _policy: Option<Policy>) -> Result<(), StoreError> {
        self.not_for_workers("share resources")
    }

    async fn policy(&self, arn: &str) -> Result<Option<Policy>, StoreError> {
        self.call(Call::Policy {
            arn: arn.to_owned(),
        })
        .await
    }
}

#[async_trait::async_trait]
impl JobQueue for RemoteStore {
    async fn clock_ms(&self) -> Result<i64, StoreError> {
        self.call(Call::ClockMs).await
    }

    async fn enqueue_job(&self, _job: NewJob) -> Result<bool, StoreError> {
        self.not_for_workers("queue builds")
    }

    async fn claim_job(
        &self,
        _worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, StoreError> {
        // The server claims as the token's worker, whatever name the caller gives.
        self.call(Call::Claim {
            caps: caps.clone(),
            lease_ms: ms(lease),
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError> {
        self.call(Call::Renew {
            lease: lease.clone(),
            lease_ms: ms(duration),
        })
        .await
    }

    async fn update_leased(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        self.call(Call::UpdateLeased {
            lease: lease.clone(),
            arn: arn.to_owned(),
            update,
        })
        .await
    }

    async fn finish_job(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        self.call(Call::Finish {
            lease: lease.clone(),
            arn: arn.to_owned(),
            update,
        })
        .await
    }

    async fn withdraw_job(&self, _id: &str) -> Result<bool, StoreError> {
        self.not_for_workers("cancel builds")
    }

    async fn lapse_job(&self, _id: &str) -> Result<bool, StoreError> {
        self.not_for_workers("reap leases")
    }

    async fn requeue_expired(&self) -> Result<Vec<Reclaimed>, StoreError> {
        self.not_for_workers("reap leases")
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.call(Call::Job { id: id.to_owned() }).await
    }

    async fn jobs(&self, _states: &[JobState], _limit: u32) -> Result<Vec<Job>, StoreError> {
        self.not_for_workers("list the queue")
    }

    async fn add_worker(&self, _name: &str, _token_sha256: &str) -> Result<Worker, StoreError> {
        self.not_for_workers("make workers")
    }

    async fn revoke_worker(&self, _name: &str) -> Result<bool, StoreError> {
        self.not_for_workers("revoke workers")
    }

    async fn worker_by_token(&self, _token_sha256: &str) -> Result<Option<Worker>, StoreError> {
        self.not_for_workers("look up tokens")
    }

    async fn worker_seen(&self, _name: &str, caps: &Capabilities) -> Result<(), StoreError> {
        self.call(Call::WorkerSeen { caps: caps.clone() }).await
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.not_for_workers("list workers")
    }

    async fn wait_for_jobs(&self, timeout: Duration) -> Result<(), StoreError> {
        self.call(Call::WaitForJobs {
            timeout_ms: ms(timeout.min(LONGEST_WAIT)),
        })
        .await
    }
}

#[async_trait::async_trait]
impl Leadership for RemoteStore {
    async fn lead(&self, _role: &str, _holder: &str, _hold: Duration) -> Result<bool, StoreError> {
        self.not_for_workers("hold server roles")
    }

    async fn step_down(&self, _role: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl BuildLogs for RemoteStore {
    async fn append_log(&self, lease: &Lease, lines: &[String]) -> Result<u64, StoreError> {
        self.call(Call::AppendLog {
            lease: lease.clone(),
            lines: lines.to_vec(),
        })
        .await
    }

    async fn put_log_file(&self, lease: &Lease, name: &str, text: &str) -> Result<(), StoreError> {
        self.call(Call::PutLogFile {
            lease: lease.clone(),
            name: name.to_owned(),
            text: text.to_owned(),
        })
        .await
    }

    async fn log_lines(
        &self,
        _image: &str,
        _from: u64,
        _limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.not_for_workers("read build logs")
    }

    async fn log_files(&self, _image: &str) -> Result<Vec<String>, StoreError> {
        self.not_for_workers("read build logs")
    }

    async fn log_file(&self, _image: &str, _name: &str) -> Result<Option<String>, StoreError> {
        self.not_for_workers("read build logs")
    }
}
