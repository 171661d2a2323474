//! Builds the server starts: each checked, numbered PENDING and queued at once
//! ([`Builder::enqueue`]); the server's own workers (as many as its concurrency) and any
//! `kiln worker` claim the jobs from the store and run them under leases. A reaper gives the
//! jobs of vanished workers back to the queue. When the server stops, the builds its workers
//! run are cancelled (and recorded); queued builds wait for the next worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_core::build::queued::{self, JobRunner};
use kiln_core::build::worker::{self, WorkerPool};
use kiln_core::build::{BuildError, BuildOptions, Builder};
use kiln_core::pipeline::Plan;
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_instance::Launcher;
use tokio::task::JoinHandle;

use crate::error::ApiError;

/// What the server needs to run builds.
pub struct BuildSettings {
    /// The data directory.
    pub home: Home,
    /// How builds run (cache bound, registries, S3).
    pub options: BuildOptions,
    /// Starts builder and test instances.
    pub launcher: Arc<dyn Launcher>,
    /// Builds this server runs at once (its own workers); 0 leaves every build to `kiln
    /// worker` processes.
    pub concurrency: usize,
}

/// The server's builds.
pub struct Builds {
    settings: BuildSettings,
    store: Store,
    /// Held from a pipeline's trigger until its build is queued, so that two triggers of
    /// one pipeline at once see each other's PENDING build.
    starting: tokio::sync::Mutex<()>,
    /// The server's own workers, once started.
    pool: Mutex<Option<Arc<WorkerPool>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop_reaper: tokio::sync::watch::Sender<bool>,
    closing: AtomicBool,
}

impl Builds {
    /// Builds over a store.
    pub fn new(settings: BuildSettings, store: Store) -> Builds {
        Builds {
            settings,
            store,
            starting: tokio::sync::Mutex::new(()),
            pool: Mutex::default(),
            tasks: Mutex::default(),
            stop_reaper: tokio::sync::watch::channel(false).0,
            closing: AtomicBool::new(false),
        }
    }

    /// The data directory and how builds run (DistributeImage distributes with them).
    pub fn settings(&self) -> (&kiln_core::store::Home, &BuildOptions) {
        (&self.settings.home, &self.settings.options)
    }

    /// How take-backs and retirements reach registries and buckets.
    pub fn registry_access(&self) -> kiln_dist::RegistryAccess {
        self.settings.options.access()
    }

    /// Starts the server's workers and the reaper of lapsed leases.
    pub fn start_workers(&self) {
        let s = &self.settings;
        let notices: Arc<dyn kiln_core::notify::Notices> =
            Arc::new(crate::notices::ImageNotices::new(self.store.clone()));
        let mut tasks = vec![tokio::spawn(worker::reap_until(
            self.store.clone(),
            s.options.access(),
            Some(notices.clone()),
            self.stop_reaper.subscribe(),
        ))];
        if s.concurrency > 0 {
            let runner = JobRunner {
                home: s.home.clone(),
                options: s.options.clone(),
                launcher: s.launcher.clone(),
                store: self.store.clone(),
                notices: Some(notices),
            };
            let pool = WorkerPool::new(runner, queued::local_capabilities(s.launcher.as_ref()));
            let name = format!("{}/serve-{}", worker_host(), std::process::id());
            tasks.extend(pool.spawn(&name, s.concurrency));
            if let Ok(mut p) = self.pool.lock() {
                *p = Some(pool);
            }
        }
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Starts a pipeline's build; returns its image ARN once it is numbered (PENDING).
    ///
    /// A pipeline that already has a build waiting its turn (PENDING) gets that build again:
    /// a schedule and a person starting it at once, or two people, make one build.
    pub async fn start(&self, plan: Plan) -> Result<String, ApiError> {
        let _one_at_a_time = self.starting.lock().await;
        if let Some(pipeline) = &plan.origin.pipeline {
            if let Some(waiting) = self.waiting(pipeline).await? {
                tracing::info!(image = %waiting, "the pipeline's build is still waiting: no second build");
                return Ok(waiting);
            }
        }
        self.start_now(plan).await
    }

    /// A build of `pipeline` that waits for its turn.
    async fn waiting(&self, pipeline: &str) -> Result<Option<String>, ApiError> {
        let rows = self
            .store
            .db()
            .list(&kiln_store::Filter {
                kind: Some(kiln_store::Kind::Image),
                pipeline: Some(pipeline.to_owned()),
                states: vec![kiln_core::record::State::Pending.as_str().into()],
                limit: Some(1),
                ..kiln_store::Filter::default()
            })
            .await
            .map_err(ApiError::service)?;
        Ok(rows.into_iter().next().map(|r| r.arn))
    }

    async fn start_now(&self, plan: Plan) -> Result<String, ApiError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                "ServiceUnavailableException",
                "kiln is shutting down; start the build again once it is back",
            ));
        }
        let s = &self.settings;
        let builder = Builder::new(
            s.home.clone(),
            s.options.clone(),
            plan.origin.clone(),
            s.launcher.clone(),
        )
        .with_logging(plan.logging())
        .with_store(self.store.clone());
        let recipe = plan.build_recipe;
        // Like a build's, the check's future is not `Send`: it is driven on a blocking thread.
        let handle = tokio::runtime::Handle::current();
        let queued = tokio::task::spawn_blocking(move || handle.block_on(builder.enqueue(&recipe)))
            .await
            .map_err(|e| ApiError::service(format!("the build's check failed: {e}")))?;
        match queued {
            Ok(rec) => {
                tracing::info!(image = %rec.arn, "build queued");
                if let Some(pool) = self.pool.lock().ok().and_then(|p| p.clone()) {
                    pool.wake();
                }
                Ok(rec.arn)
            }
            Err(BuildError::Store(e)) => Err(ApiError::service(e)),
            // Refused before it was numbered: what the pipeline's resources say cannot be
            // built here.
            Err(e) => Err(ApiError::bad_request(e.to_string())),
        }
    }

    /// Stops taking jobs, asks every build this server's workers run to stop (a
    /// distributing one finishes first) and waits until each has recorded how it ended.
    /// Queued builds stay queued for the next worker.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.stop_reaper.send(true);
        if let Some(pool) = self.pool.lock().ok().and_then(|p| p.clone()) {
            pool.stop().await;
        }
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// This host's name for worker names (its machine id when it has none).
fn worker_host() -> String {
    let name = kiln_core::record::host_name();
    if name.is_empty() {
        kiln_core::record::this_host().to_owned()
    } else {
        name
    }
}

/// The server's builds as the scheduler's [`Starter`](kiln_core::scheduler::Starter): runs
/// started by schedule share the queue with the API's.
pub struct ServerStarter(pub std::sync::Arc<crate::App>);

#[async_trait::async_trait]
impl kiln_core::scheduler::Starter for ServerStarter {
    async fn start(&self, plan: Plan) -> Result<String, String> {
        self.0.builds.start(plan).await.map_err(|e| e.message)
    }
}
