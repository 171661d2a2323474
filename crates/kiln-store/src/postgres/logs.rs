//! Build logs in PostgreSQL (schema 4).
//!
//! An append locks its job's row (`FOR UPDATE`), so two writers of one image's log (an attempt
//! taken back and the next one) number their lines one after the other.

use sqlx::postgres::PgConnection;
use sqlx::Row as _;

use super::{Fail, PgStore};
use crate::logs::{bounded, refused};
use crate::{BuildLogs, Lease, LogLine, StoreError};

impl PgStore {
    /// Locks `lease`'s job and refuses a write of an attempt that is not its worker's any more.
    async fn check_attempt(&self, conn: &mut PgConnection, lease: &Lease) -> Result<(), Fail> {
        sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(&lease.job)
            .fetch_optional(&mut *conn)
            .await?;
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM job_attempts WHERE job = $1 AND number = $2 AND worker = $3 \
             AND end_state <> 'lost'",
        )
        .bind(&lease.job)
        .bind(i64::from(lease.attempt))
        .bind(&lease.worker)
        .fetch_optional(&mut *conn)
        .await?;
        found.map(|_| ()).ok_or_else(|| refused(lease).into())
    }
}

#[async_trait::async_trait]
impl BuildLogs for PgStore {
    async fn append_log(&self, lease: &Lease, lines: &[String]) -> Result<u64, StoreError> {
        self.write(|mut tx| async move {
            let result = async {
                self.check_attempt(&mut tx, lease).await?;
                let next: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(line) + 1, 0) FROM build_logs WHERE image = $1",
                )
                .bind(&lease.job)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO build_logs (image, line, attempt, text) \
                     SELECT $1, $2 + u.n - 1, $3, u.t \
                     FROM UNNEST($4::text[]) WITH ORDINALITY AS u(t, n)",
                )
                .bind(&lease.job)
                .bind(next)
                .bind(i64::from(lease.attempt))
                .bind(lines)
                .execute(&mut *tx)
                .await?;
                let count = i64::try_from(lines.len()).unwrap_or(i64::MAX);
                Ok(u64::try_from(next.saturating_add(count)).unwrap_or_default())
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn put_log_file(&self, lease: &Lease, name: &str, text: &str) -> Result<(), StoreError> {
        let text = bounded(text);
        let text = text.as_ref();
        self.write(|mut tx| async move {
            let result = async {
                self.check_attempt(&mut tx, lease).await?;
                sqlx::query(
                    "INSERT INTO build_log_files (image, name, attempt, text) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (image, name) DO UPDATE \
                     SET attempt = excluded.attempt, text = excluded.text",
                )
                .bind(&lease.job)
                .bind(name)
                .bind(i64::from(lease.attempt))
                .bind(text)
                .execute(&mut *tx)
                .await?;
                Ok(())
            }
            .await;
            (tx, result)
        })
        .await
    }

    async fn log_lines(
        &self,
        image: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT line, attempt, text FROM build_logs WHERE image = $1 AND line >= $2 \
             ORDER BY line LIMIT $3",
        )
        .bind(image)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                number: u64::try_from(r.get::<i64, _>(0)).unwrap_or_default(),
                attempt: u32::try_from(r.get::<i64, _>(1)).unwrap_or_default(),
                text: r.get(2),
            })
            .collect())
    }

    async fn log_files(&self, image: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT name FROM build_log_files WHERE image = $1 ORDER BY name")
            .bind(image)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))
    }

    async fn log_file(&self, image: &str, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT text FROM build_log_files WHERE image = $1 AND name = $2")
            .bind(image)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))
    }
}
