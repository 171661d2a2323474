//! The conformance suite of `StateStore` on the SQLite backend, each check on a file of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kiln_store::conformance::{Backend, Fresh, FreshQueue, LeaderBackend, QueueBackend};
use kiln_store::{JobQueue, Leadership, SqliteStore, StateStore};
use tempfile::TempDir;

/// Stores in temporary directories, each a `kiln.db` of its own.
struct Sqlite;

#[async_trait::async_trait(?Send)]
impl Backend for Sqlite {
    /// The store's directory, deleted with the database file in it when the check ends.
    type Guard = TempDir;

    async fn fresh(&self) -> Fresh<TempDir> {
        let dir = TempDir::new().unwrap();
        let store = SqliteStore::open(&dir.path().join("kiln.db"))
            .await
            .unwrap();
        Fresh {
            store: Arc::new(store),
            guard: dir,
        }
    }

    async fn open_again(&self, dir: &TempDir) -> Arc<dyn StateStore> {
        Arc::new(
            SqliteStore::open(&dir.path().join("kiln.db"))
                .await
                .unwrap(),
        )
    }
}

kiln_store::conformance_tests!(Sqlite);

#[async_trait::async_trait(?Send)]
impl QueueBackend for Sqlite {
    type Guard = TempDir;

    async fn fresh_queue(&self) -> FreshQueue<TempDir> {
        let dir = TempDir::new().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("kiln.db"))
                .await
                .unwrap(),
        );
        FreshQueue {
            queue: store.clone(),
            logs: store.clone(),
            store,
            guard: dir,
        }
    }

    async fn queue_again(&self, dir: &TempDir) -> Arc<dyn JobQueue> {
        Arc::new(
            SqliteStore::open(&dir.path().join("kiln.db"))
                .await
                .unwrap(),
        )
    }
}

/// The build queue's checks, in a module of their own so that their names cannot clash.
mod queue {
    use super::Sqlite;

    kiln_store::job_queue_tests!(Sqlite);
}

#[async_trait::async_trait(?Send)]
impl LeaderBackend for Sqlite {
    type Guard = TempDir;

    async fn fresh_leader(&self) -> (Arc<dyn Leadership>, TempDir) {
        let dir = TempDir::new().unwrap();
        let store = SqliteStore::open(&dir.path().join("kiln.db"))
            .await
            .unwrap();
        (Arc::new(store), dir)
    }

    async fn leader_again(&self, dir: &TempDir) -> Arc<dyn Leadership> {
        Arc::new(
            SqliteStore::open(&dir.path().join("kiln.db"))
                .await
                .unwrap(),
        )
    }
}

/// Leadership's checks.
mod leader {
    use super::Sqlite;

    kiln_store::leadership_tests!(Sqlite);
}
