//! kiln's state store: resources and image build records behind a trait.
//!
//! The store knows nothing of kiln's types: a [`Row`] carries the columns that lists filter and
//! sort on, plus JSON text that kiln-core writes and reads. The default backend is an embedded
//! SQLite file ([`SqliteStore`]); a PostgreSQL server ([`PgStore`]) is the backend for several
//! kiln servers sharing one store. Both are the same [`StateStore`] trait, and the same build
//! queue ([`JobQueue`]).
//!
//! What the trait promises is checked by a conformance suite that every backend runs: the
//! `conformance` feature adds the module `conformance` with one check per behaviour, and
//! `conformance_tests!` turns them into one test each for a backend.
#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;

#[cfg(feature = "conformance")]
pub mod conformance;
mod grants;
mod jobs;
mod leader;
mod logs;
mod postgres;
mod queue;
pub mod remote;
mod sqlite;

pub use grants::Policy;
pub use jobs::{
    Attempt, AttemptEnd, Capabilities, Job, JobQueue, JobState, Lease, Needs, NewJob, Reclaimed,
    Worker,
};

pub use leader::Leadership;
pub use logs::{BuildLogs, LogLine, MAX_LOG_FILE};
pub use postgres::PgStore;
pub use queue::{Delivery, Message, MessageState, Queued, Run};
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// Everything a store backend is: rows, the build queue, roles held by one server and build
/// logs. Both backends are, so that kiln holds one `Arc<dyn Backend>` and lends each trait
/// from it.
pub trait Backend: StateStore + JobQueue + Leadership + BuildLogs {}

impl<T: StateStore + JobQueue + Leadership + BuildLogs> Backend for T {}

/// What a row is; the text is the ARN's resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A build component.
    Component,
    /// An image recipe.
    ImageRecipe,
    /// A container recipe.
    ContainerRecipe,
    /// Where builds run.
    InfrastructureConfiguration,
    /// Where images go.
    DistributionConfiguration,
    /// A pipeline that builds images from a recipe.
    ImagePipeline,
    /// One image build.
    Image,
    /// A lifecycle policy: rules that deprecate, disable or delete images.
    LifecyclePolicy,
    /// One run of a lifecycle policy, with what it did to each image.
    LifecycleExecution,
    /// Where notifications go: a webhook endpoint (kiln's stand-in for an SNS topic).
    Topic,
    /// An entry of the shared step cache: a step key and the layer it made.
    StepCacheEntry,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 11] = [
        Kind::Component,
        Kind::ImageRecipe,
        Kind::ContainerRecipe,
        Kind::InfrastructureConfiguration,
        Kind::DistributionConfiguration,
        Kind::ImagePipeline,
        Kind::Image,
        Kind::LifecyclePolicy,
        Kind::LifecycleExecution,
        Kind::Topic,
        Kind::StepCacheEntry,
    ];

    /// The ARN resource type, which is also the text stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Component => "component",
            Kind::ImageRecipe => "image-recipe",
            Kind::ContainerRecipe => "container-recipe",
            Kind::InfrastructureConfiguration => "infrastructure-configuration",
            Kind::DistributionConfiguration => "distribution-configuration",
            Kind::ImagePipeline => "image-pipeline",
            Kind::Image => "image",
            Kind::LifecyclePolicy => "lifecycle-policy",
            Kind::LifecycleExecution => "lifecycle-execution",
            Kind::Topic => "topic",
            Kind::StepCacheEntry => "step-cache-entry",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// By its ARN resource type (`image-recipe`), as records and resources write it.
impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown resource kind {s:?}"))
    }
}

/// One stored resource or image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// What the row is.
    pub kind: Kind,
    /// The unique key, compared exactly.
    pub arn: String,
    /// The name as the user wrote it; filters and ordering ignore its case.
    pub name: String,
    /// Semantic version, when the kind has one.
    pub version: Option<[u32; 3]>,
    /// Build number (images; components use 1).
    pub build: Option<u32>,
    /// Who owns the row.
    pub owner: String,
    /// Images: PENDING..AVAILABLE; pipelines: ENABLED/DISABLED.
    pub state: Option<String>,
    /// Images: the ARN of the pipeline that made it.
    pub pipeline: Option<String>,
    /// sha256 of the content, for idempotency and auto-versioning.
    pub digest: String,
    /// Milliseconds since the Unix epoch; set by the caller.
    pub created_ms: i64,
    /// Milliseconds since the Unix epoch; set by the store on create and update.
    pub updated_ms: i64,
    /// Small JSON for lists.
    pub summary: String,
    /// Full JSON; empty in rows returned by [`StateStore::list`].
    pub body: String,
}

