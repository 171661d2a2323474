//! The build queue and its workers in SQLite (schema 5).
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which holds the file's write lock: two
//! claimers are serialised by it, so the row a claim reads as queued is still queued when the
//! claim writes it. The store's clock is SQLite's `julianday('now')` (this host's clock: every
//! process of a SQLite store is on one host).

use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqliteConnection};

use super::SqliteStore;
use crate::jobs::millis;
use crate::{
    Attempt, AttemptEnd, Capabilities, Job, JobQueue, JobState, Lease, Needs, NewJob, Reclaimed,
    Row, StoreError, Update, Worker,
};

/// The store's clock in SQL: milliseconds since the Unix epoch.
pub(super) const CLOCK: &str =
    "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// The columns [`SqliteStore::job_from`] reads, in order.
const JOB: &str = "id, owner, needs, payload, state, max_attempts, created_ms";

/// The columns [`worker_from`] reads, in order.
const WORKER: &str = "w.name, w.token_sha256, w.created_ms, w.revoked_ms, w.last_seen_ms, \
     w.capabilities, (SELECT j.id FROM jobs j WHERE j.state = 'running' AND j.worker = w.name \
     LIMIT 1)";

impl SqliteStore {
    async fn clock_in(&self, conn: &mut SqliteConnection) -> Result<i64, StoreError> {
        sqlx::query_scalar(&format!("SELECT {CLOCK}"))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.error(e))
    }

    fn unreadable(&self, what: &str, detail: impl ToString) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            detail: format!("{what} cannot be read: {}", detail.to_string()),
        }
    }

    async fn job_from(
        &self,
        conn: &mut SqliteConnection,
        r: &SqliteRow,
    ) -> Result<Job, StoreError> {
        let id: String = r.get(0);
        let needs: Needs = serde_json::from_str(r.get::<&str, _>(2))
            .map_err(|e| self.unreadable(&format!("the needs of job {id}"), e))?;
        let state_text: String = r.get(4);
        let state = JobState::parse(&state_text).ok_or_else(|| {
            self.unreadable(&format!("job {id}"), format!("state {state_text:?}"))
        })?;
        let attempts = sqlx::query(
            "SELECT number, worker, claimed_ms, ended_ms, end_state FROM job_attempts \
             WHERE job = ? ORDER BY number",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.error(e))?
        .iter()
        .map(|a| {
            let end_text: String = a.get(4);
            Ok(Attempt {
                number: u32::try_from(a.get::<i64, _>(0)).unwrap_or(0),
                worker: a.get(1),
                claimed_ms: a.get(2),
                ended_ms: a.get(3),
                end: AttemptEnd::parse(&end_text).ok_or_else(|| {
                    self.unreadable(&format!("an attempt at {id}"), format!("{end_text:?}"))
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

    async fn job_in(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
    ) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        match row {
            Some(r) => Ok(Some(self.job_from(conn, &r).await?)),
            None => Ok(None),
        }
    }

    /// `Err(LeaseLost)` unless `lease` holds now.
    async fn check_lease(
        &self,
        conn: &mut SqliteConnection,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let now = self.clock_in(conn).await?;
        let holds: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND token = ? \
             AND worker = ? AND expires_ms > ?",
        )
        .bind(&lease.job)
        .bind(&lease.token)
        .bind(&lease.worker)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        match holds {
            Some(_) => Ok(now),
            None => Err(StoreError::LeaseLost {
                job: lease.job.clone(),
                worker: lease.worker.clone(),
            }),
        }
    }

    async fn claim_in(
        &self,
        conn: &mut SqliteConnection,
        worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, StoreError> {
        let now = self.clock_in(conn).await?;
        let queued = sqlx::query("SELECT id, needs FROM jobs WHERE state = 'queued' ORDER BY seq")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        let chosen = queued.iter().find_map(|r| {
            let needs: Needs = serde_json::from_str(r.get::<&str, _>(1)).ok()?;
            needs.met_by(caps).then(|| r.get::<String, _>(0))
        });
        let Some(id) = chosen else {
            return Ok(None);
        };
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM job_attempts WHERE job = ?",
        )
        .bind(&id)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires_ms = now.saturating_add(millis(lease));
        sqlx::query(
            "UPDATE jobs SET state = 'running', worker = ?, token = ?, expires_ms = ? WHERE id = ?",
        )
        .bind(worker)
        .bind(&token)
        .bind(expires_ms)
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        sqlx::query(
            "INSERT INTO job_attempts (job, number, worker, claimed_ms, end_state) \
             VALUES (?, ?, ?, ?, 'running')",
        )
        .bind(&id)
        .bind(number)
        .bind(worker)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        self.seen_in(conn, worker, caps, now).await?;
        let job = self
            .job_in(conn, &id)
            .await?
            .ok_or_else(|| StoreError::NotFound { arn: id.clone() })?;
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
        conn: &mut SqliteConnection,
        name: &str,
        caps: &Capabilities,
        now: i64,
    ) -> Result<(), StoreError> {
        let caps = serde_json::to_string(caps).map_err(|e| self.unreadable("capabilities", e))?;
        sqlx::query("UPDATE workers SET last_seen_ms = ?, capabilities = ? WHERE name = ?")
            .bind(now)
            .bind(caps)
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn requeue_in(&self, conn: &mut SqliteConnection) -> Result<Vec<Reclaimed>, StoreError> {
        let now = self.clock_in(conn).await?;
        let lapsed = sqlx::query(
            "SELECT id, worker FROM jobs WHERE state = 'running' AND expires_ms <= ? ORDER BY seq",
        )
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for r in lapsed {
            let id: String = r.get(0);
            let worker: String = r.get::<Option<String>, _>(1).unwrap_or_default();
            sqlx::query(
                "UPDATE job_attempts SET end_state = 'lost', ended_ms = ? \
                 WHERE job = ? AND end_state = 'running'",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
            sqlx::query(
                "UPDATE jobs SET state = CASE WHEN (SELECT COUNT(*) FROM job_attempts \
                 WHERE job = jobs.id) >= max_attempts THEN 'abandoned' ELSE 'queued' END, \
                 worker = NULL, token = NULL, expires_ms = NULL WHERE id = ?",
            )
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
            if let Some(job) = self.job_in(conn, &id).await? {
                out.push(Reclaimed { job, worker });
            }
        }
        Ok(out)
    }

    async fn add_worker_in(
        &self,
        conn: &mut SqliteConnection,
        name: &str,
        token_sha256: &str,
    ) -> Result<Worker, StoreError> {
        let now = self.clock_in(conn).await?;
        let live: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM workers WHERE name = ? AND revoked_ms IS NULL")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(e))?;
        if live.is_some() {
            return Err(StoreError::WorkerExists {
                name: name.to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO workers (name, token_sha256, created_ms) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256, \
             created_ms = excluded.created_ms, revoked_ms = NULL, last_seen_ms = NULL, \
             capabilities = NULL",
        )
        .bind(name)
        .bind(token_sha256)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        Ok(Worker {
            name: name.to_owned(),
            token_sha256: token_sha256.to_owned(),
            created_ms: now,
            revoked_ms: None,
            last_seen_ms: None,
            capabilities: None,
            current_job: None,
        })
    }

    fn worker_from(&self, r: &SqliteRow) -> Result<Worker, StoreError> {
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

#[async_trait::async_trait]
impl JobQueue for SqliteStore {
    async fn clock_ms(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        self.clock_in(&mut conn).await
    }

    async fn enqueue_job(&self, job: NewJob) -> Result<bool, StoreError> {
        let needs =
            serde_json::to_string(&job.needs).map_err(|e| self.unreadable("the needs", e))?;
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.clock_in(&mut tx.conn).await?;
            let done = sqlx::query(
                "INSERT INTO jobs (id, owner, needs, payload, state, max_attempts, created_ms) \
                 VALUES (?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&job.id)
            .bind(&job.owner)
            .bind(needs)
            .bind(&job.payload)
            .bind(i64::from(job.max_attempts.max(1)))
            .bind(now)
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(done.rows_affected() == 1)
        }
        .await;
        self.end(tx, result).await
    }

    async fn withdraw_job(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let done =
                sqlx::query("UPDATE jobs SET state = 'finished' WHERE id = ? AND state = 'queued'")
                    .bind(id)
                    .execute(&mut *tx.conn)
                    .await
                    .map_err(|e| self.error(e))?;
            Ok(done.rows_affected() == 1)
        }
        .await;
        self.end(tx, result).await
    }

    async fn lapse_job(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.clock_in(&mut tx.conn).await?;
            let done = sqlx::query(
                "UPDATE jobs SET expires_ms = ? WHERE id = ? AND state = 'running' \
                 AND expires_ms > ?",
            )
            .bind(now)
            .bind(id)
            .bind(now)
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(done.rows_affected() == 1)
        }
        .await;
        self.end(tx, result).await
    }

    async fn claim_job(
        &self,
        worker: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<(Job, Lease)>, StoreError> {
        let mut tx = self.begin().await?;
        let result = self.claim_in(&mut tx.conn, worker, caps, lease).await;
        self.end(tx, result).await
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.check_lease(&mut tx.conn, lease).await?;
            let expires_ms = now.saturating_add(millis(duration));
            sqlx::query("UPDATE jobs SET expires_ms = ? WHERE id = ?")
                .bind(expires_ms)
                .bind(&lease.job)
                .execute(&mut *tx.conn)
                .await
                .map_err(|e| self.error(e))?;
            sqlx::query("UPDATE workers SET last_seen_ms = ? WHERE name = ?")
                .bind(now)
                .bind(&lease.worker)
                .execute(&mut *tx.conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(Lease {
                expires_ms,
                ..lease.clone()
            })
        }
        .await;
        self.end(tx, result).await
    }

    async fn update_leased(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            self.check_lease(&mut tx.conn, lease).await?;
            self.update_in(&mut tx.conn, arn, update).await
        }
        .await;
        self.end(tx, result).await
    }

    async fn finish_job(
        &self,
        lease: &Lease,
        arn: &str,
        update: Update,
    ) -> Result<Row, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.check_lease(&mut tx.conn, lease).await?;
            let row = self.update_in(&mut tx.conn, arn, update).await?;
            sqlx::query(
                "UPDATE jobs SET state = 'finished', worker = NULL, token = NULL, \
                 expires_ms = NULL WHERE id = ?",
            )
            .bind(&lease.job)
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            sqlx::query(
                "UPDATE job_attempts SET end_state = 'finished', ended_ms = ? \
                 WHERE job = ? AND number = ?",
            )
            .bind(now)
            .bind(&lease.job)
            .bind(i64::from(lease.attempt))
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(row)
        }
        .await;
        self.end(tx, result).await
    }

    async fn requeue_expired(&self) -> Result<Vec<Reclaimed>, StoreError> {
        let mut tx = self.begin().await?;
        let result = self.requeue_in(&mut tx.conn).await;
        self.end(tx, result).await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        self.job_in(&mut conn, id).await
    }

    async fn jobs(&self, states: &[JobState], limit: u32) -> Result<Vec<Job>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(&format!("SELECT {JOB} FROM jobs ORDER BY seq"))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for r in rows {
            if out.len() >= limit as usize {
                break;
            }
            if wanted.is_empty() || wanted.contains(&r.get::<&str, _>(4)) {
                out.push(self.job_from(&mut conn, &r).await?);
            }
        }
        Ok(out)
    }

    async fn add_worker(&self, name: &str, token_sha256: &str) -> Result<Worker, StoreError> {
        let mut tx = self.begin().await?;
        let result = self.add_worker_in(&mut tx.conn, name, token_sha256).await;
        self.end(tx, result).await
    }

    async fn revoke_worker(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.clock_in(&mut tx.conn).await?;
            let done = sqlx::query(
                "UPDATE workers SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL",
            )
            .bind(now)
            .bind(name)
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(done.rows_affected() == 1)
        }
        .await;
        self.end(tx, result).await
    }

    async fn worker_by_token(&self, token_sha256: &str) -> Result<Option<Worker>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {WORKER} FROM workers w WHERE w.token_sha256 = ? AND w.revoked_ms IS NULL"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.map(|r| self.worker_from(&r)).transpose()
    }

    async fn worker_seen(&self, name: &str, caps: &Capabilities) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            let now = self.clock_in(&mut tx.conn).await?;
            self.seen_in(&mut tx.conn, name, caps, now).await
        }
        .await;
        self.end(tx, result).await
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
}
