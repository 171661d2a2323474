//! The PostgreSQL backend on a real server: the whole conformance suite of `StateStore`, each
//! check on a database of its own in one cluster that this test binary starts, and what is
//! PostgreSQL's own: servers migrating at once, a schema of a newer kiln, build numbers taken
//! through several connections, errors that name the server but never its password, a
//! server that restarts under a store, a full disk, and ten thousand images. The build queue's
//! conformance suite too, and what is PostgreSQL's own there: waits woken by `NOTIFY`, claims
//! through a server crash, reapers racing, a worker that cannot run a page of jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kiln_store::conformance::{
    image, make_image, Backend, Fresh, FreshQueue, LeaderBackend, QueueBackend,
};
use kiln_store::{
    AttemptEnd, Capabilities, Filter, JobQueue, JobState, Leadership, Needs, NewJob, PgStore,
    StateStore, StoreError,
};
use kiln_testkit::postgres::Cluster;

/// The one cluster of this test binary, started by the first test that needs it (and stopped
/// by its watchdog when the binary ends).
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// A new, empty database in the cluster; its URL.
fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("kiln_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let cluster = cluster();
    cluster.create_database(&name);
    cluster.url(&name)
}

/// The database a URL names.
fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Stores on databases of their own, each new and empty.
struct Postgres;

#[async_trait::async_trait(?Send)]
impl Backend for Postgres {
    /// The database's URL.
    type Guard = String;

    async fn fresh(&self) -> Fresh<String> {
        let url = fresh_database();
        let store = PgStore::connect(&url).await.unwrap();
        Fresh {
            store: Arc::new(store),
            guard: url,
        }
    }

    async fn open_again(&self, url: &String) -> Arc<dyn StateStore> {
        Arc::new(PgStore::connect(url).await.unwrap())
    }
}

mod conformance {
    use super::Postgres;

    kiln_store::conformance_tests!(Postgres);
}

#[async_trait::async_trait(?Send)]
impl QueueBackend for Postgres {
    /// The database's URL.
    type Guard = String;

    async fn fresh_queue(&self) -> FreshQueue<String> {
        let url = fresh_database();
        let store = Arc::new(PgStore::connect(&url).await.unwrap());
        FreshQueue {
            queue: store.clone(),
            logs: store.clone(),
            store,
            guard: url,
        }
    }

    async fn queue_again(&self, url: &String) -> Arc<dyn JobQueue> {
        Arc::new(PgStore::connect(url).await.unwrap())
    }
}

/// The build queue's checks, in a module of their own so that their names cannot clash.
mod queue {
    use super::Postgres;

    kiln_store::job_queue_tests!(Postgres);
}

#[async_trait::async_trait(?Send)]
impl LeaderBackend for Postgres {
    type Guard = String;

    async fn fresh_leader(&self) -> (Arc<dyn Leadership>, String) {
        let url = fresh_database();
        (Arc::new(PgStore::connect(&url).await.unwrap()), url)
    }

    async fn leader_again(&self, url: &String) -> Arc<dyn Leadership> {
        Arc::new(PgStore::connect(url).await.unwrap())
    }
}

/// Leadership's checks.
mod leader {
    use super::Postgres;

    kiln_store::leadership_tests!(Postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_at_once_migrate_once() {
    for _ in 0..3 {
        let url = fresh_database();
        let connects: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::connect(&url).await })
            })
            .collect();
        for connect in connects {
            connect.await.unwrap().unwrap();
        }
        let versions = cluster().psql(
            database_of(&url),
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM kiln_schema",
        );
        let expected: Vec<String> = (1..=PgStore::SCHEMA_VERSION)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(versions.trim(), expected.join(","), "each migration once");
    }
}