/// Row order of [`StateStore::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Order {
    /// Name (case-insensitive) ascending, then version, build and creation time descending.
    #[default]
    Version,
    /// Creation time descending, then ARN.
    Newest,
    /// Creation time ascending, then ARN.
    Oldest,
}

/// What [`StateStore::list`] selects. Every field narrows; `None` means any.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// Only rows of this kind.
    pub kind: Option<Kind>,
    /// Only rows with this name, compared case-insensitively.
    pub name: Option<String>,
    /// A version filter: `Some` nodes must equal, `None` nodes match anything.
    pub version: [Option<u32>; 3],
    /// Only rows with this build number.
    pub build: Option<u32>,
    /// Only rows of this owner.
    pub owner: Option<String>,
    /// Only rows in any of these states (empty means any state).
    pub states: Vec<String>,
    /// Only rows made by this pipeline.
    pub pipeline: Option<String>,
    /// Only rows whose ARN starts with this (an account's `arn:...:ACCOUNT:`).
    pub arn_prefix: Option<String>,
    /// Row order.
    pub order: Order,
    /// At most this many rows.
    pub limit: Option<u32>,
    /// Rows to skip before the first returned one.
    pub offset: u32,
    /// Only rows whose resource policy grants this account (an account id): what is shared
    /// with it.
    pub shared_with: Option<String>,
}

/// Result of [`StateStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The row was stored now.
    New(Row),
    /// The client token was seen before with the same digest: this is the row stored then.
    Existing(Row),
}

impl Created {
    /// The row, whether stored now or before.
    pub fn into_row(self) -> Row {
        match self {
            Created::New(row) | Created::Existing(row) => row,
        }
    }
}

/// Changes to a stored row; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Update {
    /// New state.
    pub state: Option<String>,
    /// New summary JSON.
    pub summary: Option<String>,
    /// New body JSON.
    pub body: Option<String>,
    /// New content digest.
    pub digest: Option<String>,
    /// New references, replacing all the old ones.
    pub refs: Option<Vec<String>>,
    /// Notifications of this change, stored in the same transaction (a message whose id is
    /// stored already is not stored again).
    pub outbox: Vec<Message>,
}

/// What [`StateStore::create_build`] asks for a build number: (arn, summary, body).
pub type MakeBuild<'a> =
    dyn Fn(u32) -> Result<(String, String, String), StoreError> + Send + Sync + 'a;

