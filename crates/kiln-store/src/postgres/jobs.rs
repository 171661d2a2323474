//! The build queue and its workers in PostgreSQL (schema 2).
//!
//! Claimers run side by side (READ COMMITTED), so a claim locks the one job it takes: it reads
//! a page of queued jobs oldest first, keeps those whose needs this worker meets
//! ([`Needs::met_by`], in Rust), and locks the oldest of them that no other claimer holds
//! (`FOR UPDATE SKIP LOCKED`), moving on to the next page by `seq` when there is none, so that
//! a worker never waits behind jobs it cannot run and never hides from other workers the jobs
//! it does not take. Every leased write locks its job's row (`FOR UPDATE`) and checks the
//! lease in the transaction of the write; the reaper locks the lapsed jobs it takes back
//! (`FOR UPDATE SKIP LOCKED`), so that two servers reaping at once take each job back once.
//!
//! The store's clock is the database server's (`clock_timestamp()`, the time of the statement
//! rather than of the transaction's start): every kiln server and worker measures leases by
//! it, whatever its own host's clock says.
//!
//! A job queued (or taken back) is told on the channel `kiln_jobs` by a `NOTIFY` in its
//! transaction, so it is heard once it is committed; [`JobQueue::wait_for_jobs`] listens
//! there on a connection of its own.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row as _;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::{Fail, PgStore, ACQUIRE_TIMEOUT};
use crate::jobs::millis;
use crate::{
    Attempt, AttemptEnd, Capabilities, Job, JobQueue, JobState, Lease, Needs, NewJob, Reclaimed,
    Row, StoreError, Update, Worker,
};

/// The store's clock in SQL: the server's time now, in milliseconds since the Unix epoch.
pub(super) const CLOCK: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The channel on which queued jobs are told.
const CHANNEL: &str = "kiln_jobs";

/// Queued jobs a claim reads at a time.
const PAGE: i64 = 100;

/// The columns [`PgStore::job_from`] reads, in order, from `jobs j`: the job's attempts come
/// in the same statement (one snapshot), as JSON.
const JOB: &str = "j.id, j.owner, j.needs, j.payload, j.state, j.max_attempts, j.created_ms, \
     COALESCE((SELECT json_agg(json_build_array(a.number, a.worker, a.claimed_ms, a.ended_ms, \
     a.end_state) ORDER BY a.number)::text FROM job_attempts a WHERE a.job = j.id), '[]')";

/// The columns [`PgStore::worker_from`] reads, in order.
const WORKER: &str = "w.name, w.token_sha256, w.created_ms, w.revoked_ms, w.last_seen_ms, \
     w.capabilities, (SELECT j.id FROM jobs j WHERE j.state = 'running' AND j.worker = w.name \
     ORDER BY j.seq LIMIT 1)";

/// How long a wait lasts at most when no notification can be had (the listener cannot be
/// made): as long as the polling default's.
const POLL: Duration = Duration::from_secs(1);

/// The `LISTEN` of one store handle (and its clones): made at the first wait and kept, so that
/// what is queued between two waits is heard at the second.
pub(super) struct Listening {
    /// One connection, the listener's own: it is held for as long as the listener is kept.
    pool: PgPool,
    /// The listener, while there is one. The wait holding the lock receives.
    listener: Mutex<Option<PgListener>>,
    /// Counts what the receiving wait heard, so that the waits queued on the lock return with
    /// it rather than wait for the next notification.
    heard: watch::Sender<u64>,
}

impl Listening {
    pub(super) fn new(options: PgConnectOptions) -> Listening {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        Listening {
            pool,
            listener: Mutex::new(None),
            heard: watch::channel(0).0,
        }
    }

