//! Roles held by one server at a time in PostgreSQL (schema 3).

use std::time::Duration;

use super::jobs::CLOCK;
use super::PgStore;
use crate::jobs::millis;
use crate::{Leadership, StoreError};

#[async_trait::async_trait]
impl Leadership for PgStore {
    async fn lead(&self, role: &str, holder: &str, hold: Duration) -> Result<bool, StoreError> {
        // One statement: the upsert's row lock orders racing servers, and the loser's WHERE
        // sees the winner's hold (RETURNING then gives no row).
        let got: Option<String> = sqlx::query_scalar(&format!(
            "INSERT INTO leaders (role, holder, expires_ms) VALUES ($1, $2, {CLOCK} + $3) \
             ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, \
             expires_ms = excluded.expires_ms \
             WHERE leaders.holder = excluded.holder OR leaders.expires_ms <= {CLOCK} \
             RETURNING holder"
        ))
        .bind(role)
        .bind(holder)
        .bind(millis(hold))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(got.as_deref() == Some(holder))
    }

    async fn step_down(&self, role: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leaders WHERE role = $1 AND holder = $2")
            .bind(role)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}
