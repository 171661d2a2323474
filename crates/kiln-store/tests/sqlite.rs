//! What is SQLite's own in the SQLite store, on real files in temporary directories: several
//! processes on one file, its marker, schema versions, damaged, vanished and full files, and
//! listing speed. What every backend must do is in `conformance_sqlite.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use kiln_store::{Created, Filter, Row, SqliteStore, StateStore, StoreError, SCHEMA_VERSION};
use sqlx::ConnectOptions;
use tempfile::TempDir;

use kiln_store::conformance::{image, make_image};

async fn new_row(store: &SqliteStore, row: Row, refs: &[&str]) -> Row {
    let refs = refs.iter().map(|r| r.to_string()).collect();
    match store.create(row, refs, None).await.unwrap() {
        Created::New(row) => row,
        other => panic!("expected a new row, got {other:?}"),
    }
}

/// The database file's bytes, for checking that a test left the file as it was.
fn snapshot(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Twenty builds of one version, as one process of a race would take them.
async fn take_builds(store: SqliteStore, n: usize) -> Vec<u32> {
    let make = make_image("race");
    let mut builds = Vec::new();
    for _ in 0..n {
        let row = store
            .create_build(image("race", [1, 0, 0], 0), vec![], &make)
            .await
            .unwrap();
        builds.push(row.build.unwrap());
    }
    builds
}

fn assert_one_to_forty(builds: Vec<u32>) {
    let distinct: BTreeSet<u32> = builds.iter().copied().collect();
    assert_eq!(builds.len(), 40, "{builds:?}");
    assert_eq!(distinct, (1..=40).collect(), "{builds:?}");
}

/// Set for the test binary that `two_processes_get_distinct_builds` runs as its other process:
/// the database file to take builds from.
const CHILD_DB: &str = "KILN_STORE_TEST_CHILD_DB";

/// The other process of `two_processes_get_distinct_builds`: takes twenty builds from the store
/// at `path` and prints them for the parent.
async fn take_builds_as_the_child(path: &Path) {
    let store = SqliteStore::open(path).await.unwrap();
    // Start together with the parent, so that the two really race.
    std::fs::write(format!("{}.child-ready", path.display()), "").unwrap();
    wait_for(&format!("{}.go", path.display())).await;
    let builds = take_builds(store, 20).await;
    println!("BUILDS {builds:?}");
}

async fn wait_for(path: &str) {
    for _ in 0..30_000 {
        if Path::new(path).exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("{path} did not appear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_get_distinct_builds() {
    // This test runs itself as the other process, rather than a helper test that would pass
    // in every normal run without checking anything.
    if let Some(path) = std::env::var_os(CHILD_DB) {
        take_builds_as_the_child(Path::new(&path)).await;
        return;
    }
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "two_processes_get_distinct_builds",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .output();
    let parent = async {
        wait_for(&format!("{}.child-ready", path.display())).await;
        std::fs::write(format!("{}.go", path.display()), "").unwrap();
        take_builds(store.clone(), 20).await
    };
    let (child, mut builds) = tokio::join!(child, parent);
    let child = child.unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("BUILDS ").map(|(_, builds)| builds))
        .unwrap_or_else(|| panic!("the child printed no builds: {stdout}"));
    let theirs: Vec<u32> = serde_json::from_str(line).unwrap();
    builds.extend(theirs);
    assert_one_to_forty(builds);
}

#[tokio::test]
async fn new_stores_get_a_marker_and_old_ones_are_given_one() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("home/kiln.db");
    let marker = dir.path().join("home/kiln.db.created");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.path(), path);
    let created = std::fs::read_to_string(&marker).unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created.trim()).is_ok(),
        "{created}"
    );
    store.close().await;

    std::fs::remove_file(&marker).unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(marker.exists(), "an older store without a marker gets one");
    store.check().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_vanished_store_is_reported_not_recreated() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    new_row(&store, image("web", [1, 0, 0], 1), &[]).await;
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::Missing { path: p, created } => {
            assert_eq!(p, &path);
            assert!(!created.is_empty());
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("kiln.db.created") && message.contains("restore"),
        "{message}"
    );
    assert!(!path.exists(), "the store was not recreated");
}

