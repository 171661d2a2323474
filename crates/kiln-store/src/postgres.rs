//! The PostgreSQL backend: one database on a server, shared by every kiln server and worker
//! that names it.
//!
//! Where SQLite takes the file's one write lock for every write transaction, PostgreSQL lets
//! writers run side by side (READ COMMITTED), so each write takes the lock its decision needs:
//! the row it changes (`FOR UPDATE`), or an advisory lock on the (account, kind, name, version)
//! whose builds it numbers or checks. A transaction that loses a race anyway (a unique key taken
//! meanwhile, a deadlock, a serialization failure) is rolled back and run again from the start,
//! a few times, so that it decides on what the winner stored. Locks wait at most 30 s
//! (`lock_timeout`), as SQLite's busy timeout does.
//!
//! The server is named in errors and logs as `host:port/dbname`, never by its URL: that may
//! hold a password.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::sqlite::now_ms;
use crate::{
    Created, Delivery, Filter, MakeBuild, Message, Policy, Queued, Row, Run, StateStore,
    StoreError, Update,
};

mod grants;
mod jobs;
mod leader;
mod logs;
mod queue;
mod rows;

/// Schema scripts: `MIGRATIONS[n]` takes the database from version n to n + 1. Every text
/// column that is compared by range or sorted is `COLLATE "C"` (byte order, as SQLite and Rust
/// compare strings), whatever the database's default collation.
const MIGRATIONS: &[&str] = &[
    // 1: what SQLite's schema 4 holds: rows, their references and client tokens, the outbox,
    // claimed scheduled runs, resource policies and their grants.
    r#"
CREATE TABLE kiln_schema (
    version BIGINT PRIMARY KEY,
    applied_ms BIGINT NOT NULL
);

CREATE TABLE rows (
    arn TEXT COLLATE "C" PRIMARY KEY,
    account TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    name TEXT NOT NULL,
    name_lower TEXT COLLATE "C" NOT NULL,
    major BIGINT,
    minor BIGINT,
    patch BIGINT,
    build BIGINT,
    owner TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C",
    pipeline TEXT COLLATE "C",
    digest TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    summary TEXT NOT NULL,
    body TEXT NOT NULL
);

-- Two builds of one version can never get the same number, whatever the callers do.
CREATE UNIQUE INDEX rows_build ON rows (account, kind, name_lower, major, minor, patch, build)
    WHERE build IS NOT NULL;
CREATE INDEX rows_version ON rows (kind, name_lower, major DESC NULLS LAST,
    minor DESC NULLS LAST, patch DESC NULLS LAST, build DESC NULLS LAST, created_ms DESC);
CREATE INDEX rows_created ON rows (kind, created_ms);
CREATE INDEX rows_newest ON rows (created_ms);
CREATE INDEX rows_state ON rows (state, created_ms);
CREATE INDEX rows_pipeline ON rows (pipeline, created_ms);

CREATE TABLE refs (
    from_arn TEXT COLLATE "C" NOT NULL REFERENCES rows (arn) ON DELETE CASCADE,
    to_ref TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (from_arn, to_ref)
);
CREATE INDEX refs_to ON refs (to_ref);

CREATE TABLE client_tokens (
    kind TEXT COLLATE "C" NOT NULL,
    token TEXT COLLATE "C" NOT NULL,
    arn TEXT COLLATE "C" NOT NULL REFERENCES rows (arn) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (kind, token)
);
CREATE INDEX client_tokens_arn ON client_tokens (arn);

CREATE TABLE outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id TEXT COLLATE "C" NOT NULL UNIQUE,
    topic TEXT COLLATE "C" NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    attempts BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_ms);
CREATE INDEX outbox_topic ON outbox (topic, seq);

CREATE TABLE schedule_runs (
    pipeline TEXT COLLATE "C" NOT NULL,
    at_ms BIGINT NOT NULL,
    claimed_ms BIGINT NOT NULL,
    image TEXT,
    note TEXT NOT NULL,
    PRIMARY KEY (pipeline, at_ms)
);

CREATE TABLE policies (
    arn TEXT COLLATE "C" PRIMARY KEY,
    document TEXT NOT NULL
);

