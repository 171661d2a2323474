//! Rows, their references and client tokens in PostgreSQL: the writes, each in the caller's
//! transaction, and the reads on the pool.

use std::collections::BTreeSet;

use sqlx::postgres::PgConnection;
use sqlx::{Postgres, QueryBuilder};

use super::{Fail, PgStore, BUILD_LOCK_CLASS};
use crate::sqlite::{account_of, already_exists, decode, now_ms, successor, Columns};
use crate::{Created, Filter, Kind, MakeBuild, Order, Row, StoreError, Update};

/// A row's columns but its body, in the order of [`Columns`].
const COLUMNS: &str = "arn, kind, name, major, minor, patch, build, owner, state, pipeline, \
     digest, created_ms, updated_ms, summary";

const INSERT_ROW: &str = "INSERT INTO rows (arn, kind, name, name_lower, major, minor, patch, \
     build, owner, state, pipeline, digest, created_ms, updated_ms, summary, body, account) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// [`Order`] in SQL: the same order as SQLite's (and Rust's) on the `COLLATE "C"` columns,
/// rows without a version or build after those with one.
fn order_by(order: Order) -> &'static str {
    match order {
        Order::Version => {
            " ORDER BY name_lower, major DESC NULLS LAST, minor DESC NULLS LAST, \
             patch DESC NULLS LAST, build DESC NULLS LAST, created_ms DESC, arn"
        }
        Order::Newest => " ORDER BY created_ms DESC, arn",
        Order::Oldest => " ORDER BY created_ms, arn",
    }
}

/// Runs an `INSERT_ROW`-shaped statement with a row's columns bound in its order; how many
/// rows it stored.
async fn insert(conn: &mut PgConnection, sql: &str, row: &Row) -> Result<u64, sqlx::Error> {
    let [major, minor, patch] = match row.version {
        Some(v) => v.map(|n| Some(i64::from(n))),
        None => [None; 3],
    };
    let done = sqlx::query(sql)
        .bind(&row.arn)
        .bind(row.kind.as_str())
        .bind(&row.name)
        .bind(row.name.to_lowercase())
        .bind(major)
        .bind(minor)
        .bind(patch)
        .bind(row.build.map(i64::from))
        .bind(&row.owner)
        .bind(&row.state)
        .bind(&row.pipeline)
        .bind(&row.digest)
        .bind(row.created_ms)
        .bind(row.updated_ms)
        .bind(&row.summary)
        .bind(&row.body)
        .bind(account_of(&row.arn))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// ` AND account = .. AND kind = .. AND name_lower = .. AND major .. minor .. patch` for one
/// version, `IS NULL` for rows without one.
fn push_version_key<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    account: &'a str,
    kind: Kind,
    name_lower: &'a str,
    version: Option<[u32; 3]>,
) {
    qb.push(" WHERE account = ").push_bind(account);
    qb.push(" AND kind = ").push_bind(kind.as_str());
    qb.push(" AND name_lower = ").push_bind(name_lower);
    for (column, value) in ["major", "minor", "patch"]
        .into_iter()
        .zip(version.map_or([None; 3], |v| v.map(Some)))
    {
        match value {
            Some(n) => qb.push(format!(" AND {column} = ")).push_bind(i64::from(n)),
            None => qb.push(format!(" AND {column} IS NULL")),
        };
    }
}