async fn set_schema_version(path: &Path, version: i64) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE kiln_schema SET version = ?")
        .bind(version)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
}

#[tokio::test]
async fn a_store_of_a_newer_kiln_is_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    new_row(&store, image("web", [1, 0, 0], 1), &[]).await;
    store.close().await;
    set_schema_version(&path, 99).await;
    let before = snapshot(&path);

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::TooNew {
            found, supported, ..
        } => assert_eq!((*found, *supported), (99, SCHEMA_VERSION)),
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade kiln"), "{err}");
    assert_eq!(snapshot(&path), before, "the file is byte-identical");
    // Any copy, not only one named after schema 100: a kiln that took the store for an older
    // one would copy it as `.before-schema-2`.
    let copies: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".before-schema-"))
        .collect();
    assert!(copies.is_empty(), "{copies:?}");
}

#[tokio::test]
async fn a_file_of_garbage_is_corrupt_and_kept() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();

    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("before-schema"),
        "{message}"
    );
    assert_eq!(snapshot(&path), garbage);
}

#[tokio::test]
async fn another_programs_database_is_not_taken_over() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (text TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn a_damaged_page_is_reported_by_check() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut rows = Vec::new();
    for i in 0..300 {
        let mut row = image("web", [1, 0, 0], i + 1);
        row.body = format!(r#"{{"log":"{}"}}"#, "y".repeat(3_000));
        rows.push(row);
    }
    store.import(rows.clone()).await.unwrap();
    store.check().await.unwrap();
    store.close().await;
    assert!(
        !Path::new(&format!("{}-wal", path.display())).exists(),
        "closing the store checkpoints its journal into the file"
    );

    let mut bytes = snapshot(&path);
    let pages = bytes.len() / 4096;
    assert!(pages > 100, "{pages} pages");
    let middle = pages / 2 * 4096;
    bytes[middle..middle + 4096].fill(0xff);
    std::fs::write(&path, &bytes).unwrap();

    match SqliteStore::open(&path).await {
        Err(err) => assert!(err.is_corrupt(), "expected Corrupt, got {err:?}"),
        Ok(store) => {
            let err = store.check().await.unwrap_err();
            assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
            assert!(
                err.to_string().contains("restore it from a backup"),
                "{err}"
            );
            // Reads that meet the damage say so too.
            let mut damaged = 0;
            for row in &rows {
                match store.get(&row.arn).await {
                    Ok(_) => {}
                    Err(err) if err.is_corrupt() => damaged += 1,
                    Err(err) => panic!("expected Corrupt, got {err:?}"),
                }
            }
            eprintln!("{damaged} rows unreadable");
            // The rows fill most of the file, so the overwritten middle page holds one of them
            // (the layout is the same in every run): without this the loop could check nothing.
            assert!(damaged > 0, "no read reported the damaged page");
            store.close().await;
        }
    }
    assert_eq!(snapshot(&path), bytes, "the damaged file is unchanged");
}

#[tokio::test]
async fn a_full_disk_stores_nothing_and_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = kiln_testkit::tmpfs::Tmpfs::mount(&mnt, "2m");

    let store = SqliteStore::open(&mnt.join("kiln.db")).await.unwrap();
    let mut earlier = Vec::new();
    for build in 1..=5 {
        earlier.push(new_row(&store, image("web", [1, 0, 0], build), &[]).await);
    }

    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
    }

    let mut big = image("web", [1, 0, 0], 6);
    big.body = format!(r#"{{"log":"{}"}}"#, "z".repeat(256 * 1024));
    let err = store.create(big.clone(), vec![], None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Full { .. }),
        "expected Full, got {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("no space left") && message.contains("kiln.db"),
        "{message}"
    );
    assert_eq!(store.get(&big.arn).await.unwrap(), None);
    for row in &earlier {
        assert_eq!(store.get(&row.arn).await.unwrap().as_ref(), Some(row));
    }
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 5);

    std::fs::remove_file(&filler).unwrap();
    let stored = new_row(&store, big.clone(), &[]).await;
    assert_eq!(store.get(&big.arn).await.unwrap(), Some(stored));
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 6);
    store.check().await.unwrap();
    store.close().await;
}