    /// A listener on [`CHANNEL`] that reports a lost connection rather than reconnect at once
    /// (it reconnects, and listens again, when next asked to receive).
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Stops listening: a wait under way ends (its pool's close ends its receive), and the
    /// connection is closed.
    pub(super) async fn close(&self) {
        let closing = self.pool.close();
        drop(self.listener.lock().await.take());
        closing.await;
    }

    fn tell_waiters(&self) {
        self.heard.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits for a notification on [`CHANNEL`] until `deadline`.
    async fn wait(&self, deadline: Instant, server: &str) {
        let mut heard = self.heard.subscribe();
        // Another wait of this handle may be receiving: what it hears ends this one too.
        let mut slot = tokio::select! {
            biased;
            _ = heard.changed() => return,
            () = tokio::time::sleep_until(deadline) => return,
            slot = self.listener.lock() => slot,
        };
        if heard.has_changed().unwrap_or(false) {
            return;
        }
        let received = tokio::time::timeout_at(deadline, async {
            if slot.is_none() {
                *slot = Some(self.listen().await?);
            }
            match slot.as_mut() {
                Some(listener) => listener.try_recv().await,
                None => Ok(None),
            }
        })
        .await;
        match received {
            // Nothing was queued.
            Err(_elapsed) => {}
            Ok(Ok(Some(_notification))) => self.tell_waiters(),
            Ok(Ok(None)) => {
                // What was told while the connection was down is lost: the callers look at
                // the queue now, and the next wait connects again.
                tracing::info!(server, "the connection listening for queued jobs was lost");
                self.tell_waiters();
            }
            Ok(Err(e)) => {
                // No listener now: this wait lasts as a poll's would (so that a caller that
                // loops never spins), and the next one makes a new listener.
                *slot = None;
                drop(slot);
                tracing::warn!(server, error = %e, "cannot listen for queued jobs; polling");
                tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
            }
        }
    }
}

/// A job's attempts as [`JOB`] reads them: number, worker, claimed, ended, how it ended.
type Attempts = Vec<(i64, String, i64, Option<i64>, String)>;

/// Who holds a job as its row says: state, worker, token, lease expiry.
type Holder = (String, Option<String>, Option<String>, Option<i64>);

impl PgStore {
    async fn clock_in(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&format!("SELECT {CLOCK}"))
            .fetch_one(&mut *conn)
            .await
    }

    fn unreadable(&self, what: &str, detail: impl ToString) -> StoreError {
        self.server_error(format!("{what} cannot be read: {}", detail.to_string()))
    }

    fn job_from(&self, r: &PgRow) -> Result<Job, StoreError> {
        let id: String = r.get(0);
        let needs: Needs = serde_json::from_str(r.get::<&str, _>(2))
            .map_err(|e| self.unreadable(&format!("the needs of job {id}"), e))?;
        let state_text: &str = r.get(4);
        let state = JobState::parse(state_text).ok_or_else(|| {
            self.unreadable(&format!("job {id}"), format!("state {state_text:?}"))
        })?;
        let attempts: Attempts = serde_json::from_str(r.get::<&str, _>(7))
            .map_err(|e| self.unreadable(&format!("the attempts at {id}"), e))?;
        let attempts = attempts
            .into_iter()
            .map(|(number, worker, claimed_ms, ended_ms, end)| {
                Ok(Attempt {
                    number: u32::try_from(number).unwrap_or(0),
                    worker,
                    claimed_ms,
                    ended_ms,
                    end: AttemptEnd::parse(&end).ok_or_else(|| {
                        self.unreadable(&format!("an attempt at {id}"), format!("{end:?}"))
                    })?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Job {
            owner: r.get(1),
            needs,
            payload: r.get(3),
            state,
            max_attempts: u32::try_from(r.get::<i64, _>(5)).unwrap_or(1),
            attempts,
            created_ms: r.get(6),
            id,
        })
    }

    async fn job_in(&self, conn: &mut PgConnection, id: &str) -> Result<Option<Job>, Fail> {
        let row = sqlx::query(&format!("SELECT {JOB} FROM jobs j WHERE j.id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(|r| self.job_from(&r)).transpose()?)
    }

    /// Locks the lease's job row and checks that the lease holds now: the time it was
    /// checked, or `LeaseLost`. The lock is kept until the transaction ends, so that the
    /// reaper cannot take the job back between the check and the write.
    async fn check_lease(&self, conn: &mut PgConnection, lease: &Lease) -> Result<i64, Fail> {
        let found: Option<Holder> = sqlx::query_as(
            "SELECT state, worker, token, expires_ms FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(&lease.job)
        .fetch_optional(&mut *conn)
        .await?;
        // The clock after the lock: a wait for it counts against the lease.
        let now = self.clock_in(conn).await?;
        match found {
            Some((state, Some(worker), Some(token), Some(expires_ms)))
                if state == JobState::Running.as_str()
                    && worker == lease.worker
                    && token == lease.token
                    && expires_ms > now =>
            {
                Ok(now)
            }
            _ => Err(StoreError::LeaseLost {
                job: lease.job.clone(),
                worker: lease.worker.clone(),
            }
            .into()),
        }
    }

    /// Locks the oldest queued job that `caps` can run and no other claimer holds; its id.
    async fn lock_claimable(
        &self,
        conn: &mut PgConnection,
        caps: &Capabilities,
    ) -> Result<Option<String>, Fail> {
        let mut after = i64::MIN;
        loop {
            let page: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, needs FROM jobs WHERE state = 'queued' AND seq > $1 \
                 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *conn)
            .await?;
            let Some(&(last, _)) = page.last() else {
                return Ok(None);
            };
            let runnable: Vec<i64> = page
                .iter()
                .filter(|(_, needs)| {
                    // A job whose needs cannot be read is one no worker can run.
                    serde_json::from_str::<Needs>(needs).is_ok_and(|n| n.met_by(caps))
                })
                .map(|(seq, _)| *seq)
                .collect();
            if !runnable.is_empty() {
                // Only the one job taken is locked; the state is checked again under the lock
                // (a claim committed since the page was read).
                let locked: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM jobs WHERE seq = ANY($1) AND state = 'queued' \
                     ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .bind(&runnable[..])
                .fetch_optional(&mut *conn)
                .await?;
                if locked.is_some() {
                    return Ok(locked);
                }
            }
            if i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
                return Ok(None);
            }
            after = last;
        }
    }

    async fn claim_in(
        &self,
        conn: &mut PgConnection,
        worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, Fail> {
        let Some(id) = self.lock_claimable(conn, caps).await? else {
            return Ok(None);
        };
        let now = self.clock_in(conn).await?;
        // The job's lock keeps every other claim of it out: the number is free.
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM job_attempts WHERE job = $1",
        )
        .bind(&id)
        .fetch_one(&mut *conn)
        .await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires_ms = now.saturating_add(millis(lease));
        sqlx::query(
            "UPDATE jobs SET state = 'running', worker = $1, token = $2, expires_ms = $3 \
             WHERE id = $4",
        )
        .bind(worker)
        .bind(&token)
        .bind(expires_ms)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO job_attempts (job, number, worker, claimed_ms, end_state) \
             VALUES ($1, $2, $3, $4, 'running')",
        )
        .bind(&id)
        .bind(number)
        .bind(worker)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        self.seen_in(conn, worker, caps, now).await?;
        let job = self
            .job_in(conn, &id)
            .await?
            .ok_or_else(|| Fail::Raced(format!("the job {id} was removed while claimed")))?;
        let lease = Lease {
            job: id,
            attempt: u32::try_from(number).unwrap_or(u32::MAX),
            worker: worker.to_owned(),
            token,
            expires_ms,
        };
        Ok(Some((job, lease)))
    }

    async fn seen_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        caps: &Capabilities,
        now: i64,
    ) -> Result<(), Fail> {
        let caps = serde_json::to_string(caps).map_err(|e| self.unreadable("capabilities", e))?;
        sqlx::query("UPDATE workers SET last_seen_ms = $1, capabilities = $2 WHERE name = $3")
            .bind(now)
            .bind(caps)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn requeue_in(&self, conn: &mut PgConnection) -> Result<Vec<Reclaimed>, Fail> {
        let now = self.clock_in(conn).await?;
        // A job another reaper (or its worker's last write) holds is left to it.
        let lapsed: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT id, worker FROM jobs WHERE state = 'running' AND expires_ms <= $1 \
             ORDER BY seq FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        if lapsed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = lapsed.iter().map(|(id, _)| id.as_str()).collect();
        sqlx::query(
            "UPDATE job_attempts SET end_state = 'lost', ended_ms = $1 \
             WHERE job = ANY($2) AND end_state = 'running'",
        )
        .bind(now)
        .bind(&ids[..])
        .execute(&mut *conn)
        .await?;
        let states: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET state = CASE WHEN (SELECT COUNT(*) FROM job_attempts \
             WHERE job = jobs.id) >= max_attempts THEN 'abandoned' ELSE 'queued' END, \
             worker = NULL, token = NULL, expires_ms = NULL WHERE id = ANY($1) RETURNING state",
        )
        .bind(&ids[..])
        .fetch_all(&mut *conn)
        .await?;
        if states.iter().any(|s| s == JobState::Queued.as_str()) {
            notify(conn).await?;
        }
        let mut workers: HashMap<String, String> = lapsed
            .iter()
            .map(|(id, worker)| (id.clone(), worker.clone().unwrap_or_default()))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT {JOB} FROM jobs j WHERE j.id = ANY($1) ORDER BY j.seq"
        ))
        .bind(&ids[..])
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let job = self.job_from(r)?;
                let worker = workers.remove(&job.id).unwrap_or_default();
                Ok(Reclaimed { job, worker })
            })
            .collect()
    }

    fn worker_from(&self, r: &PgRow) -> Result<Worker, StoreError> {
        let name: String = r.get(0);
        let capabilities = match r.get::<Option<&str>, _>(5) {
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| self.unreadable(&format!("worker {name}"), e))?,
            ),
            None => None,
        };
        Ok(Worker {
            token_sha256: r.get(1),
            created_ms: r.get(2),
            revoked_ms: r.get(3),
            last_seen_ms: r.get(4),
            capabilities,
            current_job: r.get(6),
            name,
        })
    }
}