#[tokio::test]
async fn a_schema_of_a_newer_kiln_is_refused_and_left_alone() {
    let url = fresh_database();
    let store = PgStore::connect(&url).await.unwrap();
    store
        .create(image("web", [1, 0, 0], 1), vec![], None)
        .await
        .unwrap();
    store.close().await;
    let newer = PgStore::SCHEMA_VERSION + 1;
    let db = database_of(&url);
    cluster().psql(
        db,
        &format!("INSERT INTO kiln_schema (version, applied_ms) VALUES ({newer}, 0)"),
    );
    let e = PgStore::connect(&url).await.unwrap_err();
    match &e {
        StoreError::TooNew {
            found, supported, ..
        } => assert_eq!((*found, *supported), (newer, PgStore::SCHEMA_VERSION)),
        other => panic!("expected TooNew, got {other:?}"),
    }
    let message = e.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}/{db}", cluster().port)),
        "{message}"
    );
    assert!(message.contains("upgrade kiln"), "{message}");
    assert_eq!(cluster().psql(db, "SELECT count(*) FROM rows").trim(), "1");
}

#[tokio::test]
async fn another_programs_database_is_not_taken_over() {
    let url = fresh_database();
    let db = database_of(&url);
    cluster().psql(db, "CREATE TABLE customers (id INTEGER PRIMARY KEY)");
    let e = PgStore::connect(&url).await.unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    assert!(e.to_string().contains("customers"), "{e}");
    let tables = cluster().psql(
        db,
        "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables.trim(), "customers", "kiln created nothing");
}

/// Builds of one version taken by `handles` stores (each with its own connections), `each`
/// builds apiece, all at once.
async fn race_for_builds(handles: usize, each: usize) -> Vec<u32> {
    let url = fresh_database();
    let mut stores = Vec::new();
    for _ in 0..handles {
        stores.push(PgStore::connect(&url).await.unwrap());
    }
    let tasks: Vec<_> = stores
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                let make = make_image("race");
                let mut builds = Vec::new();
                for _ in 0..each {
                    let row = store
                        .create_build(image("race", [1, 0, 0], 0), vec![], &make)
                        .await
                        .unwrap();
                    builds.push(row.build.unwrap());
                }
                builds
            })
        })
        .collect();
    let mut builds = Vec::new();
    for task in tasks {
        builds.extend(task.await.unwrap());
    }
    builds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_taken_through_many_connections_are_distinct() {
    let builds = race_for_builds(4, 15).await;
    let distinct: BTreeSet<u32> = builds.iter().copied().collect();
    assert_eq!(builds.len(), 60);
    assert_eq!(distinct, (1..=60).collect(), "{builds:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    let port = kiln_testkit::registry::free_port();
    let url = format!("postgres://kiln:pa55-w0rd-secret@127.0.0.1:{port}/kilnstate");
    let e = PgStore::connect(&url).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    let (message, debug) = (e.to_string(), format!("{e:?}"));
    assert!(
        message.contains(&format!("127.0.0.1:{port}/kilnstate")),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");
    for shown in [&message, &debug] {
        assert!(!shown.contains("pa55-w0rd-secret"), "{shown}");
        assert!(!shown.contains("postgres://"), "{shown}");
    }

    // A server that is there but has no such database says so, also without the password.
    let url = format!(
        "postgres://postgres:pa55-w0rd-secret@127.0.0.1:{}/no_such_db",
        cluster().port
    );
    let e = PgStore::connect(&url).await.unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(message.contains("no_such_db"), "{message}");
    assert!(!format!("{message}{e:?}").contains("pa55-w0rd-secret"));
}

#[tokio::test]
async fn a_store_outlives_a_server_crash() {
    // A cluster of its own: the shared one serves the other tests meanwhile.
    let own = Cluster::start();
    own.create_database("kiln");
    let store = PgStore::connect(&own.url("kiln")).await.unwrap();
    let first = store
        .create(image("web", [1, 0, 0], 1), vec![], None)
        .await
        .unwrap()
        .into_row();
    own.restart_immediate();
    // The connections of the pool died with the server; new ones are opened.
    assert_eq!(store.get(&first.arn).await.unwrap(), Some(first));
    let second = store
        .create_build(image("web", [1, 0, 0], 0), vec![], &make_image("web"))
        .await
        .unwrap();
    assert_eq!(second.build, Some(2));
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 2);
}

#[tokio::test]
async fn text_postgresql_cannot_hold_is_refused_and_stores_nothing() {
    let url = fresh_database();
    let store = PgStore::connect(&url).await.unwrap();
    let mut row = image("web", [1, 0, 0], 1);
    row.body = "{\"log\":\"a\u{0}b\"}".to_owned();
    let e = store.create(row.clone(), vec![], None).await.unwrap_err();
    assert!(matches!(e, StoreError::Server { .. }), "{e:?}");
    assert!(e.to_string().contains("0x00"), "{e}");
    assert_eq!(store.get(&row.arn).await.unwrap(), None);
}

/// Text that PostgreSQL's compression cannot shrink, `len` bytes.
fn noise(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect()
}

#[tokio::test]
async fn a_full_disk_stores_nothing_and_loses_nothing() {
    // The rows table in a tablespace on a small tmpfs of its own; the rest of the database
    // (and the server's WAL) stays where it was.
    let own = Cluster::start();
    own.create_database("kiln");
    let dir = tempfile::TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = kiln_testkit::tmpfs::Tmpfs::mount(&mnt, "4m");
    let space = mnt.join("space");
    std::fs::create_dir(&space).unwrap();
    own.hand_over(&space);
    own.psql(
        "postgres",
        &format!("CREATE TABLESPACE small LOCATION '{}'", space.display()),
    );
    let store = PgStore::connect(&own.url("kiln")).await.unwrap();
    own.psql("kiln", "ALTER TABLE rows SET TABLESPACE small");
    let mut earlier = Vec::new();
    for build in 1..=5 {
        let row = store
            .create(image("web", [1, 0, 0], build), vec![], None)
            .await
            .unwrap();
        earlier.push(row.into_row());
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
    big.body = format!(r#"{{"log":"{}"}}"#, noise(512 * 1024));
    let err = store.create(big.clone(), vec![], None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Full { .. }),
        "expected Full, got {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("no space left") && message.contains(&format!("{}/kiln", own.port)),
        "{message}"
    );
    assert_eq!(store.get(&big.arn).await.unwrap(), None);
    for row in &earlier {
        assert_eq!(store.get(&row.arn).await.unwrap().as_ref(), Some(row));
    }
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 5);

    std::fs::remove_file(&filler).unwrap();
    let stored = store
        .create(big.clone(), vec![], None)
        .await
        .unwrap()
        .into_row();
    assert_eq!(store.get(&big.arn).await.unwrap(), Some(stored));
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 6);
    store.close().await;
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_build_without_a_version_store_one() {
    // The unique index cannot tell these apart (a NULL version is distinct from every other),
    // so only the lock around create's own look keeps the second out.
    let url = fresh_database();
    let (a, b) = (
        PgStore::connect(&url).await.unwrap(),
        PgStore::connect(&url).await.unwrap(),
    );
    for round in 0..20 {
        let row = |side: &str| {
            let mut row = image(&format!("unversioned{round}"), [0, 0, 0], 1);
            row.version = None;
            row.arn = format!("{}-{side}", row.arn);
            row
        };
        let (one, two) = (a.clone(), b.clone());
        let (left, right) = (row("a"), row("b"));
        let left = tokio::spawn(async move { one.create(left, vec![], None).await });
        let right = tokio::spawn(async move { two.create(right, vec![], None).await });
        let outcomes = [left.await.unwrap(), right.await.unwrap()];
        let stored = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(stored, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(StoreError::AlreadyExists { .. }))),
            "{outcomes:?}"
        );
    }
}

