//! Build logs in SQLite (schema 7).

use sqlx::{Row as _, SqliteConnection};

use super::SqliteStore;
use crate::logs::{bounded, refused};
use crate::{BuildLogs, Lease, LogLine, StoreError};

impl SqliteStore {
    /// Refuses a write of an attempt that is not `lease`'s worker's any more.
    async fn check_attempt(
        &self,
        conn: &mut SqliteConnection,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM job_attempts WHERE job = ? AND number = ? AND worker = ? \
             AND end_state <> 'lost'",
        )
        .bind(&lease.job)
        .bind(i64::from(lease.attempt))
        .bind(&lease.worker)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        found.map(|_| ()).ok_or_else(|| refused(lease))
    }
}

#[async_trait::async_trait]
impl BuildLogs for SqliteStore {
    async fn append_log(&self, lease: &Lease, lines: &[String]) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            self.check_attempt(&mut tx.conn, lease).await?;
            let mut next: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(line) + 1, 0) FROM build_logs WHERE image = ?",
            )
            .bind(&lease.job)
            .fetch_one(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            for text in lines {
                sqlx::query(
                    "INSERT INTO build_logs (image, line, attempt, text) VALUES (?, ?, ?, ?)",
                )
                .bind(&lease.job)
                .bind(next)
                .bind(i64::from(lease.attempt))
                .bind(text)
                .execute(&mut *tx.conn)
                .await
                .map_err(|e| self.error(e))?;
                next += 1;
            }
            Ok(u64::try_from(next).unwrap_or_default())
        }
        .await;
        self.end(tx, result).await
    }

    async fn put_log_file(&self, lease: &Lease, name: &str, text: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            self.check_attempt(&mut tx.conn, lease).await?;
            sqlx::query(
                "INSERT INTO build_log_files (image, name, attempt, text) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (image, name) DO UPDATE SET attempt = excluded.attempt, \
                 text = excluded.text",
            )
            .bind(&lease.job)
            .bind(name)
            .bind(i64::from(lease.attempt))
            .bind(bounded(text).as_ref())
            .execute(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(())
        }
        .await;
        self.end(tx, result).await
    }

    async fn log_lines(
        &self,
        image: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT line, attempt, text FROM build_logs WHERE image = ? AND line >= ? \
             ORDER BY line LIMIT ?",
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
        sqlx::query_scalar("SELECT name FROM build_log_files WHERE image = ? ORDER BY name")
            .bind(image)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))
    }

    async fn log_file(&self, image: &str, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT text FROM build_log_files WHERE image = ? AND name = ?")
            .bind(image)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))
    }
}