/// Tells the listeners that a job was queued, when the caller's transaction commits.
async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl JobQueue for PgStore {
    async fn clock_ms(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        self.clock_in(&mut conn).await.map_err(|e| self.error(e))
    }

    async fn enqueue_job(&self, job: NewJob) -> Result<bool, StoreError> {
        let needs =
            serde_json::to_string(&job.needs).map_err(|e| self.unreadable("the needs", e))?;
        let (job, needs) = (&job, &needs);
        self.write(|mut tx| async move {
            let result = async {
                // A job being queued by another transaction meanwhile is waited for, then
                // left as it is.
                let done = sqlx::query(&format!(
                    "INSERT INTO jobs (id, owner, needs, payload, state, max_attempts, \
                     created_ms) VALUES ($1, $2, $3, $4, 'queued', $5, {CLOCK}) \
                     ON CONFLICT (id) DO NOTHING"
                ))
                .bind(&job.id)
                .bind(&job.owner)
                .bind(needs)
                .bind(&job.payload)
                .bind(i64::from(job.max_attempts.max(1)))
                .execute(&mut *tx)
                .await?;
                let queued = done.rows_affected() == 1;
                if queued {
                    notify(&mut tx).await?;
                }
                Ok(queued)
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn claim_job(
        &self,
        worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, StoreError> {
        self.write(|mut tx| async move {
            let result = self.claim_in(&mut tx, worker, caps, lease).await;
            (tx, result)
        })
        .await
    }

    async fn withdraw_job(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|mut tx| async move {
            // A claim holding the row is waited for; the state is then read again, and a
            // claimed job is left to its worker.
            let result = sqlx::query(
                "UPDATE jobs SET state = 'finished' WHERE id = $1 AND state = 'queued'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(Fail::from);
            (tx, result)
        })
        .await
    }

    async fn lapse_job(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|mut tx| async move {
            let result = sqlx::query(&format!(
                "UPDATE jobs SET expires_ms = {CLOCK} WHERE id = $1 AND state = 'running' \
                 AND expires_ms > {CLOCK}"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(Fail::from);
            (tx, result)
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError> {
        self.write(|mut tx| async move {
            let result = async {
                let now = self.check_lease(&mut tx, lease).await?;
                let expires_ms = now.saturating_add(millis(duration));
                sqlx::query("UPDATE jobs SET expires_ms = $1 WHERE id = $2")
                    .bind(expires_ms)
                    .bind(&lease.job)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE workers SET last_seen_ms = $1 WHERE name = $2")
                    .bind(now)
                    .bind(&lease.worker)
                    .execute(&mut *tx)
                    .await?;
                Ok(Lease {
                    expires_ms,
                    ..lease.clone()
                })
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn update_leased(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        let update = &update;
        self.write(|mut tx| async move {
            let result = async {
                self.check_lease(&mut tx, lease).await?;
                self.update_in(&mut tx, arn, update.clone()).await
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn finish_job(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        let update = &update;
        self.write(|mut tx| async move {
            let result = async {
                let now = self.check_lease(&mut tx, lease).await?;
                let row = self.update_in(&mut tx, arn, update.clone()).await?;
                sqlx::query(
                    "UPDATE jobs SET state = 'finished', worker = NULL, token = NULL, \
                     expires_ms = NULL WHERE id = $1",
                )
                .bind(&lease.job)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE job_attempts SET end_state = 'finished', ended_ms = $1 \
                     WHERE job = $2 AND number = $3",
                )
                .bind(now)
                .bind(&lease.job)
                .bind(i64::from(lease.attempt))
                .execute(&mut *tx)
                .await?;
                Ok(row)
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn requeue_expired(&self) -> Result<Vec<Reclaimed>, StoreError> {
        self.write(|mut tx| async move {
            let result = self.requeue_in(&mut tx).await;
            (tx, result)
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.conn().await?;
        self.job_in(&mut conn, id)
            .await
            .map_err(|fail| self.settle(fail))
    }

    async fn jobs(&self, states: &[JobState], limit: u32) -> Result<Vec<Job>, StoreError> {
        let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        sqlx::query(&format!(
            "SELECT {JOB} FROM jobs j WHERE cardinality($1::text[]) = 0 OR j.state = ANY($1) \
             ORDER BY j.seq LIMIT $2"
        ))
        .bind(&wanted[..])
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .iter()
        .map(|r| self.job_from(r))
        .collect()
    }

    async fn add_worker(&self, name: &str, token_sha256: &str) -> Result<Worker, StoreError> {
        // One statement: a live worker of the name (stored meanwhile too: the insert waits for
        // it) is left alone, a revoked one is replaced.
        let added: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO workers (name, token_sha256, created_ms) VALUES ($1, $2, {CLOCK}) \
             ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256, \
             created_ms = excluded.created_ms, revoked_ms = NULL, last_seen_ms = NULL, \
             capabilities = NULL WHERE workers.revoked_ms IS NOT NULL RETURNING created_ms"
        ))
        .bind(name)
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let Some(created_ms) = added else {
            return Err(StoreError::WorkerExists {
                name: name.to_owned(),
            });
        };
        Ok(Worker {
            name: name.to_owned(),
            token_sha256: token_sha256.to_owned(),
            created_ms,
            revoked_ms: None,
            last_seen_ms: None,
            capabilities: None,
            current_job: None,
        })
    }

    async fn revoke_worker(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE workers SET revoked_ms = {CLOCK} WHERE name = $1 AND revoked_ms IS NULL"
        ))
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn worker_by_token(&self, token_sha256: &str) -> Result<Option<Worker>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {WORKER} FROM workers w WHERE w.token_sha256 = $1 AND w.revoked_ms IS NULL"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.map(|r| self.worker_from(&r)).transpose()
    }

    async fn worker_seen(&self, name: &str, caps: &Capabilities) -> Result<(), StoreError> {
        let caps = serde_json::to_string(caps).map_err(|e| self.unreadable("capabilities", e))?;
        sqlx::query(&format!(
            "UPDATE workers SET last_seen_ms = {CLOCK}, capabilities = $1 WHERE name = $2"
        ))
        .bind(caps)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        sqlx::query(&format!("SELECT {WORKER} FROM workers w ORDER BY w.name"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?
            .iter()
            .map(|r| self.worker_from(r))
            .collect()
    }

    /// Returns when a job was queued or taken back (a `NOTIFY` on `kiln_jobs`, heard by this
    /// handle's listener, which the first wait makes and later waits keep), or when `timeout`
    /// passed. When the listener's connection is lost, the wait returns at once (what was told
    /// meanwhile is lost: the caller looks at the queue) and the next one connects again;
    /// while no listener can be made, a wait lasts at most a second, as the polling default's
    /// does. Never an error: the caller's next look at the queue says what is wrong.
    async fn wait_for_jobs(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        self.listening.wait(deadline, &self.server).await;
        Ok(())
    }
}