/// Where kiln's resources and image records are kept.
///
/// Several kiln processes use one store at once (two builds running), so every method is
/// atomic on its own and safe across processes.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Stores a new row.
    ///
    /// `refs` are the ARNs (or ARN-like references such as `.../component/foo/1.x.x`) the row
    /// uses; they are recorded, not checked. With a client token: if (kind, token) was used
    /// before and that row still exists, returns `Existing(that row)` when the digest equals,
    /// else `Err(TokenMismatch)`. A row whose ARN (or whose kind, name, version and build)
    /// exists in the same account gives `Err(AlreadyExists)` with the existing row. All in one
    /// transaction.
    async fn create(
        &self,
        row: Row,
        refs: Vec<String>,
        client_token: Option<String>,
    ) -> Result<Created, StoreError>;

    /// Stores a new row with the next build number of (kind, name case-insensitively, version)
    /// in the account of the row's ARN (its fifth field; any ARN of the account will do, the
    /// real one comes from `make`): the highest existing build + 1, or 1 when there is none.
    /// Names, versions and builds are per account.
    ///
    /// `make(build)` returns (arn, summary, body) for that number, replacing the row's (its
    /// error stores nothing). Two processes calling it at once for the same version get
    /// different numbers. Returns the stored row.
    async fn create_build(
        &self,
        row: Row,
        refs: Vec<String>,
        make: &MakeBuild<'_>,
    ) -> Result<Row, StoreError>;

    /// One row with its body.
    async fn get(&self, arn: &str) -> Result<Option<Row>, StoreError>;

    /// Rows matching a filter, without bodies (so that long lists stay cheap).
    async fn list(&self, filter: &Filter) -> Result<Vec<Row>, StoreError>;

    /// How many rows match, ignoring limit and offset (for paging).
    async fn count(&self, filter: &Filter) -> Result<u64, StoreError>;

    /// Changes a row and sets its `updated_ms`; `Err(NotFound)` when it does not exist.
    /// `refs: Some` replaces its references.
    async fn update(&self, arn: &str, update: Update) -> Result<Row, StoreError>;

    /// Deletes a row, its references and client tokens, in one transaction.
    ///
    /// `Err(InUse)` when another existing row has a reference exactly equal to `arn`;
    /// `Err(NotFound)` when it does not exist.
    async fn delete(&self, arn: &str) -> Result<(), StoreError>;

    /// References starting with `prefix` as (from_arn, to_ref), for wildcard dependency checks
    /// that [`StateStore::delete`] cannot do by exact match.
    async fn referrers(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Asks the process running an image build to cancel it; false when the row does not exist.
    async fn request_cancel(&self, arn: &str) -> Result<bool, StoreError>;

    /// Whether cancel was requested, for the build process to poll.
    async fn cancel_requested(&self, arn: &str) -> Result<bool, StoreError>;

    /// Stores many rows with their references in one transaction, keeping their `updated_ms`,
    /// for bringing in records written before the store existed.
    ///
    /// Rows whose ARN is already stored are skipped, so an import can be run again; returns how
    /// many rows were stored. Any other conflict stores nothing.
    async fn import_with_refs(&self, rows: Vec<(Row, Vec<String>)>) -> Result<u64, StoreError>;

    /// Stores notifications to deliver (a message whose id is stored already is skipped).
    async fn enqueue(&self, messages: Vec<Message>) -> Result<(), StoreError>;

    /// Pending messages due at `now_ms`, oldest first, at most `limit`.
    async fn due_messages(&self, now_ms: i64, limit: u32) -> Result<Vec<Queued>, StoreError>;

    /// Records what a delivery attempt of message `seq` came to (and counts the attempt);
    /// `Err(NotFound)` when there is no such message. A message that is no longer pending is
    /// left as it is, so that a late answer cannot undo a drop.
    async fn record_delivery(&self, seq: i64, outcome: Delivery) -> Result<(), StoreError>;

    /// Drops every pending message of a topic (its endpoint is gone); returns how many.
    async fn drop_topic_messages(
        &self,
        topic: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<u64, StoreError>;

    /// A topic's messages, newest first, at most `limit`.
    async fn messages(&self, topic: &str, limit: u32) -> Result<Vec<Queued>, StoreError>;

    /// Claims the scheduled run (pipeline, at_ms): true when this caller claimed it now,
    /// false when it was claimed before (by anyone), so that it is started once.
    async fn claim_run(&self, run: &Run) -> Result<bool, StoreError>;

    /// Sets what a claimed run came to; `Err(NotFound)` when it was never claimed.
    async fn finish_run(
        &self,
        pipeline: &str,
        at_ms: i64,
        image: Option<&str>,
        note: &str,
    ) -> Result<(), StoreError>;

    /// A pipeline's claimed runs, the latest scheduled instant first, at most `limit`.
    async fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<Run>, StoreError>;

    /// Replaces the resource policy of row `arn` and its grants, in one transaction: `Some`
    /// stores the new one (the grants become exactly its `grantees`), `None` removes it.
    /// `Err(NotFound)` when no row has the ARN. Deleting the row removes its policy.
    async fn put_policy(&self, arn: &str, policy: Option<Policy>) -> Result<(), StoreError>;

    /// The resource policy of row `arn`, if it has one.
    async fn policy(&self, arn: &str) -> Result<Option<Policy>, StoreError>;

    /// [`StateStore::import_with_refs`] for rows without references.
    async fn import(&self, rows: Vec<Row>) -> Result<u64, StoreError> {
        self.import_with_refs(rows.into_iter().map(|row| (row, Vec::new())).collect())
            .await
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a SQLite database, or is damaged.
    #[error(
        "the store at {path} cannot be read ({detail}); kiln changed nothing: restore it from a \
         backup (kiln copies it to {path}.before-schema-N before each schema upgrade) or move \
         it aside to start an empty store",
        path = path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },

    /// The store was created once but its database file is gone.
    #[error(
        "the store {path} is missing, but kiln created it on {created} ({path}.created \
         records that): restore it from a backup, or remove {path}.created to start an empty \
         store (logs and layers in the data directory are kept)",
        path = path.display()
    )]
    Missing {
        /// The database file that should be there.
        path: PathBuf,
        /// When kiln created it (RFC 3339), from the marker file.
        created: String,
    },

    /// A newer kiln upgraded the store past what this kiln understands.
    #[error(
        "the store {path} was written by a newer kiln (schema {found}; this kiln knows up to \
         {supported}): upgrade kiln; nothing was changed",
        path = path.display()
    )]
    TooNew {
        /// The database file, or a server's `host:port/dbname` ([`PgStore`]).
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest schema this kiln knows.
        supported: i64,
    },

    /// The disk is full.
    #[error(
        "no space left on the device of {path}: free space and retry; the change was not \
         stored (nothing stored before is lost)",
        path = path.display()
    )]
    Full {
        /// The database file, or a server's `host:port/dbname` ([`PgStore`]).
        path: PathBuf,
    },

    /// Another process held the store's lock for longer than the busy timeout.
    #[error(
        "the store {path} stayed locked by another kiln process for 30 s: retry when it is \
         less busy; the change was not stored",
        path = path.display()
    )]
    Busy {
        /// The database file, or a server's `host:port/dbname` ([`PgStore`]).
        path: PathBuf,
    },

    /// The file or its file system cannot be written.
    #[error(
        "the store {path} is read-only: make the file, its directory and its file system \
         writable and retry; the change was not stored",
        path = path.display()
    )]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },

    /// Reading or writing the file failed.
    #[error(
        "cannot read or write the store {path}: {source}: check the file, its directory and \
         the disk, then retry",
        path = path.display()
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },

    /// A row with this ARN, or with this kind, name, version and build, is already stored.
    #[error("{} {} already exists; nothing was changed", existing.kind, existing.arn)]
    AlreadyExists {
        /// The stored row, with its body.
        existing: Box<Row>,
    },

    /// A client token was reused for a different request.
    #[error(
        "client token {token} was used for {arn} with a different request: use a new token; \
         nothing was changed"
    )]
    TokenMismatch {
        /// The token.
        token: String,
        /// The row it was first used for.
        arn: String,
    },

    /// No row has this ARN.
    #[error("{arn} does not exist")]
    NotFound {
        /// The ARN asked for.
        arn: String,
    },

    /// Other rows still refer to the row being deleted.
    #[error(
        "{arn} is used by {}: delete or change those first; nothing was changed",
        users.join(", ")
    )]
    InUse {
        /// The row that was to be deleted.
        arn: String,
        /// The ARNs of the rows that use it, sorted.
        users: Vec<String>,
    },

    /// A worker's lease on a job lapsed or passed to another worker: what it wanted to write
    /// was refused.
    #[error(
        "{worker} no longer holds the job {job} (its lease lapsed, and the job may run \
         elsewhere now): nothing was changed; the worker drops the build"
    )]
    LeaseLost {
        /// The job.
        job: String,
        /// The worker that asked.
        worker: String,
    },

    /// A worker of this name exists with a token that is not revoked.
    #[error(
        "a worker named {name} exists: revoke it first (`kiln worker token revoke {name}`) or \
         choose another name"
    )]
    WorkerExists {
        /// The name.
        name: String,
    },

    /// Anything else the database reported.
    #[error(
        "the store {path} failed: {detail}; the change was not stored",
        path = path.display()
    )]
    Database {
        /// The database file.
        path: PathBuf,
        /// What the database said.
        detail: String,
    },

    /// A database server cannot be reached, refused kiln's connection, or the connection to it
    /// broke. A change under way when a connection broke during its commit may have been
    /// stored (the server alone knows); any other change was not.
    #[error(
        "cannot use the PostgreSQL store {server}: {detail}; check that the server runs and \
         accepts connections from this host, and that the store URL names the right host, \
         port, database, user and password, then retry"
    )]
    Unreachable {
        /// The server as `host:port/dbname` (never the URL, which may hold a password).
        server: String,
        /// What the connection or the server said.
        detail: String,
    },

    /// A server store's URL cannot be read.
    #[error(
        "the PostgreSQL store URL is not valid ({detail}); it is not shown here as it may hold \
         a password: write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    BadUrl {
        /// What is wrong with it (never the URL itself).
        detail: String,
    },

    /// A server's database holds tables of some other program, so kiln will not take it over.
    #[error(
        "the database {server} is not a kiln store ({detail}); kiln changed nothing: give kiln \
         a database of its own (createdb kiln) and name it in the store URL"
    )]
    NotAStore {
        /// The server as `host:port/dbname`.
        server: String,
        /// What kiln found there.
        detail: String,
    },

    /// The kiln server a worker reaches its store through does not take its token (unknown or
    /// revoked).
    #[error("the kiln server {server} refused the worker's token: {detail}")]
    Unauthorized {
        /// The server's URL.
        server: String,
        /// What it said.
        detail: String,
    },

    /// The kiln server a worker reaches its store through failed or refused.
    #[error("the kiln server {server} failed or refused: {detail}")]
    Remote {
        /// The server's URL.
        server: String,
        /// What it said.
        detail: String,
    },

    /// Anything else a database server reported.
    #[error("the PostgreSQL store {server} failed: {detail}; the change was not stored")]
    Server {
        /// The server as `host:port/dbname`.
        server: String,
        /// What the server said, with its SQLSTATE code.
        detail: String,
    },
}

impl StoreError {
    /// Whether the file itself is unreadable, so that commands can point at `kiln store check`
    /// and backups rather than suggest a retry.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
}
