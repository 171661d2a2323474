//! Resource policies and their grants in PostgreSQL.

use std::collections::BTreeSet;

use sqlx::postgres::PgConnection;

use super::{Fail, PgStore};
use crate::{Policy, StoreError};

impl PgStore {
    /// Replaces a row's policy in the caller's transaction, holding the row's lock so that two
    /// replacements (or a replacement and a delete) of one row go one after the other.
    pub(super) async fn put_policy_in(
        &self,
        conn: &mut PgConnection,
        arn: &str,
        policy: Option<&Policy>,
    ) -> Result<(), Fail> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM rows WHERE arn = $1 FOR UPDATE")
            .bind(arn)
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                arn: arn.to_owned(),
            }
            .into());
        }
        self.drop_policy_in(conn, arn).await?;
        let Some(policy) = policy else {
            return Ok(());
        };
        sqlx::query("INSERT INTO policies (arn, document) VALUES ($1, $2)")
            .bind(arn)
            .bind(&policy.document)
            .execute(&mut *conn)
            .await?;
        let grantees: Vec<&str> = policy
            .grantees
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        sqlx::query("INSERT INTO grants (arn, account) SELECT $1, unnest($2::text[])")
            .bind(arn)
            .bind(&grantees[..])
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Removes a row's policy and grants in the caller's transaction (a replaced policy, a
    /// deleted row).
    pub(super) async fn drop_policy_in(
        &self,
        conn: &mut PgConnection,
        arn: &str,
    ) -> Result<(), Fail> {
        for sql in [
            "DELETE FROM grants WHERE arn = $1",
            "DELETE FROM policies WHERE arn = $1",
        ] {
            sqlx::query(sql).bind(arn).execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The policy and its grants, read in one statement (one snapshot), so that a policy
    /// replaced meanwhile is never read half old, half new.
    pub(super) async fn policy_of(&self, arn: &str) -> Result<Option<Policy>, StoreError> {
        let found: Option<(String, Vec<String>)> = sqlx::query_as(
            "SELECT p.document, COALESCE(array_agg(g.account ORDER BY g.account) \
             FILTER (WHERE g.account IS NOT NULL), '{}') \
             FROM policies p LEFT JOIN grants g ON g.arn = p.arn \
             WHERE p.arn = $1 GROUP BY p.document",
        )
        .bind(arn)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(found.map(|(document, grantees)| Policy { document, grantees }))
    }
}