/// Takes the transaction's advisory lock on the (account, kind, name, version) of `row`, which
/// every writer that decides on its build numbers holds.
async fn lock_version(conn: &mut PgConnection, row: &Row) -> Result<(), sqlx::Error> {
    let key = format!(
        "{}\n{}\n{}\n{:?}",
        account_of(&row.arn),
        row.kind.as_str(),
        row.name.to_lowercase(),
        row.version
    );
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(BUILD_LOCK_CLASS)
        .bind(&key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn push_filter<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    filter: &'a Filter,
    name_lower: Option<&'a str>,
) {
    qb.push(" WHERE TRUE");
    if let Some(kind) = filter.kind {
        qb.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(name) = name_lower {
        qb.push(" AND name_lower = ").push_bind(name);
    }
    for (column, value) in ["major", "minor", "patch"].into_iter().zip(filter.version) {
        if let Some(n) = value {
            qb.push(format!(" AND {column} = ")).push_bind(i64::from(n));
        }
    }
    if let Some(build) = filter.build {
        qb.push(" AND build = ").push_bind(i64::from(build));
    }
    if let Some(owner) = &filter.owner {
        qb.push(" AND owner = ").push_bind(owner.as_str());
    }
    if !filter.states.is_empty() {
        qb.push(" AND state = ANY(")
            .push_bind(&filter.states[..])
            .push(")");
    }
    if let Some(pipeline) = &filter.pipeline {
        qb.push(" AND pipeline = ").push_bind(pipeline.as_str());
    }
    // A range rather than LIKE, as in `referrers`: the primary key serves it, no escaping.
    if let Some(prefix) = &filter.arn_prefix {
        qb.push(" AND arn >= ").push_bind(prefix.as_str());
        if let Some(upper) = successor(prefix) {
            qb.push(" AND arn < ").push_bind(upper);
        }
    }
    if let Some(account) = &filter.shared_with {
        qb.push(" AND arn IN (SELECT arn FROM grants WHERE account = ")
            .push_bind(account.as_str())
            .push(")");
    }
}

impl PgStore {
    pub(super) fn decode(&self, columns: Columns) -> Result<Row, StoreError> {
        decode(columns).map_err(|detail| self.server_error(detail))
    }

    pub(super) async fn get_in(
        &self,
        conn: &mut PgConnection,
        arn: &str,
    ) -> Result<Option<Row>, Fail> {
        let found: Option<Columns> =
            sqlx::query_as(&format!("SELECT {COLUMNS}, body FROM rows WHERE arn = $1"))
                .bind(arn)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(found.map(|columns| self.decode(columns)).transpose()?)
    }

    /// The row holding (account, kind, name, version, build), which the unique index keeps to
    /// one.
    async fn get_build_in(
        &self,
        conn: &mut PgConnection,
        row: &Row,
        build: u32,
    ) -> Result<Option<Row>, Fail> {
        let name_lower = row.name.to_lowercase();
        let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS}, body FROM rows"));
        push_version_key(
            &mut qb,
            account_of(&row.arn),
            row.kind,
            &name_lower,
            row.version,
        );
        qb.push(" AND build = ").push_bind(i64::from(build));
        let found: Option<Columns> = qb.build_query_as().fetch_optional(&mut *conn).await?;
        Ok(found.map(|columns| self.decode(columns)).transpose()?)
    }

    async fn insert_refs(
        &self,
        conn: &mut PgConnection,
        from: &str,
        refs: &[String],
    ) -> Result<(), Fail> {
        let refs: Vec<&str> = refs
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO refs (from_arn, to_ref) SELECT $1, unnest($2::text[])")
            .bind(from)
            .bind(&refs[..])
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Inserts `row`, turning a clash on the ARN or on the build key into `AlreadyExists`.
    /// A clash with a row stored meanwhile is a unique violation, and the try is run again.
    async fn insert_new(&self, conn: &mut PgConnection, row: &Row) -> Result<(), Fail> {
        if let Some(existing) = self.get_in(conn, &row.arn).await? {
            return Err(already_exists(existing).into());
        }
        if let Some(build) = row.build {
            if let Some(existing) = self.get_build_in(conn, row, build).await? {
                return Err(already_exists(existing).into());
            }
        }
        insert(conn, INSERT_ROW, row).await?;
        Ok(())
    }

    pub(super) async fn create_in(
        &self,
        conn: &mut PgConnection,
        mut row: Row,
        refs: &[String],
        token: Option<&str>,
    ) -> Result<Created, Fail> {
        if let Some(token) = token {
            let seen: Option<(String, String)> = sqlx::query_as(
                "SELECT arn, digest FROM client_tokens WHERE kind = $1 AND token = $2",
            )
            .bind(row.kind.as_str())
            .bind(token)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((arn, digest)) = seen {
                // The token goes with its row (a foreign key), so its row is there.
                return match self.get_in(conn, &arn).await? {
                    Some(existing) if digest == row.digest => Ok(Created::Existing(existing)),
                    Some(_) => Err(StoreError::TokenMismatch {
                        token: token.to_owned(),
                        arn,
                    }
                    .into()),
                    None => Err(Fail::Raced(format!(
                        "the row {arn} of client token {token} was deleted meanwhile"
                    ))),
                };
            }
        }
        row.updated_ms = now_ms();
        if row.build.is_some() {
            // The unique index cannot see a clash of builds without a version (NULLs are
            // distinct in it, as in SQLite's): the lock makes the look before the insert
            // decide, as SQLite's one write lock does.
            lock_version(conn, &row).await?;
        }
        self.insert_new(conn, &row).await?;
        self.insert_refs(conn, &row.arn, refs).await?;
        if let Some(token) = token {
            sqlx::query(
                "INSERT INTO client_tokens (kind, token, arn, digest) VALUES ($1, $2, $3, $4)",
            )
            .bind(row.kind.as_str())
            .bind(token)
            .bind(&row.arn)
            .bind(&row.digest)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Created::New(row))
    }

    /// One try of `create_build`, holding the advisory lock of the row's version so that two
    /// callers take its numbers one after the other.
    pub(super) async fn build_in(
        &self,
        conn: &mut PgConnection,
        mut row: Row,
        refs: &[String],
        make: &MakeBuild<'_>,
    ) -> Result<Row, Fail> {
        let name_lower = row.name.to_lowercase();
        let account = account_of(&row.arn);
        lock_version(conn, &row).await?;
        let mut qb = QueryBuilder::<Postgres>::new("SELECT MAX(build) FROM rows");
        push_version_key(&mut qb, account, row.kind, &name_lower, row.version);
        let max: Option<i64> = qb.build_query_scalar().fetch_one(&mut *conn).await?;
        let build = max
            .unwrap_or(0)
            .checked_add(1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                self.server_error(format!(
                    "{} {} has no build number left",
                    row.kind, row.name
                ))
            })?;
        let (arn, summary, body) = make(build)?;
        row.arn = arn;
        row.summary = summary;
        row.body = body;
        row.build = Some(build);
        row.updated_ms = now_ms();
        if let Some(existing) = self.get_in(conn, &row.arn).await? {
            return Err(already_exists(existing).into());
        }
        // A `create` or `import` of this very build meanwhile is a unique violation: the try
        // is run again and takes the number after it.
        insert(conn, INSERT_ROW, &row).await?;
        self.insert_refs(conn, &row.arn, refs).await?;
        Ok(row)
    }

    pub(super) async fn update_in(
        &self,
        conn: &mut PgConnection,
        arn: &str,
        update: Update,
    ) -> Result<Row, Fail> {
        let found: Option<Columns> = sqlx::query_as(&format!(
            "SELECT {COLUMNS}, body FROM rows WHERE arn = $1 FOR UPDATE"
        ))
        .bind(arn)
        .fetch_optional(&mut *conn)
        .await?;
        let mut row = match found {
            Some(columns) => self.decode(columns)?,
            None => {
                return Err(StoreError::NotFound {
                    arn: arn.to_owned(),
                }
                .into())
            }
        };
        if let Some(state) = update.state {
            row.state = Some(state);
        }
        if let Some(summary) = update.summary {
            row.summary = summary;
        }
        if let Some(body) = update.body {
            row.body = body;
        }
        if let Some(digest) = update.digest {
            row.digest = digest;
        }
        row.updated_ms = now_ms().max(row.updated_ms);
        sqlx::query(
            "UPDATE rows SET state = $1, summary = $2, body = $3, digest = $4, updated_ms = $5 \
             WHERE arn = $6",
        )
        .bind(&row.state)
        .bind(&row.summary)
        .bind(&row.body)
        .bind(&row.digest)
        .bind(row.updated_ms)
        .bind(arn)
        .execute(&mut *conn)
        .await?;
        if let Some(refs) = update.refs {
            sqlx::query("DELETE FROM refs WHERE from_arn = $1")
                .bind(arn)
                .execute(&mut *conn)
                .await?;
            self.insert_refs(conn, arn, &refs).await?;
        }
        self.insert_messages(conn, &update.outbox).await?;
        Ok(row)
    }

    pub(super) async fn delete_in(&self, conn: &mut PgConnection, arn: &str) -> Result<(), Fail> {
        // The row's lock keeps an update or policy of it from going on while it goes.
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
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT refs.from_arn FROM refs JOIN rows ON rows.arn = refs.from_arn \
             WHERE refs.to_ref = $1 AND refs.from_arn <> $1 ORDER BY refs.from_arn",
        )
        .bind(arn)
        .fetch_all(&mut *conn)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                arn: arn.to_owned(),
                users,
            }
            .into());
        }
        self.drop_policy_in(conn, arn).await?;
        for sql in [
            "DELETE FROM refs WHERE from_arn = $1",
            "DELETE FROM client_tokens WHERE arn = $1",
            "DELETE FROM build_logs WHERE image = $1",
            "DELETE FROM build_log_files WHERE image = $1",
            "DELETE FROM rows WHERE arn = $1",
        ] {
            sqlx::query(sql).bind(arn).execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Stores the rows whose ARN is free; a row whose build key is taken (by a stored row or
    /// an earlier one of the batch) is `AlreadyExists`, and the caller rolls back the batch.
    pub(super) async fn import_in(
        &self,
        conn: &mut PgConnection,
        rows: &[(Row, Vec<String>)],
    ) -> Result<u64, Fail> {
        // Without a conflict target, DO NOTHING covers the ARN and the build key alike, so a
        // clash never aborts the transaction and is told apart below.
        let sql = format!("{INSERT_ROW} ON CONFLICT DO NOTHING");
        let mut stored = 0;
        for (row, refs) in rows {
            if insert(conn, &sql, row).await? == 0 {
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM rows WHERE arn = $1")
                    .bind(&row.arn)
                    .fetch_optional(&mut *conn)
                    .await?;
                if exists.is_some() {
                    continue;
                }
                if let Some(build) = row.build {
                    if let Some(existing) = self.get_build_in(conn, row, build).await? {
                        return Err(already_exists(existing).into());
                    }
                }
                // The clashing row was deleted between the insert and the look: try again.
                return Err(Fail::Raced(format!(
                    "{} clashed with a row that was deleted meanwhile",
                    row.arn
                )));
            }
            self.insert_refs(conn, &row.arn, refs).await?;
            stored += 1;
        }
        Ok(stored)
    }

    pub(super) async fn list_rows(&self, filter: &Filter) -> Result<Vec<Row>, StoreError> {
        let mut qb =
            QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS}, ''::text AS body FROM rows"));
        let name_lower = filter.name.as_deref().map(str::to_lowercase);
        push_filter(&mut qb, filter, name_lower.as_deref());
        qb.push(order_by(filter.order));
        if let Some(limit) = filter.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        if filter.offset > 0 {
            qb.push(" OFFSET ").push_bind(i64::from(filter.offset));
        }
        let columns: Vec<Columns> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        columns
            .into_iter()
            .map(|columns| self.decode(columns))
            .collect()
    }

    pub(super) async fn count_rows(&self, filter: &Filter) -> Result<u64, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM rows");
        let name_lower = filter.name.as_deref().map(str::to_lowercase);
        push_filter(&mut qb, filter, name_lower.as_deref());
        let n: i64 = qb
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(super) async fn referrers_of(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // A range rather than LIKE: it uses the index on to_ref and needs no escaping.
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT from_arn, to_ref FROM refs WHERE to_ref >= ");
        qb.push_bind(prefix);
        let upper = successor(prefix);
        if let Some(upper) = &upper {
            qb.push(" AND to_ref < ").push_bind(upper.as_str());
        }
        qb.push(" ORDER BY to_ref, from_arn");
        let found: Vec<(String, String)> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(found
            .into_iter()
            .filter(|(_, to)| to.starts_with(prefix))
            .collect())
    }
}
