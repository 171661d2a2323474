//! The state store of a data directory: resources and image records in `$KILN_HOME/kiln.db`
//! (SQLite through kiln-store), shared by every kiln process using that directory.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_store::{Backend, JobQueue, Kind, Leadership, Row, SqliteStore, StateStore};

use crate::record::ImageRecord;
use crate::store::{read_json, Home, StoreError};

/// Where a data directory's resources and records are kept.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Location {
    /// `$KILN_HOME/kiln.db`, an embedded SQLite file (the default).
    #[default]
    Embedded,
    /// A PostgreSQL database, shared by servers and workers on many hosts: its URL, which may
    /// hold a password (so it is never shown).
    Postgres(String),
}

/// The URL may hold a password: it is never printed.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Embedded => f.write_str("Embedded"),
            Location::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// A name for one holder of a role ([`Store::leader`]): this host, this process and a random
/// part, so that two holders in one process (two deliverers in a test) are told apart too.
pub fn holder_name() -> String {
    let host = crate::record::host_name();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

/// A data directory's state store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<dyn Backend>,
    home: Home,
}

/// The store's file in a data directory.
pub fn db_path(home: &Home) -> PathBuf {
    home.root.join("kiln.db")
}

/// Marks a data directory whose JSON build records (kiln before the state store) were imported.
const IMPORTED: &str = ".imported-into-kiln.db";

impl Store {
    /// Opens (or creates) the store of a data directory. Build records an older kiln kept as
    /// JSON files are imported once; the files stay where they are.
    pub async fn open(home: &Home) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&home.root).map_err(crate::store::io("creating", &home.root))?;
        let db = Arc::new(SqliteStore::open(&db_path(home)).await?);
        keep_private(&db_path(home));
        let store = Store {
            db,
            home: home.clone(),
        };
        store.import_json_records().await?;
        Ok(store)
    }

    /// Opens the store at `location`: the data directory's own file, or a PostgreSQL database
    /// (migrated to this kiln's schema under a lock, so that servers starting at once agree).
    pub async fn open_at(home: &Home, location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Embedded => Store::open(home).await,
            Location::Postgres(url) => {
                std::fs::create_dir_all(&home.root)
                    .map_err(crate::store::io("creating", &home.root))?;
                let db = Arc::new(kiln_store::PgStore::connect(url).await?);
                Ok(Store::with_backend(home, db))
            }
        }
    }

    /// A store over another backend (a PostgreSQL one, or tests).
    pub fn with_backend(home: &Home, db: Arc<dyn Backend>) -> Store {
        Store {
            db,
            home: home.clone(),
        }
    }

    /// The backend's rows.
    pub fn db(&self) -> &dyn StateStore {
        self.db.as_ref()
    }

    /// The build queue and its workers.
    pub fn jobs(&self) -> &dyn JobQueue {
        self.db.as_ref()
    }

    /// Roles held by one server at a time (the scheduler, the deliverer).
    pub fn leader(&self) -> &dyn Leadership {
        self.db.as_ref()
    }

    /// Queued builds' logs.
    pub fn logs(&self) -> &dyn kiln_store::BuildLogs {
        self.db.as_ref()
    }

    /// Reads a row's summary or body; `what` names it in the error (`the record of ARN`).
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        text: &str,
        what: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Unreadable {
            path: db_path(&self.home),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    /// The data directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    async fn import_json_records(&self) -> Result<(), StoreError> {
        let images = self.home.images();
        let marker = images.join(IMPORTED);
        if !images.is_dir() || marker.exists() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for name in std::fs::read_dir(&images).into_iter().flatten().flatten() {
            for v in std::fs::read_dir(name.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for b in std::fs::read_dir(v.path()).into_iter().flatten().flatten() {
                    let file = b.path().join("image.json");
                    match read_json::<ImageRecord>(&file) {
                        Ok(Some(r)) => rows.push(crate::record::row_of(&r)?),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("not imported: {e}"),
                    }
                }
            }
        }
        let mut fresh = Vec::new();
        for row in rows {
            if self.db.get(&row.arn).await?.is_none() {
                fresh.push(row);
            }
        }
        if !fresh.is_empty() {
            tracing::info!("importing {} JSON build records", fresh.len());
            self.db.import(fresh).await?;
        }
        std::fs::write(&marker, b"").map_err(crate::store::io("writing", &marker))?;
        Ok(())
    }
}

/// Makes the store's files (the database, its WAL and shared memory, which SQLite creates
/// with the database's mode) readable by their owner only: they hold webhook secrets (topics),
/// and SQLite makes them with the umask's mode, usually 0644. A store kiln cannot change
/// (another owner's, a read-only file system) is used as it is.
fn keep_private(db: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot make the store private (0600)");
            }
        }
    }
}

/// A row's `[major, minor, patch]`.
pub fn nodes(v: &crate::version::Version) -> [u32; 3] {
    [v.major, v.minor, v.patch]
}

/// Milliseconds since the epoch of a time.
pub fn millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// An empty row of a kind, to be filled.
pub fn row(kind: Kind, arn: String, name: String) -> Row {
    Row {
        kind,
        arn,
        name,
        version: None,
        build: None,
        owner: String::new(),
        state: None,
        pipeline: None,
        digest: String::new(),
        created_ms: 0,
        updated_ms: 0,
        summary: String::new(),
        body: String::new(),
    }
}

/// JSON for a row's summary or body.
pub fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Encode(e.to_string()))
}