CREATE TABLE grants (
    arn TEXT COLLATE "C" NOT NULL,
    account TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (arn, account)
);
CREATE INDEX grants_account ON grants (account, arn);
"#,
    // 2: what SQLite's schema 5 adds: the build queue (an image to build is a job, claimed by
    // workers under leases), each worker's attempts, and the workers with the digests of their
    // tokens. Times are milliseconds of the database's clock; `seq` is the order of claims.
    r#"
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    owner TEXT COLLATE "C" NOT NULL,
    needs TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    max_attempts BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    worker TEXT COLLATE "C",
    token TEXT COLLATE "C",
    expires_ms BIGINT
);
-- A claim pages through the queued jobs by seq; lists by state go by seq too.
CREATE INDEX jobs_state ON jobs (state, seq);
-- The reaper's lapsed leases, and the job a worker holds.
CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE state = 'running';
CREATE INDEX jobs_worker ON jobs (worker) WHERE state = 'running';

CREATE TABLE job_attempts (
    job TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    claimed_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    end_state TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (job, number)
);

CREATE TABLE workers (
    name TEXT COLLATE "C" PRIMARY KEY,
    token_sha256 TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    last_seen_ms BIGINT,
    capabilities TEXT
);
"#,
    // 3: what SQLite's schema 6 adds: roles (the scheduler, the notification deliverer) held by
    // one server at a time.
    r#"
CREATE TABLE leaders (
    role TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT COLLATE "C" NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#,
    // 4: what SQLite's schema 7 adds: queued builds' logs, numbered across attempts, and their
    // other log files.
    r#"
CREATE TABLE build_logs (
    image TEXT COLLATE "C" NOT NULL,
    line BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (image, line)
);

CREATE TABLE build_log_files (
    image TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (image, name)
);
"#,
];

/// The advisory lock (one 64-bit key, "kiln" and 1) held by the transaction that migrates, so
/// that servers starting at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_0000_0001;

/// The first key of the advisory locks on a version's build numbers (two 32-bit keys, a key
/// space apart from [`MIGRATION_LOCK`]'s); the second is the hash of the version's key.
const BUILD_LOCK_CLASS: i32 = 0x6b69_6c6e;

/// How long a statement waits for a lock another transaction holds (`Busy` after that).
const LOCK_TIMEOUT: &str = "30s";

/// How long a call waits for a connection of the pool, while the server is restarting, say.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections per process: reads and writes of unrelated rows run in parallel.
const MAX_CONNECTIONS: u32 = 8;

/// Tries of a write transaction that lost a race (a unique key, a deadlock, a serialization
/// failure) before the conflict is reported.
const WRITE_ATTEMPTS: u32 = 8;

/// The PostgreSQL backend.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `host:port/dbname`, for messages.
    server: String,
    /// The `LISTEN` of [`JobQueue::wait_for_jobs`](crate::JobQueue::wait_for_jobs), on a
    /// connection of its own, shared by the handle's clones.
    listening: Arc<jobs::Listening>,
}

