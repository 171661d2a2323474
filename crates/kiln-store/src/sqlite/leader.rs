//! Roles held by one process at a time in SQLite (schema 6).

use std::time::Duration;

use super::jobs::CLOCK;
use super::SqliteStore;
use crate::jobs::millis;
use crate::{Leadership, StoreError};

#[async_trait::async_trait]
impl Leadership for SqliteStore {
    async fn lead(&self, role: &str, holder: &str, hold: Duration) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            // Taken when free or lapsed, renewed when ours; RETURNING gives no row otherwise.
            let got: Option<String> = sqlx::query_scalar(&format!(
                "INSERT INTO leaders (role, holder, expires_ms) VALUES (?, ?, {CLOCK} + ?) \
                 ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE leaders.holder = excluded.holder OR leaders.expires_ms <= {CLOCK} \
                 RETURNING holder"
            ))
            .bind(role)
            .bind(holder)
            .bind(millis(hold))
            .fetch_optional(&mut *tx.conn)
            .await
            .map_err(|e| self.error(e))?;
            Ok(got.as_deref() == Some(holder))
        }
        .await;
        self.end(tx, result).await
    }

    async fn step_down(&self, role: &str, holder: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let result = async {
            sqlx::query("DELETE FROM leaders WHERE role = ? AND holder = ?")
                .bind(role)
                .bind(holder)
                .execute(&mut *tx.conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        }
        .await;
        self.end(tx, result).await
    }
}
