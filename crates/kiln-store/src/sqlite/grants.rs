//! Resource policies and their grants in SQLite (schema 4).

use std::collections::BTreeSet;

use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::{Policy, StoreError};

impl SqliteStore {
    pub(super) async fn put_policy_in(
        &self,
        conn: &mut SqliteConnection,
        arn: &str,
        policy: Option<&Policy>,
    ) -> Result<(), StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM rows WHERE arn = ?")
            .bind(arn)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                arn: arn.to_owned(),
            });
        }
        self.drop_policy_in(conn, arn).await?;
        let Some(policy) = policy else {
            return Ok(());
        };
        sqlx::query("INSERT INTO policies (arn, document) VALUES (?, ?)")
            .bind(arn)
            .bind(&policy.document)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        let grantees: BTreeSet<&str> = policy.grantees.iter().map(String::as_str).collect();
        for account in grantees {
            sqlx::query("INSERT INTO grants (arn, account) VALUES (?, ?)")
                .bind(arn)
                .bind(account)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Removes a row's policy and grants in the caller's transaction (a replaced policy, a
    /// deleted row).
    pub(super) async fn drop_policy_in(
        &self,
        conn: &mut SqliteConnection,
        arn: &str,
    ) -> Result<(), StoreError> {
        self.delete_arn_in(
            conn,
            arn,
            &[
                "DELETE FROM grants WHERE arn = ?",
                "DELETE FROM policies WHERE arn = ?",
            ],
        )
        .await
    }

    pub(super) async fn put_policy_tx(
        &self,
        arn: &str,
        policy: Option<Policy>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let result = self.put_policy_in(&mut tx.conn, arn, policy.as_ref()).await;
        self.end(tx, result).await
    }

    pub(super) async fn policy_of(&self, arn: &str) -> Result<Option<Policy>, StoreError> {
        let document: Option<String> =
            sqlx::query_scalar("SELECT document FROM policies WHERE arn = ?")
                .bind(arn)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        let Some(document) = document else {
            return Ok(None);
        };
        let grantees: Vec<String> =
            sqlx::query_scalar("SELECT account FROM grants WHERE arn = ? ORDER BY account")
                .bind(arn)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        Ok(Some(Policy { document, grantees }))
    }
}