/// Not the pool's connection options: they hold the password.
impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Why one try of a write transaction failed.
#[derive(Debug)]
enum Fail {
    /// The store's answer: final.
    Store(StoreError),
    /// What the database said: tried again when it is a lost race.
    Sql(sqlx::Error),
    /// A race lost in a way the database does not report as an error (a token taken
    /// meanwhile): tried again, then reported with this text.
    Raced(String),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Fail {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// A write transaction on a connection of the pool: rolled back when dropped uncommitted.
type Tx = Transaction<'static, Postgres>;

impl PgStore {
    /// Newest schema this build knows.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    /// Connects to the database `url` names (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`),
    /// migrating it to [`PgStore::SCHEMA_VERSION`] first (once, however many kiln servers
    /// start at once).
    ///
    /// An unreachable server is reported at once, with the server's own reason; a database of
    /// a newer kiln ([`StoreError::TooNew`]) or of another program ([`StoreError::NotAStore`])
    /// is left exactly as it is.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, MIGRATIONS).await
    }

    async fn connect_with(
        url: &str,
        migrations: &'static [&'static str],
    ) -> Result<PgStore, StoreError> {
        let options = parse_url(url)?;
        let server = label(&options);
        let options = options
            .application_name("kiln")
            .options([("lock_timeout", LOCK_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let listening = Arc::new(jobs::Listening::new(options.clone()));
        let store = PgStore {
            pool,
            server,
            listening,
        };
        // One connection of its own, so that a server that is down is said at once rather
        // than after the pool's patient retries.
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| store.error(e))?;
        let migrated = store.migrate(&mut conn, migrations).await;
        if let Err(e) = conn.close().await {
            tracing::debug!(server = %store.server, error = %e, "closing the migration connection");
        }
        migrated?;
        Ok(store)
    }

    /// The server as `host:port/dbname`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Closes every connection of this handle (and of its clones), waiting until they are
    /// closed. The store cannot be used after this.
    pub async fn close(&self) {
        self.listening.close().await;
        self.pool.close().await;
    }

    /// Applies the missing `migrations` in one transaction holding [`MIGRATION_LOCK`]: a
    /// server that waited for the lock finds the schema migrated and applies nothing.
    async fn migrate(
        &self,
        conn: &mut PgConnection,
        migrations: &'static [&'static str],
    ) -> Result<(), StoreError> {
        let newest = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
        let mut tx = conn.begin().await.map_err(|e| self.error(e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        let current = self.schema_version(&mut tx).await?;
        if current > newest {
            return Err(StoreError::TooNew {
                path: PathBuf::from(&self.server),
                found: current,
                supported: newest,
            });
        }
        let first = usize::try_from(current).unwrap_or(usize::MAX);
        for (n, script) in migrations.iter().enumerate().skip(first) {
            let target = i64::try_from(n + 1).unwrap_or(i64::MAX);
            // A query without arguments goes as a simple query: several statements at once.
            sqlx::Executor::execute(&mut *tx, *script)
                .await
                .map_err(|e| self.error(e))?;
            sqlx::query("INSERT INTO kiln_schema (version, applied_ms) VALUES ($1, $2)")
                .bind(target)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            tracing::info!(server = %self.server, version = target, "migrated the store");
        }
        tx.commit().await.map_err(|e| self.error(e))
    }

    /// The version in `kiln_schema`: 0 for a database without tables, `NotAStore` for one
    /// with tables but no (readable) `kiln_schema`.
    async fn schema_version(&self, conn: &mut PgConnection) -> Result<i64, StoreError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY tablename",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.error(e))?;
        if !tables.iter().any(|t| t == "kiln_schema") {
            if tables.is_empty() {
                return Ok(0);
            }
            let some = tables
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(self.not_a_store(format!(
                "it has {} tables ({some}{}) but no kiln_schema table",
                tables.len(),
                if tables.len() > 3 { ", ..." } else { "" }
            )));
        }
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM kiln_schema")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| match self.error(e) {
                StoreError::Server { detail, .. } => {
                    self.not_a_store(format!("its kiln_schema table is unreadable: {detail}"))
                }
                other => other,
            })?;
        version.ok_or_else(|| self.not_a_store("its kiln_schema table is empty".to_owned()))
    }

    fn not_a_store(&self, detail: String) -> StoreError {
        StoreError::NotAStore {
            server: self.server.clone(),
            detail,
        }
    }

    fn error(&self, e: sqlx::Error) -> StoreError {
        map_error(&self.server, e)
    }

    /// What a failed try comes to for the caller.
    fn settle(&self, fail: Fail) -> StoreError {
        match fail {
            Fail::Store(e) => e,
            Fail::Sql(e) => self.error(e),
            Fail::Raced(detail) => self.server_error(detail),
        }
    }

    fn server_error(&self, detail: String) -> StoreError {
        StoreError::Server {
            server: self.server.clone(),
            detail,
        }
    }

    /// Runs `body` in a write transaction, committing what it returns Ok and rolling back
    /// otherwise, and runs it again (on a new transaction) when it lost a race. `body` gets
    /// the transaction and gives it back with its result.
    async fn write<T, F, Fut>(&self, mut body: F) -> Result<T, StoreError>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = (Tx, Result<T, Fail>)>,
    {
        let mut attempt = 1;
        loop {
            let tx = self.pool.begin().await.map_err(|e| self.error(e))?;
            let (tx, result) = body(tx).await;
            let outcome = match result {
                Ok(value) => tx.commit().await.map(|()| value).map_err(Fail::Sql),
                Err(fail) => {
                    if let Err(e) = tx.rollback().await {
                        tracing::debug!(server = %self.server, error = %e, "rollback failed");
                    }
                    Err(fail)
                }
            };
            let fail = match outcome {
                Ok(value) => return Ok(value),
                Err(fail) if !lost_race(&fail) => return Err(self.settle(fail)),
                Err(fail) if attempt >= WRITE_ATTEMPTS => {
                    let last = self.settle(fail);
                    return Err(self.server_error(format!(
                        "other writers kept changing the same rows ({WRITE_ATTEMPTS} tries; \
                         the last: {last})"
                    )));
                }
                Err(fail) => fail,
            };
            tracing::debug!(server = %self.server, attempt, ?fail, "retrying a write that lost a race");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// A connection of the pool for reads.
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(|e| self.error(e))
    }
}

/// The connect options of a `postgres://` or `postgresql://` URL; what is wrong with it
/// otherwise, without the URL itself.
fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(StoreError::BadUrl {
            detail: "it does not start with postgres://".to_owned(),
        });
    }
    PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        detail: match e {
            // The URL parser's and sqlx's own words name the part, never quote the URL.
            sqlx::Error::Configuration(reason) => reason.to_string(),
            other => other.to_string(),
        },
    })
}