fn sandbox_caps() -> Capabilities {
    Capabilities {
        builders: ["sandbox".to_owned()].into(),
        arch: "x86_64".to_owned(),
        ..Capabilities::default()
    }
}

fn queued(id: &str, builder: &str, max_attempts: u32) -> NewJob {
    NewJob {
        id: id.to_owned(),
        owner: "000000000000".to_owned(),
        needs: Needs {
            builder: builder.to_owned(),
            arch: "x86_64".to_owned(),
            ..Needs::default()
        },
        payload: "{}".to_owned(),
        max_attempts,
    }
}

const LONG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_wakes_when_another_handle_queues_a_job() {
    let url = fresh_database();
    let a = Arc::new(PgStore::connect(&url).await.unwrap());
    let b = PgStore::connect(&url).await.unwrap();

    // Nothing queued: the wait lasts its timeout (longer than the polling default's second),
    // and makes the listener that later waits keep.
    let started = Instant::now();
    a.wait_for_jobs(Duration::from_millis(1500)).await.unwrap();
    let idle = started.elapsed();
    eprintln!("an idle wait of 1.5 s: {idle:?}");
    assert!(
        idle >= Duration::from_millis(1450) && idle < Duration::from_secs(3),
        "{idle:?}"
    );

    // Two waits on one handle: a job queued through another wakes both, within a second.
    let waits: Vec<_> = (0..2)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                a.wait_for_jobs(Duration::from_secs(20)).await.unwrap();
                Instant::now()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued_at = Instant::now();
    assert!(b.enqueue_job(queued("j1", "sandbox", 3)).await.unwrap());
    for wait in waits {
        let woke = wait.await.unwrap().duration_since(queued_at);
        eprintln!("woken after {woke:?}");
        assert!(woke < Duration::from_secs(1), "{woke:?}");
    }

    // A job queued while nobody waits is heard by the next wait: the listener was kept.
    assert!(b.enqueue_job(queued("j2", "sandbox", 3)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    a.wait_for_jobs(Duration::from_secs(20)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A job queued again is not news: nothing is told.
    assert!(!b.enqueue_job(queued("j2", "sandbox", 3)).await.unwrap());
    let started = Instant::now();
    a.wait_for_jobs(Duration::from_millis(600)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );

    // A job taken back from a vanished worker is told like a new one.
    let caps = sandbox_caps();
    for _ in 0..2 {
        b.claim_job("w1", &caps, Duration::from_millis(100))
            .await
            .unwrap()
            .expect("a job");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wait = {
        let a = a.clone();
        tokio::spawn(async move {
            a.wait_for_jobs(Duration::from_secs(20)).await.unwrap();
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requeued_at = Instant::now();
    assert_eq!(b.requeue_expired().await.unwrap().len(), 2);
    let woke = wait.await.unwrap().duration_since(requeued_at);
    assert!(woke < Duration::from_secs(1), "{woke:?}");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_outlives_a_server_crash_without_spinning() {
    // A cluster of its own: the shared one serves the other tests meanwhile.
    let own = Arc::new(Cluster::start());
    own.create_database("kiln");
    let a = Arc::new(PgStore::connect(&own.url("kiln")).await.unwrap());
    let b = PgStore::connect(&own.url("kiln")).await.unwrap();
    a.wait_for_jobs(Duration::from_millis(200)).await.unwrap();

    // Waits of 300 ms in a loop while the server crashes and starts again: each lasts about
    // its timeout, or ends at once when it finds the connection lost; none spins.
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut waits = 0u32;
            while !stop.load(Ordering::Relaxed) {
                a.wait_for_jobs(Duration::from_millis(300)).await.unwrap();
                waits += 1;
            }
            (waits, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cluster = own.clone();
    let restart = Instant::now();
    tokio::task::spawn_blocking(move || cluster.restart_immediate())
        .await
        .unwrap();
    eprintln!("the restart took {:?}", restart.elapsed());
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let (waits, spent) = waiter.await.unwrap();
    eprintln!("{waits} waits in {spent:?} across the crash");
    let most = u32::try_from(spent.as_millis() / 300).unwrap() + 6;
    assert!(waits <= most, "{waits} waits in {spent:?}: it spins");

    // The listener is back: a wait lasts its timeout again, and hears what another queues.
    let mut tries = 0;
    loop {
        let started = Instant::now();
        a.wait_for_jobs(Duration::from_millis(300)).await.unwrap();
        if started.elapsed() >= Duration::from_millis(280) {
            break;
        }
        tries += 1;
        assert!(tries < 5, "every wait ends at once after the restart");
    }
    let wait = {
        let a = a.clone();
        tokio::spawn(async move {
            a.wait_for_jobs(Duration::from_secs(20)).await.unwrap();
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued_at = Instant::now();
    assert!(b.enqueue_job(queued("after", "sandbox", 3)).await.unwrap());
    let woke = wait.await.unwrap().duration_since(queued_at);
    assert!(woke < Duration::from_secs(1), "{woke:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_through_a_server_crash_give_each_job_once() {
    // A cluster of its own: it is crashed mid-run.
    let own = Arc::new(Cluster::start());
    own.create_database("kiln");
    let url = own.url("kiln");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Arc::new(PgStore::connect(&url).await.unwrap()));
    }
    for i in 0..200 {
        handles[0]
            .enqueue_job(queued(&format!("job-{i:03}"), "sandbox", 3))
            .await
            .unwrap();
    }

    // A hundred claimers, started over half a second and pausing after each claim, so that
    // the crash comes while they claim; every error is tried again.
    let claimed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let claimers: Vec<_> = (0..100)
        .map(|n| {
            let q = handles[n % handles.len()].clone();
            let (claimed, errors, restarted) = (claimed.clone(), errors.clone(), restarted.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * n as u64)).await;
                let give_up = Instant::now() + Duration::from_secs(120);
                let mut mine = Vec::new();
                loop {
                    match q.claim_job(&format!("w{n}"), &sandbox_caps(), LONG).await {
                        Ok(Some((job, lease))) => {
                            assert_eq!(lease.attempt, 1, "{job:?}");
                            mine.push((job.id, restarted.load(Ordering::SeqCst)));
                            claimed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            assert!(Instant::now() < give_up, "claimer {n} keeps failing: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                mine
            })
        })
        .collect();
    while claimed.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = claimed.load(Ordering::SeqCst);
    let cluster = own.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || cluster.restart_immediate())
        .await
        .unwrap();
    restarted.store(true, Ordering::SeqCst);
    let at_restart = claimed.load(Ordering::SeqCst);
    eprintln!(
        "crashed after {before} claims, back after {:?} with {at_restart}",
        started.elapsed()
    );
    let mut claims = Vec::new();
    for claimer in claimers {
        claims.extend(claimer.await.unwrap());
    }
    let after = claims.iter().filter(|(_, late)| *late).count();
    eprintln!(
        "{} claims, {after} of them after the restart, {} errors",
        claims.len(),
        errors.load(Ordering::SeqCst)
    );
    assert!(
        at_restart < 200 && after > 0,
        "the crash did not come mid-run: {at_restart} claims before it ended"
    );
    let ids: BTreeSet<&String> = claims.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), claims.len(), "a job claimed twice");

    // As the database says: every job was claimed, once, and none has two running attempts.
    // A claim whose commit was stored while its answer was lost in the crash holds a job
    // nobody knows of: its lease lapses and it is taken back like any other.
    let jobs = handles[1].jobs(&[], 1000).await.unwrap();
    assert_eq!(jobs.len(), 200);
    for job in &jobs {
        assert_eq!(job.state, JobState::Running, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "{job:?}");
        assert_eq!(job.attempts[0].end, AttemptEnd::Running, "{job:?}");
    }
    let orphans: BTreeSet<String> = jobs
        .iter()
        .map(|j| j.id.clone())
        .filter(|id| !ids.contains(id))
        .collect();
    eprintln!("{} claims stored but not answered", orphans.len());
    assert!(orphans.len() <= 100, "{orphans:?}");
    if !orphans.is_empty() {
        let list: Vec<String> = orphans.iter().map(|id| format!("'{id}'")).collect();
        own.psql(
            "kiln",
            &format!(
                "UPDATE jobs SET expires_ms = 0 WHERE id IN ({})",
                list.join(",")
            ),
        );
        let back = handles[2].requeue_expired().await.unwrap();
        let back: BTreeSet<String> = back.into_iter().map(|r| r.job.id).collect();
        assert_eq!(back, orphans);
        for _ in 0..orphans.len() {
            let (job, lease) = handles[3]
                .claim_job("late", &sandbox_caps(), LONG)
                .await
                .unwrap()
                .expect("an orphan");
            assert_eq!(lease.attempt, 2);
            assert_eq!(job.attempts[0].end, AttemptEnd::Lost);
        }
    }
    assert!(handles[0]
        .claim_job("last", &sandbox_caps(), LONG)
        .await
        .unwrap()
        .is_none());
    for handle in &handles {
        handle.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_reaping_at_once_take_each_job_back_once() {
    const JOBS: usize = 200;
    let url = fresh_database();
    let a = Arc::new(PgStore::connect(&url).await.unwrap());
    let b = Arc::new(PgStore::connect(&url).await.unwrap());
    for i in 0..JOBS {
        a.enqueue_job(queued(&format!("job-{i:03}"), "sandbox", 10))
            .await
            .unwrap();
    }
    let mut split = Vec::new();
    for round in 1..=4usize {
        let mut claimed = 0;
        while a
            .claim_job(
                &format!("w{round}"),
                &sandbox_caps(),
                Duration::from_millis(50),
            )
            .await
            .unwrap()
            .is_some()
        {
            claimed += 1;
        }
        assert_eq!(claimed, JOBS);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Both reapers start together.
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let reap = |q: Arc<PgStore>| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let began = Instant::now();
                let reclaimed = q.requeue_expired().await.unwrap();
                (reclaimed, began, Instant::now())
            })
        };
        let (by_a, by_b) = tokio::join!(reap(a.clone()), reap(b.clone()));
        let ((by_a, a_began, a_ended), (by_b, b_began, b_ended)) = (by_a.unwrap(), by_b.unwrap());
        let overlap = a_began < b_ended && b_began < a_ended;
        split.push((
            by_a.len(),
            by_b.len(),
            overlap,
            a_ended - a_began,
            b_ended - b_began,
        ));
        let all: Vec<_> = by_a.iter().chain(&by_b).collect();
        let ids: BTreeSet<&str> = all.iter().map(|r| r.job.id.as_str()).collect();
        assert_eq!(
            (all.len(), ids.len()),
            (JOBS, JOBS),
            "each job taken back once"
        );
        for r in all {
            assert_eq!(r.worker, format!("w{round}"));
            assert_eq!(r.job.state, JobState::Queued);
            assert_eq!(r.job.attempts.len(), round, "{:?}", r.job);
            assert!(r.job.attempts.iter().all(|a| a.end == AttemptEnd::Lost));
        }
    }
    eprintln!("taken back by each reaper, whether they overlapped, how long each took: {split:?}");
    assert!(
        split.iter().any(|(_, _, overlap, _, _)| *overlap),
        "the reapers never ran at once: {split:?}"
    );
    let jobs = a.jobs(&[JobState::Queued], 1000).await.unwrap();
    assert_eq!(jobs.len(), JOBS);
    assert!(jobs.iter().all(|j| j.attempts.len() == 4
        && j.attempts
            .iter()
            .all(|a| a.end == AttemptEnd::Lost && a.ended_ms.is_some())));
}

#[tokio::test]
async fn a_worker_finds_its_job_behind_pages_it_cannot_run() {
    let store = PgStore::connect(&fresh_database()).await.unwrap();
    for i in 0..250 {
        store
            .enqueue_job(queued(&format!("vm-{i:03}"), "vm", 3))
            .await
            .unwrap();
    }
    store
        .enqueue_job(queued("sandbox", "sandbox", 3))
        .await
        .unwrap();
    let (job, _) = store
        .claim_job("w1", &sandbox_caps(), LONG)
        .await
        .unwrap()
        .expect("the job behind the vm jobs");
    assert_eq!(job.id, "sandbox");
    assert!(store
        .claim_job("w1", &sandbox_caps(), LONG)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.jobs(&[JobState::Queued], 1000).await.unwrap().len(),
        250
    );
}
