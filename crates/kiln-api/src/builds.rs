//! Builds the server runs: each numbered and PENDING at once, then run while it holds a permit
//! of the configured concurrency; cancelled (and recorded) when the server stops.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use kiln_core::build::{BuildEvent, BuildObserver, BuildOptions, Builder};
use kiln_core::pipeline::Plan;
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_instance::Launcher;
use tokio::sync::{oneshot, Semaphore};
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
    /// Builds at once; the rest wait PENDING.
    pub concurrency: usize,
}

/// The server's builds.
pub struct Builds {
    settings: BuildSettings,
    store: Store,
    /// Held from a pipeline's trigger until its build is numbered, so that two triggers of
    /// one pipeline at once see each other's PENDING build.
    starting: tokio::sync::Mutex<()>,
    queue: Arc<Semaphore>,
    running: Arc<Mutex<HashSet<String>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closing: std::sync::atomic::AtomicBool,
}

/// Tells `start` the build's ARN once it is numbered, and keeps the set of running builds.
struct Watch {
    started: Mutex<Option<oneshot::Sender<String>>>,
    running: Arc<Mutex<HashSet<String>>>,
}

impl BuildObserver for Watch {
    fn event(&self, e: &BuildEvent) {
        match e {
            BuildEvent::Started { record } => {
                if let Ok(mut r) = self.running.lock() {
                    r.insert(record.arn.clone());
                }
                tracing::info!(image = %record.arn, "build started");
                if let Some(tx) = self.started.lock().ok().and_then(|mut s| s.take()) {
                    let _ = tx.send(record.arn.clone());
                }
            }
            BuildEvent::Stage { state } => tracing::info!(%state, "build stage"),
            BuildEvent::Finished { record } => {
                if let Ok(mut r) = self.running.lock() {
                    r.remove(&record.arn);
                }
                tracing::info!(image = %record.arn, state = %record.state, "build ended");
            }
            _ => {}
        }
    }
}

impl Builds {
    /// Builds over a store.
    pub fn new(settings: BuildSettings, store: Store) -> Builds {
        let queue = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Builds {
            settings,
            store,
            starting: tokio::sync::Mutex::new(()),
            queue,
            running: Arc::default(),
            tasks: Mutex::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How to reach the registries builds push to (to delete what they pushed).
    /// The data directory and how builds run (DistributeImage distributes with them).
    pub fn settings(&self) -> (&kiln_core::store::Home, &BuildOptions) {
        (&self.settings.home, &self.settings.options)
    }

    /// How take-backs and retirements reach registries and buckets.
    pub fn registry_access(&self) -> kiln_dist::RegistryAccess {
        self.settings.options.access()
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
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
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
        .with_store(self.store.clone())
        .with_notices(Arc::new(crate::notices::ImageNotices::new(
            self.store.clone(),
        )))
        .with_queue(self.queue.clone());
        let (started_tx, started_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let watch = Arc::new(Watch {
            started: Mutex::new(Some(started_tx)),
            running: self.running.clone(),
        });
        let recipe = plan.build_recipe;
        // The build's future is not `Send` (it holds borrows across awaits that the compiler
        // cannot prove safe to move), so it is driven on a blocking thread of the runtime,
        // which may block on it, rather than spawned as a task.
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let r = handle.block_on(builder.build(&recipe, watch));
            let _ = done_tx.send(r.map(|rec| rec.arn).map_err(|e| e.to_string()));
        });
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|h| !h.is_finished());
            t.push(task);
        }
        tokio::select! {
            Ok(arn) = started_rx => Ok(arn),
            r = done_rx => match r {
                Ok(Ok(arn)) => Ok(arn),
                // Refused before it was numbered: what the pipeline's resources say cannot
                // be built here.
                Ok(Err(e)) => Err(ApiError::bad_request(e)),
                Err(_) => Err(ApiError::service("the build task ended without an answer")),
            },
        }
    }

    /// Asks every running build to stop (a distributing one finishes first) and waits until
    /// each has recorded how it ended.
    pub async fn shutdown(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let arns: Vec<String> = self
            .running
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        for arn in &arns {
            tracing::info!(image = %arn, "cancelling the build: kiln is stopping");
            if let Err(e) = self.store.db().request_cancel(arn).await {
                tracing::warn!(image = %arn, error = %e, "could not ask the build to stop");
            }
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

/// The server's builds as the scheduler's [`Starter`](kiln_core::scheduler::Starter): runs
/// started by schedule share the queue with the API's.
pub struct ServerStarter(pub std::sync::Arc<crate::App>);

#[async_trait::async_trait]
impl kiln_core::scheduler::Starter for ServerStarter {
    async fn start(&self, plan: Plan) -> Result<String, String> {
        self.0.builds.start(plan).await.map_err(|e| e.message)
    }
}