/// `host:port/dbname` of connect options (PostgreSQL's default database is the user's name).
fn label(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None if options.get_host().contains(':') && !options.get_host().starts_with('[') => {
            format!("[{}]", options.get_host())
        }
        None => options.get_host().to_owned(),
    };
    let database = options
        .get_database()
        .unwrap_or_else(|| options.get_username());
    format!("{host}:{}/{database}", options.get_port())
}

/// Whether a failed try lost a race that another try may win.
fn lost_race(fail: &Fail) -> bool {
    match fail {
        Fail::Sql(e) => matches!(
            sql_state(e).as_deref(),
            // unique_violation, serialization_failure, deadlock_detected
            Some("23505" | "40001" | "40P01")
        ),
        Fail::Raced(_) => true,
        Fail::Store(_) => false,
    }
}

/// The wait before try `attempt + 1`: growing, with some jitter so that two losers do not
/// meet again.
fn backoff(attempt: u32) -> Duration {
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) % 5_000);
    Duration::from_micros(u64::from(attempt) * 5_000 + jitter)
}

/// The SQLSTATE of a database error.
fn sql_state(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// Turns a sqlx error into what happened to the store, by the server's SQLSTATE.
fn map_error(server: &str, e: sqlx::Error) -> StoreError {
    let unreachable = |detail: String| StoreError::Unreachable {
        server: server.to_owned(),
        detail,
    };
    let state = sql_state(&e);
    match e {
        sqlx::Error::Database(db) => {
            let detail = format!(
                "{} (SQLSTATE {})",
                db.message(),
                state.as_deref().unwrap_or("?")
            );
            match state.as_deref().unwrap_or("") {
                // disk_full
                "53100" => StoreError::Full {
                    path: PathBuf::from(server),
                },
                // lock_not_available: lock_timeout ran out
                "55P03" => StoreError::Busy {
                    path: PathBuf::from(server),
                },
                // connection exceptions, authentication, no such database, too many
                // connections, the server shutting down or starting up
                code if code.starts_with("08")
                    || code.starts_with("28")
                    || matches!(code, "3D000" | "53300" | "57P01" | "57P02" | "57P03") =>
                {
                    unreachable(detail)
                }
                _ => StoreError::Server {
                    server: server.to_owned(),
                    detail,
                },
            }
        }
        sqlx::Error::Io(e) => unreachable(e.to_string()),
        sqlx::Error::Tls(e) => unreachable(format!("TLS: {e}")),
        sqlx::Error::Protocol(detail) => unreachable(format!("the connection broke: {detail}")),
        sqlx::Error::PoolTimedOut => unreachable(format!(
            "no connection could be opened or became free within {} s",
            ACQUIRE_TIMEOUT.as_secs()
        )),
        sqlx::Error::WorkerCrashed => unreachable("the connection's worker stopped".to_owned()),
        sqlx::Error::PoolClosed => StoreError::Server {
            server: server.to_owned(),
            detail: "this handle on the store was closed".to_owned(),
        },
        other => StoreError::Server {
            server: server.to_owned(),
            detail: other.to_string(),
        },
    }
}

#[async_trait::async_trait]
impl StateStore for PgStore {
    async fn create(
        &self,
        row: Row,
        refs: Vec<String>,
        client_token: Option<String>,
    ) -> Result<Created, StoreError> {
        let (row, refs, token) = (&row, &refs[..], client_token.as_deref());
        self.write(|mut tx| async move {
            let result = self.create_in(&mut tx, row.clone(), refs, token).await;
            (tx, result)
        })
        .await
    }

    async fn create_build(
        &self,
        row: Row,
        refs: Vec<String>,
        make: &MakeBuild<'_>,
    ) -> Result<Row, StoreError> {
        let (row, refs) = (&row, &refs[..]);
        self.write(|mut tx| async move {
            let result = self.build_in(&mut tx, row.clone(), refs, make).await;
            (tx, result)
        })
        .await
    }

    async fn get(&self, arn: &str) -> Result<Option<Row>, StoreError> {
        let mut conn = self.conn().await?;
        self.get_in(&mut conn, arn)
            .await
            .map_err(|fail| self.settle(fail))
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Row>, StoreError> {
        self.list_rows(filter).await
    }

    async fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        self.count_rows(filter).await
    }

    async fn update(&self, arn: &str, update: Update) -> Result<Row, StoreError> {
        let update = &update;
        self.write(|mut tx| async move {
            let result = self.update_in(&mut tx, arn, update.clone()).await;
            (tx, result)
        })
        .await
    }

    async fn delete(&self, arn: &str) -> Result<(), StoreError> {
        self.write(|mut tx| async move {
            let result = self.delete_in(&mut tx, arn).await;
            (tx, result)
        })
        .await
    }

    async fn referrers(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.referrers_of(prefix).await
    }

    async fn request_cancel(&self, arn: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE rows SET cancel_requested = TRUE WHERE arn = $1")
            .bind(arn)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn cancel_requested(&self, arn: &str) -> Result<bool, StoreError> {
        let flag: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM rows WHERE arn = $1")
                .bind(arn)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        Ok(flag == Some(true))
    }

    async fn import_with_refs(&self, rows: Vec<(Row, Vec<String>)>) -> Result<u64, StoreError> {
        let rows = &rows[..];
        self.write(|mut tx| async move {
            let result = self.import_in(&mut tx, rows).await;
            (tx, result)
        })
        .await
    }

    async fn enqueue(&self, messages: Vec<Message>) -> Result<(), StoreError> {
        let messages = &messages[..];
        self.write(|mut tx| async move {
            let result = self.insert_messages(&mut tx, messages).await;
            (tx, result)
        })
        .await
    }

    async fn due_messages(&self, now_ms: i64, limit: u32) -> Result<Vec<Queued>, StoreError> {
        self.due(now_ms, limit).await
    }

    async fn record_delivery(&self, seq: i64, outcome: Delivery) -> Result<(), StoreError> {
        self.delivery(seq, outcome).await
    }

    async fn drop_topic_messages(
        &self,
        topic: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        self.drop_topic(topic, at_ms, reason).await
    }

    async fn messages(&self, topic: &str, limit: u32) -> Result<Vec<Queued>, StoreError> {
        self.topic_messages(topic, limit).await
    }

    async fn claim_run(&self, run: &Run) -> Result<bool, StoreError> {
        self.claim(run).await
    }

    async fn finish_run(
        &self,
        pipeline: &str,
        at_ms: i64,
        image: Option<&str>,
        note: &str,
    ) -> Result<(), StoreError> {
        self.finish(pipeline, at_ms, image, note).await
    }

    async fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<Run>, StoreError> {
        self.pipeline_runs(pipeline, limit).await
    }

    async fn put_policy(&self, arn: &str, policy: Option<Policy>) -> Result<(), StoreError> {
        let policy = policy.as_ref();
        self.write(|mut tx| async move {
            let result = self.put_policy_in(&mut tx, arn, policy).await;
            (tx, result)
        })
        .await
    }

    async fn policy(&self, arn: &str) -> Result<Option<Policy>, StoreError> {
        self.policy_of(arn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_never_quoted() {
        let options = parse_url("postgres://kiln:s3cret@db.example:6543/kilnstate").unwrap();
        assert_eq!(label(&options), "db.example:6543/kilnstate");
        let options = parse_url("postgresql://kiln@localhost").unwrap();
        assert_eq!(label(&options), "localhost:5432/kiln");
        let options = parse_url("postgres://kiln@[::1]:5433/k").unwrap();
        assert_eq!(label(&options), "[::1]:5433/k");
        for bad in [
            "mysql://kiln:s3cret@host/db",
            "kiln:s3cret@host/db",
            "postgres://kiln:s3cret@host:99999/db",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(matches!(e, StoreError::BadUrl { .. }), "{bad}: {e:?}");
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(
                !shown.contains("s3cret") && !debug.contains("s3cret"),
                "{shown}"
            );
        }
    }

    #[test]
    fn errors_name_the_server_and_say_what_happened() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        match map_error("h:1/d", sqlx::Error::Io(refused)) {
            e @ StoreError::Unreachable { .. } => assert!(e.to_string().contains("h:1/d"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map_error("h:1/d", sqlx::Error::PoolTimedOut),
            StoreError::Unreachable { .. }
        ));
        assert!(lost_race(&Fail::Raced("x".to_owned())));
        assert!(!lost_race(&Fail::Sql(sqlx::Error::PoolTimedOut)));
    }

    #[tokio::test]
    async fn the_store_shows_no_password() {
        let options = parse_url("postgres://kiln:s3cret@127.0.0.1:1/db").unwrap();
        let store = PgStore {
            server: label(&options),
            listening: Arc::new(jobs::Listening::new(options.clone())),
            pool: PgPoolOptions::new().connect_lazy_with(options),
        };
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:1/db"), "{shown}");
    }
}
