//! One build: recipe → parent layers → a sandbox per component (its writable layer becomes one
//! OCI layer, cached by content) → tests in a fresh sandbox from the captured image → each
//! region, atomically → AVAILABLE. Any failure leaves the image FAILED with the stage, the
//! step, its last output lines and the log, and nothing in any region.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use kiln_instance::sandbox::{RunLock, Sandbox, SandboxSpec};
use kiln_instance::vm::{Vm, VmSpec};
use kiln_instance::Instance;
use kiln_toe::events::{ConsoleLog, Event, Fanout, Observer};
use kiln_toe::loader::{DocumentLoader, LoadError, Resolved};
use kiln_toe::report::{ExecutionReport, StepStatus};
use kiln_toe::{DocumentRun, Engine, RunSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{StepCache, StepKey};
use crate::disk::{self, GuestAgent};
use crate::instances::{Instances, KeptInstance, KeptKind};
use crate::inventory;
use crate::parent::{self, compression_of, Parent};
use crate::principal::Principal;
use crate::recipe::{BuilderKind, ComponentSource, Recipe};
use crate::record::*;
use crate::store::{self, read_json, sha256_hex, write_json, Home, LayerStore, StoredLayer};
use kiln_image::disk::DiskFormat;

/// How a build runs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild every component (the cache is refreshed, not read).
    pub no_cache: bool,
    /// Make the parent image again (re-bootstrap) instead of reusing it.
    pub refresh_parent: bool,
    /// Timestamp for layer files and the image config (`SOURCE_DATE_EPOCH`); the build's start
    /// time when `None`.
    pub epoch: Option<i64>,
    /// The sandbox helper: program and arguments.
    pub helper: (PathBuf, Vec<String>),
    /// The VM keeper (the process that owns QEMU): program and arguments.
    pub keeper: (PathBuf, Vec<String>),
    /// `kiln-agent`, which kiln copies into VMs to run steps; needed for disk images.
    pub agent: Option<PathBuf>,
    /// Most bytes the layer store may use before least-recently-used layers are removed.
    pub cache_max_bytes: u64,
    /// Credentials for registries parent images come from.
    pub registries: Vec<parent::RegistryCredentials>,
}

/// Something a build reports while it runs.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    /// The build has a number and is starting.
    Started(&'a ImageRecord),
    /// A new stage.
    Stage(State),
    /// A line about what is happening (bootstrap output, capture, distribution).
    Progress(&'a str),
    /// A component starts (or is taken from the cache).
    ComponentStarted {
        /// 0-based.
        index: usize,
        /// How many.
        total: usize,
        /// Its name.
        name: &'a str,
        /// Whether it comes from the cache.
        cached: bool,
    },
    /// A component is done.
    ComponentFinished {
        /// 0-based.
        index: usize,
        /// What happened.
        record: &'a ComponentRecord,
    },
    /// An event of the component engine (steps, output).
    Toe(&'a Event<'a>),
    /// The build ended (AVAILABLE or FAILED).
    Finished(&'a ImageRecord),
}

/// Receives build events.
pub trait BuildObserver: Send + Sync {
    /// One event.
    fn event(&self, e: &BuildEvent<'_>);
}

/// Errors that stop a build before it gets a number (bad input).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A component document is not valid or cannot be found.
    #[error("component {index} ({source_name}):\n{message}")]
    Component {
        /// 1-based position in the recipe.
        index: usize,
        /// Path or ARN.
        source_name: String,
        /// The diagnostics.
        message: String,
    },
    /// kiln cannot build here.
    #[error("{0}")]
    Environment(String),
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// A component, loaded and checked.
struct Component {
    name: String,
    source: String,
    arn: Option<String>,
    resolved: Resolved,
    sha256: String,
    parameters: Vec<(String, String)>,
    cache: bool,
    has_layer: bool,
    has_test: bool,
}

/// A failure inside a stage, on its way into the record.
struct StageFailure {
    stage: State,
    component: Option<String>,
    step: Option<String>,
    reason: String,
    tail: Vec<String>,
    log: Option<PathBuf>,
    kept: Option<KeptInstance>,
}

impl StageFailure {
    /// The first failed step of a run, with its last output lines and log.
    fn from_run(
        stage: State,
        component: Option<String>,
        run: &SandboxRun,
        log_dir: &std::path::Path,
    ) -> Self {
        let (step, reason) = first_failure(&run.report);
        StageFailure {
            stage,
            component,
            tail: step.as_deref().map(|s| run.tails.of(s)).unwrap_or_default(),
            step,
            reason,
            log: Some(log_dir.join("console.log")),
            kept: run.kept.clone(),
        }
    }

    fn new(stage: State, reason: impl Into<String>) -> Self {
        StageFailure {
            stage,
            component: None,
            step: None,
            reason: reason.into(),
            tail: Vec::new(),
            log: None,
            kept: None,
        }
    }
}

/// Remembers the last output lines of every step, to quote a failing one.
#[derive(Default)]
struct Tails(Mutex<HashMap<String, VecDeque<String>>>);

const TAIL: usize = 15;

impl Observer for Tails {
    fn event(&self, e: &Event<'_>) {
        if let Event::Output { step, line, .. } = e {
            if let Ok(mut m) = self.0.lock() {
                let q = m
                    .entry(format!("{}/{}", step.phase, step.step))
                    .or_default();
                q.push_back(line.to_string());
                if q.len() > TAIL {
                    q.pop_front();
                }
            }
        }
    }
}

impl Tails {
    fn of(&self, step: &str) -> Vec<String> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(step).map(|q| q.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

/// Forwards engine events to the build's observer.
struct Forward(Arc<dyn BuildObserver>);

impl Observer for Forward {
    fn event(&self, e: &Event<'_>) {
        self.0.event(&BuildEvent::Toe(e));
    }
}

/// A test result kept for an image that passed, so an identical rebuild need not test again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestCacheEntry {
    build_version: String,
    passed_at: DateTime<Utc>,
    packages: Vec<Package>,
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn timings(report: &ExecutionReport) -> Vec<StepTiming> {
    report
        .documents
        .iter()
        .flat_map(|d| d.phases.iter().map(move |p| (d, p)))
        .flat_map(|(_, p)| {
            p.steps.iter().map(move |s| StepTiming {
                step: format!("{}/{}", p.name, s.name),
                action: s.action.clone(),
                status: serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                duration_ms: (s.end_time - s.start_time).num_milliseconds().max(0) as u64,
            })
        })
        .collect()
}

/// Saves a record, warning when the store cannot take it (the build goes on; the final
/// record is saved with an error).
async fn save(records: &Records, rec: &ImageRecord) {
    if let Err(e) = records.save(rec).await {
        tracing::warn!("cannot save the build record: {e}");
    }
}

/// Returns once `kiln image cancel` has asked to stop this build, unless it is distributing.
async fn cancel_requested(records: &Records, arn: &str, distributing: &AtomicBool) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if distributing.load(Ordering::SeqCst) {
            continue;
        }
        if records
            .store()
            .db()
            .cancel_requested(arn)
            .await
            .unwrap_or(false)
        {
            return;
        }
    }
}

/// The first failed step of a report: `(phase/step, message)`, or the phase-level reason.
fn first_failure(report: &ExecutionReport) -> (Option<String>, String) {
    for d in &report.documents {
        for p in &d.phases {
            for s in &p.steps {
                if s.status == StepStatus::Failed {
                    return (
                        Some(format!("{}/{}", p.name, s.name)),
                        s.failure_message.clone(),
                    );
                }
            }
            if !p.status.ok() && !p.failure_message.is_empty() {
                return (None, p.failure_message.clone());
            }
        }
        if !d.status.ok() && !d.failure_message.is_empty() {
            return (None, d.failure_message.clone());
        }
    }
    (None, report.failure_message.clone())
}

/// Runs builds in a data directory.
pub struct Builder {
    home: Home,
    options: BuildOptions,
    loader: DocumentLoader,
    store: Option<crate::state::Store>,
    origin: Origin,
}

/// Where a build comes from, for its record.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Who started it.
    pub principal: Principal,
    /// The pipeline, when a pipeline runs it.
    pub pipeline: Option<String>,
    /// The stored recipe.
    pub recipe_arn: Option<String>,
    /// The infrastructure and distribution configurations.
    pub configurations: Vec<String>,
}

impl Origin {
    /// A build a principal started from a recipe file (no pipeline, no stored recipe).
    pub fn of(principal: Principal) -> Self {
        Origin {
            principal,
            pipeline: None,
            recipe_arn: None,
            configurations: Vec::new(),
        }
    }
}

impl Builder {
    /// A builder for a data directory; `origin` says who builds, for the records.
    pub fn new(home: Home, options: BuildOptions, origin: Origin) -> Self {
        Builder {
            home,
            options,
            loader: DocumentLoader::new(),
            store: None,
            origin,
        }
    }

    /// Records builds in this store (opened from the data directory otherwise); components
    /// named by ARN come from it too.
    pub fn with_store(mut self, store: crate::state::Store) -> Self {
        self.loader = self
            .loader
            .with_resolver(Arc::new(crate::resources::StoreResolver::new(
                store.clone(),
                self.origin.principal.clone(),
            )));
        self.store = Some(store);
        self
    }

    /// Where component documents named by ARN come from.
    pub fn with_loader(mut self, loader: DocumentLoader) -> Self {
        self.loader = loader;
        self
    }

    async fn load_components(&self, recipe: &Recipe) -> Result<Vec<Component>, BuildError> {
        let mut out = Vec::new();
        for (i, c) in recipe.components.iter().enumerate() {
            let source = match &c.source {
                ComponentSource::Path(p) => p.display().to_string(),
                ComponentSource::Arn(a) => a.clone(),
            };
            let fail = |message: String| BuildError::Component {
                index: i + 1,
                source_name: source.clone(),
                message,
            };
            let resolved = match self.loader.load(&source, None, None).await {
                Ok(r) => r,
                Err(LoadError::Invalid(d)) => return Err(fail(d.to_string())),
                Err(LoadError::Unavailable(m)) => return Err(fail(m)),
            };
            let doc = &resolved.loaded.document;
            let missing = doc.missing_parameters(&c.parameters);
            if !missing.is_empty() {
                return Err(fail(format!(
                    "{}: give {} under `parameters` in the recipe",
                    kiln_toe::document::no_default_phrase(&missing),
                    if missing.len() > 1 { "them" } else { "it" },
                )));
            }
            let windows: Vec<String> = doc
                .phases
                .iter()
                .filter(|p| matches!(p.name.as_str(), "build" | "validate" | "test"))
                .flat_map(|p| p.steps.iter().map(move |s| (p, s)))
                .filter(|(_, s)| s.action.windows_only())
                .map(|(p, s)| format!("{}/{} uses {}", p.name, s.name, s.action))
                .collect();
            if !windows.is_empty() {
                return Err(fail(format!(
                    "{} (Windows-only actions cannot run in a Linux image)",
                    windows.join("; ")
                )));
            }
            let name = if doc.name.is_empty() {
                std::path::Path::new(&source)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("component-{}", i + 1))
            } else {
                doc.name.clone()
            };
            out.push(Component {
                arn: matches!(c.source, ComponentSource::Arn(_)).then(|| doc.source.name.clone()),
                name,
                sha256: sha256_hex(doc.source.text.as_bytes()),
                has_layer: doc.phase("build").is_some() || doc.phase("validate").is_some(),
                has_test: doc.phase("test").is_some(),
                resolved,
                source,
                parameters: c.parameters.clone(),
                cache: c.cache,
            });
        }
        Ok(out)
    }

    /// Builds a recipe. Errors are returned for bad input (nothing was started); once the build
    /// has a number, the returned record says how it ended (AVAILABLE or FAILED).
    pub async fn build(
        &self,
        recipe: &Recipe,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<ImageRecord, BuildError> {
        if !kiln_instance::is_root() {
            return Err(BuildError::Environment(
                "kiln build needs root (namespaces, overlayfs mounts, file ownership): run it as root, e.g. with sudo".into(),
            ));
        }
        let components = self.load_components(recipe).await?;
        if recipe.wants_disk() || recipe.infrastructure.builder == BuilderKind::Vm {
            let missing = disk::missing_host_programs();
            if !missing.is_empty() {
                return Err(BuildError::Environment(format!(
                    "disk images need {} on this host: run scripts/setup, or apt-get install them",
                    missing.join(", ")
                )));
            }
            match &self.options.agent {
                Some(a) if a.is_file() => {}
                Some(a) => {
                    return Err(BuildError::Environment(format!(
                        "kiln-agent is not at {}: it is built with kiln (cargo build -p kiln), and KILN_AGENT may name it",
                        a.display()
                    )))
                }
                None => {
                    return Err(BuildError::Environment(
                        "kiln-agent was not found next to kiln: it is built with kiln (cargo build -p kiln), and KILN_AGENT may name it".into(),
                    ))
                }
            }
        }
        let started = Instant::now();
        let now = Utc::now();
        let epoch = self.options.epoch.unwrap_or(now.timestamp());
        kiln_instance::sandbox::sweep(&self.home.run());
        LayerStore::new(self.home.clone()).sweep();

        // Hold the run folder before the record exists, so that another kiln never takes a
        // starting build for an interrupted one.
        let run_dir = self.home.run().join(format!(
            "{}-{}-{}",
            recipe.name,
            recipe.semantic_version,
            uuid::Uuid::new_v4().simple()
        ));
        let lock =
            RunLock::acquire(&run_dir).map_err(|e| BuildError::Environment(e.to_string()))?;
        let store = match &self.store {
            Some(s) => s.clone(),
            None => crate::state::Store::open(&self.home).await?,
        };
        let records = Records::new(store);
        for b in records.recover_interrupted().await? {
            observer.event(&BuildEvent::Progress(&format!(
                "{b} was interrupted earlier; it is now FAILED"
            )));
        }
        let mut rec = ImageRecord {
            arn: String::new(),
            name: recipe.name.clone(),
            version: recipe.semantic_version,
            build: 0,
            state: State::Pending,
            history: Vec::new(),
            recipe: recipe.source.path.clone(),
            recipe_sha256: sha256_hex(recipe.source.text.as_bytes()),
            parent: None,
            components: components
                .iter()
                .map(|c| ComponentRecord {
                    name: c.name.clone(),
                    source: c.source.clone(),
                    arn: c.arn.clone(),
                    document_sha256: c.sha256.clone(),
                    parameters: c.parameters.clone(),
                    cache_key: String::new(),
                    cache: CacheUse::NotRun,
                    layer: None,
                    layer_size: 0,
                    duration_ms: 0,
                    steps: Vec::new(),
                })
                .collect(),
            tests: None,
            disk: None,
            failure: None,
            outputs: Vec::new(),
            layers: Vec::new(),
            packages: Vec::new(),
            created: now,
            duration_ms: 0,
            logs: PathBuf::new(),
            run_dir: Some(run_dir.clone()),
            owner: self.origin.principal.user.clone(),
            pipeline: self.origin.pipeline.clone(),
            recipe_arn: self.origin.recipe_arn.clone(),
            configurations: self.origin.configurations.clone(),
            distributing: Vec::new(),
        };
        rec.set_state(State::Pending, None);
        records.create(&mut rec).await?;
        let logs = rec.logs.clone();
        std::fs::create_dir_all(&logs).map_err(store::io("creating", &logs))?;
        observer.event(&BuildEvent::Started(&rec));

        let mut chain: Vec<StoredLayer> = Vec::new();
        let arn = rec.arn.clone();
        let distributing = AtomicBool::new(false);
        let result = {
            let stages = self.stages(
                recipe,
                &components,
                &mut rec,
                &records,
                &run_dir,
                epoch,
                &mut chain,
                &observer,
                &distributing,
            );
            // `kiln image cancel` asks through the store; dropping the stages stops their
            // instance (sandbox helpers and VM keepers die with their handles). Once
            // distribution starts the build finishes: a region is never left half-written.
            tokio::select! {
                r = stages => Some(r),
                _ = cancel_requested(&records, &arn, &distributing) => None,
            }
        };
        match result {
            None => {
                observer.event(&BuildEvent::Progress("cancelled on request"));
                rec.set_state(State::Cancelled, Some("cancelled on request".into()));
            }
            Some(Ok(())) => rec.set_state(State::Available, None),
            Some(Err(f)) => {
                rec.set_state(State::Failed, Some(f.reason.clone()));
                rec.failure = Some(FailureInfo {
                    stage: f.stage,
                    component: f.component,
                    step: f.step,
                    reason: f.reason,
                    output_tail: f.tail,
                    log: f.log,
                    kept_instance: f.kept.map(|k| k.id),
                });
            }
        }
        rec.duration_ms = millis(started);
        // The final record is written while the run folder is still held: another kiln that
        // sees the folder released must also see the final state, never take the build for
        // an interrupted one.
        rec.distributing.clear();
        let saved = records.save(&rec).await;
        drop(lock);
        // A cancelled build's VM went with its handle, not through `stop`.
        kiln_instance::vm::remove_sockets_under(&run_dir);
        store::remove_tree(&run_dir);
        saved?;
        observer.event(&BuildEvent::Finished(&rec));
        let keep: HashSet<String> = chain.iter().map(|l| l.info.diff_id.clone()).collect();
        let cache = StepCache::new(self.home.clone());
        if cache.usage() > self.options.cache_max_bytes {
            let report = cache.prune(self.options.cache_max_bytes, &keep);
            tracing::info!(?report, "pruned the step cache");
        }
        Ok(rec)
    }

    #[allow(clippy::too_many_arguments)]
    async fn stages(
        &self,
        recipe: &Recipe,
        components: &[Component],
        rec: &mut ImageRecord,
        records: &Records,
        run_dir: &std::path::Path,
        epoch: i64,
        chain: &mut Vec<StoredLayer>,
        observer: &Arc<dyn BuildObserver>,
        distributing: &AtomicBool,
    ) -> Result<(), StageFailure> {
        // BUILDING: the parent, then each component.
        rec.set_state(State::Building, None);
        save(records, rec).await;
        observer.event(&BuildEvent::Stage(State::Building));
        let parent_log = Mutex::new(std::fs::File::create(rec.logs.join("parent.log")).ok());
        let progress = |line: &str| {
            observer.event(&BuildEvent::Progress(line));
            if let Ok(mut f) = parent_log.lock() {
                if let Some(f) = f.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
            }
        };
        let parent: Parent = parent::resolve(
            &self.home,
            recipe,
            epoch,
            self.options.refresh_parent,
            &self.options.registries,
            &progress,
        )
        .await
        .map_err(|e| StageFailure::new(State::Building, e.to_string()))?;
        rec.parent = Some(parent.record.clone());
        chain.extend(parent.layers.iter().cloned());
        save(records, rec).await;

        let cache = StepCache::new(self.home.clone());
        let store = LayerStore::new(self.home.clone());
        let total = components.len();
        let vm_builder = recipe.infrastructure.builder == BuilderKind::Vm;
        // Set when a failed instance is to be kept for debugging.
        let keep: Option<String> =
            (!recipe.infrastructure.terminate_instance_on_failure).then(|| rec.build_version());
        if recipe.wants_disk() {
            // A disk that cannot boot is known now, not after every component ran.
            disk::bootable(chain).map_err(|e| {
                StageFailure::new(State::Building, format!("{} (parent {})", e, recipe.parent))
            })?;
        }
        let mut assembled: Option<disk::Assembled> = None;
        // The disk's layers: the image's, plus the QEMU guest agent when kiln had to add it.
        let mut disk_chain: Vec<StoredLayer> = Vec::new();
        let mut guest_agent = GuestAgent::InImage;
        if vm_builder {
            let (base, agent) = self
                .with_guest_agent(recipe, chain, run_dir, rec, epoch, observer)
                .await?;
            guest_agent = agent;
            assembled = Some(
                self.build_in_vm(recipe, components, rec, records, run_dir, &base, observer)
                    .await?,
            );
        } else {
            for (i, c) in components.iter().enumerate() {
                let key = StepKey {
                    kind: "component".into(),
                    parents: chain.iter().map(|l| l.info.diff_id.clone()).collect(),
                    input: c.sha256.clone(),
                    parameters: c.parameters.clone(),
                    builder: recipe.infrastructure.builder.to_string(),
                    working_directory: recipe.working_directory.clone(),
                    compression: format!("{:?}", recipe.compression),
                }
                .digest();
                rec.components[i].cache_key = key.clone();
                if !c.has_layer {
                    rec.components[i].cache = CacheUse::NoLayer;
                    observer.event(&BuildEvent::ComponentFinished {
                        index: i,
                        record: &rec.components[i],
                    });
                    continue;
                }
                let usable = c.cache && !self.options.no_cache;
                if usable {
                    if let Some(layer) = cache.get(&key) {
                        observer.event(&BuildEvent::ComponentStarted {
                            index: i,
                            total,
                            name: &c.name,
                            cached: true,
                        });
                        let cr = &mut rec.components[i];
                        cr.cache = CacheUse::Hit;
                        cr.layer = Some(layer.info.diff_id.clone());
                        cr.layer_size = layer.info.size;
                        chain.push(layer);
                        observer.event(&BuildEvent::ComponentFinished {
                            index: i,
                            record: &rec.components[i],
                        });
                        continue;
                    }
                }
                observer.event(&BuildEvent::ComponentStarted {
                    index: i,
                    total,
                    name: &c.name,
                    cached: false,
                });
                let t0 = Instant::now();
                let dir = run_dir.join(format!("c{i}"));
                let log_dir = rec
                    .logs
                    .join(format!("build-{:02}-{}", i + 1, file_safe(&c.name)));
                let (report, upper, created) = self
                    .run_in_sandbox(
                        recipe,
                        &format!("{}-{i}", short_id(run_dir)),
                        chain,
                        &dir,
                        &[c],
                        &["build", "validate"],
                        &log_dir,
                        image_env(rec, "BUILDING"),
                        observer,
                        State::Building,
                        keep.as_deref(),
                    )
                    .await
                    .map_err(|mut f| {
                        f.component = Some(c.name.clone());
                        f
                    })?;
                let steps = timings(&report.report);
                rec.components[i].steps = steps;
                rec.components[i].duration_ms = millis(t0);
                if !report.report.status.ok() {
                    return Err(StageFailure::from_run(
                        State::Building,
                        Some(c.name.clone()),
                        &report,
                        &log_dir,
                    ));
                }
                observer.event(&BuildEvent::Progress(&format!(
                    "capturing the layer of {}",
                    c.name
                )));
                let layer = capture(&store, &upper, &created, epoch, recipe, &c.name)
                    .await
                    .map_err(|e| StageFailure {
                        component: Some(c.name.clone()),
                        ..StageFailure::new(State::Building, format!("capturing the layer: {e}"))
                    })?;
                if c.cache {
                    if let Err(e) = cache.put(&key, &layer, &format!("component {}", c.name)) {
                        tracing::warn!("cannot record the layer in the step cache: {e}");
                    }
                }
                let cr = &mut rec.components[i];
                cr.cache = if !c.cache {
                    CacheUse::Disabled
                } else if self.options.no_cache {
                    CacheUse::Bypassed
                } else {
                    CacheUse::Miss
                };
                cr.layer = Some(layer.info.diff_id.clone());
                cr.layer_size = layer.info.size;
                chain.push(layer);
                save(records, rec).await;
                observer.event(&BuildEvent::ComponentFinished {
                    index: i,
                    record: &rec.components[i],
                });
            }
            if recipe.wants_disk() {
                (disk_chain, guest_agent) = self
                    .with_guest_agent(recipe, chain, run_dir, rec, epoch, observer)
                    .await?;
                assembled = Some(
                    self.assemble(recipe, &disk_chain, run_dir, rec, observer)
                        .await?,
                );
            }
        }
        rec.layers = chain.iter().map(|l| l.info.diff_id.clone()).collect();
        if let Some(d) = rec.disk.as_mut() {
            d.guest_agent = guest_agent.as_str().to_string();
        }

        // TESTING: a fresh sandbox from the captured image, every component's test phase.
        rec.set_state(State::Testing, None);
        save(records, rec).await;
        observer.event(&BuildEvent::Stage(State::Testing));
        let t0 = Instant::now();
        let testable: Vec<&Component> = components.iter().filter(|c| c.has_test).collect();
        let test_key = {
            let mut h = Sha256::new();
            h.update(b"kiln-test-v1");
            for l in chain.iter() {
                h.update(l.info.diff_id.as_bytes());
            }
            if let Some(a) = &assembled {
                // Tested by booting: the disk's own layers and boot files count too.
                h.update(b"vm-boot-v1");
                for l in &disk_chain {
                    h.update(l.info.diff_id.as_bytes());
                }
                h.update(a.kernel.as_bytes());
            }
            for c in &testable {
                h.update(c.sha256.as_bytes());
                h.update(
                    serde_json::to_string(&c.parameters)
                        .unwrap_or_default()
                        .as_bytes(),
                );
            }
            hex::encode(h.finalize())
        };
        let test_cache_path = self.home.cache().join(format!("tests-{test_key}.json"));
        // A VM builder's disk is not made of content-addressed layers: always test it.
        let cached: Option<TestCacheEntry> = if self.options.no_cache || vm_builder {
            None
        } else {
            read_json(&test_cache_path).ok().flatten()
        };
        if !recipe.tests.enabled {
            rec.tests = Some(TestRecord {
                status: "skipped".into(),
                duration_ms: 0,
                steps: vec![],
                reused_from: None,
                instance: None,
                boot_ms: None,
                accelerator: None,
            });
            rec.packages = dpkg_from_layers(chain);
        } else if let Some(entry) = cached {
            observer.event(&BuildEvent::Progress(&format!(
                "this exact image passed its tests in {}; not testing again",
                entry.build_version
            )));
            rec.tests = Some(TestRecord {
                status: "cached".into(),
                duration_ms: 0,
                steps: vec![],
                reused_from: Some(entry.build_version),
                instance: None,
                boot_ms: None,
                accelerator: None,
            });
            rec.packages = entry.packages;
        } else {
            let log_dir = rec.logs.join("test");
            let limit =
                std::time::Duration::from_secs(u64::from(recipe.tests.timeout_minutes) * 60);
            let test_id = format!("{}-test", short_id(run_dir));
            let test_dir = run_dir.join("test");
            let too_long = || {
                StageFailure::new(
                    State::Testing,
                    format!(
                        "the tests ran longer than imageTestsConfiguration.timeoutMinutes ({})",
                        recipe.tests.timeout_minutes
                    ),
                )
            };
            let mut boot = None;
            let report: SandboxRun = if let Some(a) = &assembled {
                // Boot the disk exactly as a user would: firmware, GRUB, kernel, init.
                observer.event(&BuildEvent::Progress(
                    "booting a test VM from the disk image (firmware, bootloader, kernel, init)",
                ));
                let vm = self
                    .start_vm(
                        recipe,
                        &test_id,
                        &a.raw,
                        &test_dir,
                        &log_dir,
                        State::Testing,
                    )
                    .await?;
                let boot_ms = vm
                    .boot_times()
                    .first()
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let accel = format!("{:?}", vm.accel()).to_lowercase();
                observer.event(&BuildEvent::Progress(&format!(
                    "the test VM booted in {:.1} s ({accel}); running the tests in it",
                    boot_ms as f64 / 1000.0
                )));
                boot = Some((boot_ms, accel));
                let run = drive(
                    vm.clone(),
                    &testable,
                    &["test"],
                    &log_dir,
                    image_env(rec, "TESTING"),
                    observer,
                    State::Testing,
                );
                let r = tokio::time::timeout(limit, run).await;
                let _ = std::fs::copy(vm.console_log(), log_dir.join("serial-console.log"));
                let failed = !matches!(&r, Ok(Ok(run)) if run.report.status.ok());
                let (kept, stopped) = self
                    .keep_or_stop(
                        &vm,
                        keep.as_deref(),
                        failed,
                        &test_dir,
                        &test_id,
                        State::Testing,
                    )
                    .await;
                if let Err(e) = stopped {
                    tracing::warn!("stopping the test VM: {e}");
                }
                match r {
                    Ok(Ok(mut r)) => {
                        r.kept = kept;
                        r
                    }
                    Ok(Err(mut f)) => {
                        f.kept = kept;
                        return Err(f);
                    }
                    Err(_) => {
                        let mut f = too_long();
                        f.kept = kept;
                        return Err(f);
                    }
                }
            } else {
                let run = self.run_in_sandbox(
                    recipe,
                    &test_id,
                    chain,
                    &test_dir,
                    &testable,
                    &["test"],
                    &log_dir,
                    image_env(rec, "TESTING"),
                    observer,
                    State::Testing,
                    keep.as_deref(),
                );
                match tokio::time::timeout(limit, run).await {
                    Ok(r) => r?.0,
                    Err(_) => return Err(too_long()),
                }
            };
            rec.tests = Some(TestRecord {
                status: if report.report.status.ok() {
                    "passed"
                } else {
                    "failed"
                }
                .into(),
                duration_ms: millis(t0),
                steps: timings(&report.report),
                reused_from: None,
                instance: Some(if boot.is_some() { "vm" } else { "sandbox" }.into()),
                boot_ms: boot.as_ref().map(|b| b.0),
                accelerator: boot.map(|b| b.1),
            });
            if !report.report.status.ok() {
                let component = report
                    .report
                    .documents
                    .iter()
                    .find(|d| !d.status.ok())
                    .map(|d| d.name.clone());
                return Err(StageFailure::from_run(
                    State::Testing,
                    component,
                    &report,
                    &log_dir,
                ));
            }
            rec.packages = report.packages;
            let _ = write_json(
                &test_cache_path,
                &TestCacheEntry {
                    build_version: rec.build_version(),
                    passed_at: Utc::now(),
                    packages: rec.packages.clone(),
                },
            );
        }
        save(records, rec).await;

        // The guest agent kiln brought in goes, when the recipe asks: one more layer on the disk.
        if let Some(a) = assembled.as_mut() {
            if recipe.disk.remove_guest_agent && guest_agent == GuestAgent::InstalledByKiln {
                observer.event(&BuildEvent::Progress(
                    "removing the QEMU guest agent kiln installed (disk.removeGuestAgent)",
                ));
                let c = internal_component(disk::REMOVE_GUEST_AGENT_DOCUMENT)
                    .map_err(|e| StageFailure::new(State::Building, e))?;
                let (layer, _) = self
                    .internal_layer(recipe, &c, &disk_chain, run_dir, &rec.logs, epoch, observer)
                    .await?;
                disk_chain.push(layer);
                *a = self
                    .assemble(recipe, &disk_chain, run_dir, rec, observer)
                    .await?;
                guest_agent = GuestAgent::RemovedAfterTests;
            }
            if let Some(d) = rec.disk.as_mut() {
                d.guest_agent = guest_agent.as_str().to_string();
            }
            save(records, rec).await;
        }

        // DISTRIBUTING: every region gets the image, each atomically. What it will write is
        // saved first, so that a kiln that dies half-way can be undone by the next one.
        distributing.store(true, Ordering::SeqCst);
        rec.distributing = self.plan_outputs(recipe, rec);
        rec.set_state(State::Distributing, None);
        save(records, rec).await;
        observer.event(&BuildEvent::Stage(State::Distributing));
        // Disks first: they can be taken back if an OCI region fails afterwards.
        let placed_disks = match &assembled {
            Some(a) => self.place_disks(recipe, a, rec, observer).await?,
            None => Vec::new(),
        };
        let unplace = |f: StageFailure| {
            for (_, _, p) in &placed_disks {
                let _ = std::fs::remove_file(&p.path);
            }
            f
        };
        let settings = image_settings(recipe, rec, &parent, components, chain, epoch);
        let blobs: Vec<kiln_image::LayerBlob> = chain.iter().map(StoredLayer::as_blob).collect();
        for d in recipe.distributions.iter().filter(|_| recipe.wants_oci()) {
            let dir = d
                .path
                .clone()
                .unwrap_or_else(|| self.home.regions().join(&d.region));
            // The build's own tag first: the version's tag moves only once the image is in.
            let tags = [
                format!("{}-{}", rec.version, rec.build),
                rec.version.to_string(),
            ];
            for tag in &tags {
                let (dir2, tag2, blobs2, settings2) =
                    (dir.clone(), tag.clone(), blobs.clone(), settings.clone());
                let written = tokio::task::spawn_blocking(move || {
                    kiln_image::write_image(&dir2, &tag2, &blobs2, &settings2)
                })
                .await
                .map_err(|e| unplace(StageFailure::new(State::Distributing, e.to_string())))?
                .map_err(|e| {
                    unplace(StageFailure::new(
                        State::Distributing,
                        format!("region {}: {e}", d.region),
                    ))
                })?;
                rec.outputs.push(OutputRecord {
                    region: d.region.clone(),
                    kind: "oci-layout".into(),
                    location: dir.clone(),
                    tag: tag.clone(),
                    manifest_digest: written.manifest_digest,
                });
            }
            observer.event(&BuildEvent::Progress(&format!(
                "region {}: {} (tags {})",
                d.region,
                dir.display(),
                tags.join(", ")
            )));
        }
        for (region, format, p) in placed_disks {
            if let Err(e) = disk::link_version(&p.path, &format!("{}-{}", rec.name, rec.version)) {
                tracing::warn!("{e}");
            }
            rec.outputs.push(OutputRecord {
                region,
                kind: format!("disk-{}", format.extension()),
                location: p.path,
                tag: format!("{}-{}", rec.version, rec.build),
                manifest_digest: p.digest,
            });
        }
        Ok(())
    }

    /// Where distribution will write this build.
    fn plan_outputs(&self, recipe: &Recipe, rec: &ImageRecord) -> Vec<PlannedOutput> {
        let mut plan = Vec::new();
        for d in &recipe.distributions {
            let dir = d
                .path
                .clone()
                .unwrap_or_else(|| self.home.regions().join(&d.region));
            if recipe.wants_oci() {
                plan.push(PlannedOutput {
                    region: d.region.clone(),
                    kind: "oci".into(),
                    location: dir.clone(),
                    tags: vec![
                        format!("{}-{}", rec.version, rec.build),
                        rec.version.to_string(),
                    ],
                });
            }
            if recipe.wants_disk() {
                for format in &recipe.disk.formats {
                    plan.push(PlannedOutput {
                        region: d.region.clone(),
                        kind: "disk".into(),
                        location: dir.join("disks").join(format!(
                            "{}-{}-{}.{}",
                            rec.name,
                            rec.version,
                            rec.build,
                            format.extension()
                        )),
                        tags: Vec::new(),
                    });
                }
            }
        }
        plan
    }

    /// Places the disk in every region in each format, under this build's own names. A failure
    /// removes what was placed; the version's names (`NAME-VERSION.EXT`) move only once every
    /// output is in place.
    async fn place_disks(
        &self,
        recipe: &Recipe,
        a: &disk::Assembled,
        rec: &ImageRecord,
        observer: &Arc<dyn BuildObserver>,
    ) -> Result<Vec<(String, DiskFormat, disk::Placed)>, StageFailure> {
        let build_stem = format!("{}-{}-{}", rec.name, rec.version, rec.build);
        let mut placed: Vec<(String, DiskFormat, disk::Placed)> = Vec::new();
        let mut failure = None;
        'regions: for d in &recipe.distributions {
            let dir = d
                .path
                .clone()
                .unwrap_or_else(|| self.home.regions().join(&d.region));
            for &format in &recipe.disk.formats {
                let (raw, dir2, bs) = (a.raw.clone(), dir.clone(), build_stem.clone());
                let compressed = recipe.disk.compressed;
                let r = tokio::task::spawn_blocking(move || {
                    disk::place(&raw, &dir2, &bs, format, compressed)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match r {
                    Ok(p) => {
                        observer.event(&BuildEvent::Progress(&format!(
                            "region {}: {} ({} MiB)",
                            d.region,
                            p.path.display(),
                            p.size >> 20
                        )));
                        placed.push((d.region.clone(), format, p));
                    }
                    Err(e) => {
                        failure = Some(StageFailure::new(
                            State::Distributing,
                            format!("region {}: {e}", d.region),
                        ));
                        break 'regions;
                    }
                }
            }
        }
        if let Some(f) = failure {
            for (_, _, p) in &placed {
                let _ = std::fs::remove_file(&p.path);
            }
            return Err(f);
        }
        Ok(placed)
    }

    /// Keeps a failed sandbox's filesystem running for debugging: its folder moves to the kept
    /// instances and new namespaces hold it. `None` (and a warning) when that fails.
    fn keep_sandbox(
        &self,
        lowers: &[PathBuf],
        dir: &std::path::Path,
        id: &str,
        build: &str,
        stage: State,
        name: &str,
    ) -> Option<KeptInstance> {
        let instances = Instances::new(&self.home);
        let kept_dir = instances.dir_of(id);
        let go = || -> Result<KeptInstance, String> {
            if let Some(p) = kept_dir.parent() {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
            }
            std::fs::rename(dir, &kept_dir).map_err(|e| e.to_string())?;
            let pid = crate::instances::start_kept_sandbox(
                lowers,
                &kept_dir.join("upper"),
                &kept_dir.join("work"),
                &kept_dir.join("root"),
                &format!("kiln-{}", name.chars().take(40).collect::<String>()),
            )
            .map_err(|e| e.to_string())?;
            let k = KeptInstance {
                id: id.to_string(),
                kind: KeptKind::Sandbox,
                build: build.to_string(),
                stage: stage.as_str().to_string(),
                kept_at: Utc::now(),
                pid,
                dir: kept_dir.clone(),
                qga_socket: None,
                console: None,
            };
            instances.add(&k).map_err(|e| e.to_string())?;
            Ok(k)
        };
        match go() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("could not keep the failed sandbox: {e}");
                None
            }
        }
    }

    /// Ends a VM's work: a failed VM is kept when `keep` names the build (see [`Self::keep_vm`]);
    /// any other is stopped. Returns the kept instance and how stopping went.
    async fn keep_or_stop(
        &self,
        vm: &Vm,
        keep: Option<&str>,
        failed: bool,
        dir: &std::path::Path,
        id: &str,
        stage: State,
    ) -> (
        Option<KeptInstance>,
        Result<(), kiln_instance::InstanceError>,
    ) {
        let kept = match (keep, failed) {
            (Some(build), true) => self.keep_vm(vm, dir, id, build, stage).await,
            _ => None,
        };
        if kept.is_some() {
            return (kept, Ok(()));
        }
        (None, vm.stop().await)
    }

    /// Keeps a failed VM running for debugging: it outlives kiln, its folder moves to the kept
    /// instances. `None` (and a warning) when that fails.
    async fn keep_vm(
        &self,
        vm: &Vm,
        dir: &std::path::Path,
        id: &str,
        build: &str,
        stage: State,
    ) -> Option<KeptInstance> {
        let instances = Instances::new(&self.home);
        let kept_dir = instances.dir_of(id);
        let sockets = vm.sockets_dir().to_path_buf();
        let pid = vm.detach().await?;
        let moved = kept_dir
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::rename(dir, &kept_dir));
        let base = if moved.is_ok() {
            kept_dir.as_path()
        } else {
            dir
        };
        let qga = match sockets.strip_prefix(dir) {
            Ok(rel) => base.join(rel).join("qga.sock"),
            Err(_) => sockets.join("qga.sock"),
        };
        let k = KeptInstance {
            id: id.to_string(),
            kind: KeptKind::Vm,
            build: build.to_string(),
            stage: stage.as_str().to_string(),
            kept_at: Utc::now(),
            pid,
            dir: base.to_path_buf(),
            qga_socket: Some(qga),
            console: Some(base.join("console.log")),
        };
        if let Err(e) = instances.add(&k) {
            tracing::warn!("could not record the kept VM: {e}");
        }
        Some(k)
    }

    /// `chain` with the QEMU guest agent: as it is when the image has one, or with a layer from
    /// kiln's own component that installs it.
    #[allow(clippy::too_many_arguments)]
    async fn with_guest_agent(
        &self,
        recipe: &Recipe,
        chain: &[StoredLayer],
        run_dir: &std::path::Path,
        rec: &ImageRecord,
        epoch: i64,
        observer: &Arc<dyn BuildObserver>,
    ) -> Result<(Vec<StoredLayer>, GuestAgent), StageFailure> {
        if disk::has_guest_agent(chain) {
            let agent = if parent_adds_guest_agent(recipe) {
                GuestAgent::InstalledByKiln
            } else {
                GuestAgent::InImage
            };
            return Ok((chain.to_vec(), agent));
        }
        observer.event(&BuildEvent::Progress(
            "the image has no QEMU guest agent: installing it for the disk image (kiln drives VMs through it)",
        ));
        let c = internal_component(disk::GUEST_AGENT_DOCUMENT)
            .map_err(|e| StageFailure::new(State::Building, e))?;
        let (layer, cached) = self
            .internal_layer(recipe, &c, chain, run_dir, &rec.logs, epoch, observer)
            .await
            .map_err(|mut f| {
                f.reason = format!(
                    "{} (kiln installs qemu-guest-agent into disk images that lack it: the image needs a package manager and a network, or install qemu-guest-agent in a component)",
                    f.reason
                );
                f
            })?;
        if cached {
            observer.event(&BuildEvent::Progress(
                "the guest agent layer comes from the step cache",
            ));
        }
        let mut out = chain.to_vec();
        out.push(layer);
        Ok((out, GuestAgent::InstalledByKiln))
    }

    /// Assembles the raw disk of `disk_chain` in the run folder and records it.
    async fn assemble(
        &self,
        recipe: &Recipe,
        disk_chain: &[StoredLayer],
        run_dir: &std::path::Path,
        rec: &mut ImageRecord,
        observer: &Arc<dyn BuildObserver>,
    ) -> Result<disk::Assembled, StageFailure> {
        observer.event(&BuildEvent::Progress(
            "assembling the disk image (GPT, GRUB, ext4 made with mkfs.ext4 -d)",
        ));
        let t0 = Instant::now();
        let (layers, work, size) = (
            disk_chain.to_vec(),
            run_dir.join("disk"),
            recipe.disk.size_bytes,
        );
        let a = tokio::task::spawn_blocking(move || disk::assemble(&layers, &work, size, 0))
            .await
            .map_err(|e| StageFailure::new(State::Building, e.to_string()))?
            .map_err(|e| StageFailure::new(State::Building, format!("the disk image: {e}")))?;
        rec.disk = Some(DiskRecord {
            kernel: a.kernel.clone(),
            size: a.size,
            filesystem_uuid: a.ids.filesystem.clone(),
            guest_agent: String::new(),
            assemble_ms: millis(t0),
        });
        observer.event(&BuildEvent::Progress(&format!(
            "disk image assembled: {} MiB, kernel {} ({:.1} s)",
            a.size >> 20,
            a.kernel,
            t0.elapsed().as_secs_f64()
        )));
        Ok(a)
    }

    /// The VM builder: boots the parent's disk, runs every component's build and validate
    /// phases in it (reboots included), powers it off and keeps its disk.
    #[allow(clippy::too_many_arguments)]
    async fn build_in_vm(
        &self,
        recipe: &Recipe,
        components: &[Component],
        rec: &mut ImageRecord,
        records: &Records,
        run_dir: &std::path::Path,
        base: &[StoredLayer],
        observer: &Arc<dyn BuildObserver>,
    ) -> Result<disk::Assembled, StageFailure> {
        observer.event(&BuildEvent::Progress(
            "assembling the parent's disk for the builder VM",
        ));
        let t0 = Instant::now();
        let (layers, work, size) = (
            base.to_vec(),
            run_dir.join("parent-disk"),
            recipe.disk.size_bytes,
        );
        let parent_disk = tokio::task::spawn_blocking(move || {
            disk::assemble(&layers, &work, size, VM_BUILDER_HEADROOM)
        })
        .await
        .map_err(|e| StageFailure::new(State::Building, e.to_string()))?
        .map_err(|e| StageFailure::new(State::Building, format!("the parent's disk: {e}")))?;
        let assemble_ms = millis(t0);
        let log_dir = rec.logs.join("builder-vm");
        observer.event(&BuildEvent::Progress("booting the builder VM"));
        let vm = self
            .start_vm(
                recipe,
                &format!("{}-build", short_id(run_dir)),
                &parent_disk.raw,
                &run_dir.join("builder-vm"),
                &log_dir,
                State::Building,
            )
            .await?;
        observer.event(&BuildEvent::Progress(&format!(
            "the builder VM booted in {:.1} s ({})",
            vm.boot_times()
                .first()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            format!("{:?}", vm.accel()).to_lowercase()
        )));
        let total = components.len();
        let mut outcome = Ok(());
        for (i, c) in components.iter().enumerate() {
            if !c.has_layer {
                rec.components[i].cache = CacheUse::NoLayer;
                continue;
            }
            observer.event(&BuildEvent::ComponentStarted {
                index: i,
                total,
                name: &c.name,
                cached: false,
            });
            let t0 = Instant::now();
            let log_dir = rec
                .logs
                .join(format!("build-{:02}-{}", i + 1, file_safe(&c.name)));
            let run = drive(
                vm.clone(),
                &[c],
                &["build", "validate"],
                &log_dir,
                image_env(rec, "BUILDING"),
                observer,
                State::Building,
            )
            .await;
            let cr = &mut rec.components[i];
            cr.duration_ms = millis(t0);
            cr.cache = CacheUse::InVm;
            let run = match run {
                Ok(r) => r,
                Err(mut f) => {
                    f.component = Some(c.name.clone());
                    outcome = Err(f);
                    break;
                }
            };
            cr.steps = timings(&run.report);
            if !run.report.status.ok() {
                outcome = Err(StageFailure::from_run(
                    State::Building,
                    Some(c.name.clone()),
                    &run,
                    &log_dir,
                ));
                break;
            }
            if let Err(e) = records.save(rec).await {
                tracing::warn!("cannot save the build record: {e}");
            }
            observer.event(&BuildEvent::ComponentFinished {
                index: i,
                record: &rec.components[i],
            });
        }
        let _ = std::fs::copy(vm.console_log(), log_dir.join("serial-console.log"));
        let keep =
            (!recipe.infrastructure.terminate_instance_on_failure).then(|| rec.build_version());
        if outcome.is_ok() || keep.is_none() {
            observer.event(&BuildEvent::Progress("powering the builder VM off"));
        }
        let (kept, stopped) = self
            .keep_or_stop(
                &vm,
                keep.as_deref(),
                outcome.is_err(),
                &run_dir.join("builder-vm"),
                &format!("{}-build", short_id(run_dir)),
                State::Building,
            )
            .await;
        if let Err(mut f) = outcome {
            f.kept = kept;
            return Err(f);
        }
        stopped.map_err(|e| {
            StageFailure::new(State::Building, format!("powering the builder VM off: {e}"))
        })?;
        // The overlay holds what the components wrote: flattened, it is the image's disk.
        let t0 = Instant::now();
        let (overlay, raw) = (
            vm.overlay().to_path_buf(),
            run_dir.join("disk").join("disk.raw"),
        );
        let raw2 = raw.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(d) = raw2.parent() {
                std::fs::create_dir_all(d)?;
            }
            kiln_image::disk::flatten(&overlay, &raw2).map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| StageFailure::new(State::Building, e.to_string()))?
        .map_err(|e| StageFailure::new(State::Building, format!("the builder VM's disk: {e}")))?;
        let _ = std::fs::remove_dir_all(run_dir.join("parent-disk"));
        rec.disk = Some(DiskRecord {
            kernel: parent_disk.kernel.clone(),
            size: parent_disk.size,
            filesystem_uuid: parent_disk.ids.filesystem.clone(),
            guest_agent: String::new(),
            assemble_ms: assemble_ms + millis(t0),
        });
        Ok(disk::Assembled { raw, ..parent_disk })
    }

    /// Runs documents' phases in a sandbox over `chain`; returns the report, the writable layer
    /// and the mount points kiln created in it.
    #[allow(clippy::too_many_arguments)]
    async fn run_in_sandbox(
        &self,
        recipe: &Recipe,
        id: &str,
        chain: &[StoredLayer],
        dir: &std::path::Path,
        components: &[&Component],
        phases: &[&str],
        log_dir: &std::path::Path,
        env: Vec<(String, String)>,
        observer: &Arc<dyn BuildObserver>,
        stage: State,
        keep: Option<&str>,
    ) -> Result<(SandboxRun, PathBuf, Vec<String>), StageFailure> {
        std::fs::create_dir_all(log_dir).map_err(|e| {
            StageFailure::new(stage, format!("creating {}: {e}", log_dir.display()))
        })?;
        let upper = dir.join("upper");
        let mut spec = SandboxSpec::new(
            id,
            chain.iter().rev().map(|l| l.fs.clone()).collect(),
            upper.clone(),
            dir.join("work"),
            dir.join("root"),
        );
        spec.working_dir = recipe.working_directory.clone();
        spec.network = recipe.infrastructure.network;
        spec.limits = recipe.infrastructure.limits.clone();
        spec.hostname = format!("kiln-{}", recipe.name.chars().take(40).collect::<String>());
        let (helper, args) = self.options.helper.clone();
        let sandbox = Arc::new(
            Sandbox::start(spec, helper, args)
                .await
                .map_err(|e| StageFailure::new(stage, format!("starting the sandbox: {e}")))?,
        );
        let run = drive(
            sandbox.clone(),
            components,
            phases,
            log_dir,
            env,
            observer,
            stage,
        )
        .await;
        let created = sandbox.created_paths();
        if let Err(e) = sandbox.stop().await {
            tracing::warn!("stopping the sandbox: {e}");
        }
        let mut run = run?;
        if let (Some(build), false) = (keep, run.report.status.ok()) {
            let lowers: Vec<PathBuf> = chain.iter().rev().map(|l| l.fs.clone()).collect();
            // On success the writable layer moves to the kept instance (the run failed: it is
            // not captured).
            run.kept = self.keep_sandbox(&lowers, dir, id, build, stage, &recipe.name);
        }
        Ok((run, upper, created))
    }

    /// Boots a VM from `disk` (through a copy-on-write overlay in `dir`). A boot that fails
    /// becomes a failure of `stage` quoting the serial console.
    async fn start_vm(
        &self,
        recipe: &Recipe,
        id: &str,
        disk_image: &std::path::Path,
        dir: &std::path::Path,
        log_dir: &std::path::Path,
        stage: State,
    ) -> Result<Arc<Vm>, StageFailure> {
        let vm = &recipe.infrastructure.vm;
        let spec = VmSpec {
            id: id.to_string(),
            disk: disk_image.to_path_buf(),
            dir: dir.to_path_buf(),
            memory_mib: vm.memory_mib,
            cpus: vm.cpus,
            network: recipe.infrastructure.network,
            boot_timeout: std::time::Duration::from_secs(vm.boot_timeout_secs),
            agent: self.options.agent.clone().unwrap_or_default(),
            working_dir: recipe.working_directory.clone(),
            env: Vec::new(),
            accel: vm.accel,
            // Whether KVM works is a fact of this host until it reboots: /run is the place.
            kvm_verdict: Some(PathBuf::from("/run/kiln/kvm-verdict")),
        };
        let _ = std::fs::create_dir_all(log_dir);
        match Vm::start(spec, self.options.keeper.clone()).await {
            Ok(v) => Ok(Arc::new(v)),
            Err(e) => {
                let console = dir.join("console.log");
                let kept = log_dir.join("serial-console.log");
                let _ = std::fs::copy(&console, &kept);
                let text = e.to_string();
                let reason = text
                    .split_once("; the console")
                    .map_or(text.as_str(), |(head, _)| head)
                    .to_string();
                let tail: Vec<String> = std::fs::read_to_string(&kept)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect();
                let tail = tail[tail.len().saturating_sub(TAIL)..].to_vec();
                Err(StageFailure {
                    stage,
                    component: None,
                    step: None,
                    reason: if tail.is_empty() {
                        format!("{reason}; the serial console stayed silent")
                    } else {
                        reason
                    },
                    tail,
                    log: Some(kept),
                    kept: None,
                })
            }
        }
    }

    /// A layer made by one of kiln's own components (the guest agent), cached like any other.
    #[allow(clippy::too_many_arguments)]
    async fn internal_layer(
        &self,
        recipe: &Recipe,
        c: &Component,
        chain: &[StoredLayer],
        run_dir: &std::path::Path,
        logs: &std::path::Path,
        epoch: i64,
        observer: &Arc<dyn BuildObserver>,
    ) -> Result<(StoredLayer, bool), StageFailure> {
        let cache = StepCache::new(self.home.clone());
        let key = StepKey {
            kind: "internal".into(),
            parents: chain.iter().map(|l| l.info.diff_id.clone()).collect(),
            input: c.sha256.clone(),
            parameters: Vec::new(),
            builder: BuilderKind::Sandbox.to_string(),
            working_directory: "/".into(),
            compression: format!("{:?}", recipe.compression),
        }
        .digest();
        if !self.options.no_cache {
            if let Some(l) = cache.get(&key) {
                return Ok((l, true));
            }
        }
        let dir = run_dir.join(file_safe(&c.name));
        let log_dir = logs.join(format!("build-{}", file_safe(&c.name)));
        let fail_with = |mut f: StageFailure| {
            f.component = Some(c.name.clone());
            f
        };
        let (run, upper, created) = self
            .run_in_sandbox(
                recipe,
                &format!("{}-{}", short_id(run_dir), file_safe(&c.name)),
                chain,
                &dir,
                &[c],
                &["build"],
                &log_dir,
                Vec::new(),
                observer,
                State::Building,
                None,
            )
            .await
            .map_err(fail_with)?;
        if !run.report.status.ok() {
            return Err(StageFailure::from_run(
                State::Building,
                Some(c.name.clone()),
                &run,
                &log_dir,
            ));
        }
        let store = LayerStore::new(self.home.clone());
        let layer = capture(&store, &upper, &created, epoch, recipe, &c.name)
            .await
            .map_err(|e| {
                fail_with(StageFailure::new(
                    State::Building,
                    format!("capturing the layer: {e}"),
                ))
            })?;
        if let Err(e) = cache.put(&key, &layer, &format!("kiln {}", c.name)) {
            tracing::warn!("cannot record the layer in the step cache: {e}");
        }
        Ok((layer, false))
    }
}

/// Runs documents' phases on an instance, logging into `log_dir`; after passing tests, reads
/// the package inventory.
async fn drive(
    instance: Arc<dyn Instance>,
    components: &[&Component],
    phases: &[&str],
    log_dir: &std::path::Path,
    env: Vec<(String, String)>,
    observer: &Arc<dyn BuildObserver>,
    stage: State,
) -> Result<SandboxRun, StageFailure> {
    {
        std::fs::create_dir_all(log_dir).map_err(|e| {
            StageFailure::new(stage, format!("creating {}: {e}", log_dir.display()))
        })?;
        let console = std::fs::File::create(log_dir.join("console.log"))
            .map_err(|e| StageFailure::new(stage, format!("creating the log: {e}")))?;
        let tails = Arc::new(Tails::default());
        let toe_observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
            Arc::new(Forward(observer.clone())),
            Arc::new(ConsoleLog::new(std::io::BufWriter::new(console))),
            tails.clone(),
        ]));
        let engine = Engine::new(instance.clone())
            .with_observer(toe_observer)
            .with_env(env);
        let spec = RunSpec {
            documents: components
                .iter()
                .map(|c| DocumentRun {
                    resolved: c.resolved.clone(),
                    parameters: c.parameters.clone(),
                })
                .collect(),
            phases: Some(phases.iter().map(|s| s.to_string()).collect()),
            execution_id: uuid::Uuid::new_v4().to_string(),
        };
        let report = engine.run(spec).await;
        let _ = std::fs::write(
            log_dir.join("detailedoutput.json"),
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        );
        let mut packages = Vec::new();
        if stage == State::Testing && report.status.ok() {
            packages = read_inventory(instance.as_ref()).await;
        }
        Ok(SandboxRun {
            report,
            tails,
            packages,
            kept: None,
        })
    }
}

/// Free space the builder VM's disk gets beyond its content when the recipe gives no size:
/// components install packages in it.
const VM_BUILDER_HEADROOM: u64 = 2 << 30;

/// True when kiln puts the guest agent into a `bootstrap:` parent itself (the recipe asked for a
/// disk and did not list the agent among its own packages).
fn parent_adds_guest_agent(recipe: &Recipe) -> bool {
    matches!(recipe.parent, crate::recipe::ParentImage::Bootstrap { .. })
        && !recipe
            .bootstrap_packages
            .iter()
            .any(|p| p == "qemu-guest-agent")
}

/// One of kiln's own components, from its document text.
fn internal_component(text: &str) -> Result<Component, String> {
    let loaded = kiln_toe::load::parse(kiln_toe::document::Source {
        name: "kiln (built in)".into(),
        text: text.to_string(),
        dir: None,
    })
    .map_err(|d| d.to_string())?;
    let name = loaded.document.name.clone();
    Ok(Component {
        sha256: sha256_hex(text.as_bytes()),
        arn: None,
        source: format!("kiln:{name}"),
        resolved: Resolved {
            identity: format!("kiln:{name}"),
            loaded,
        },
        name,
        parameters: Vec::new(),
        cache: true,
        has_layer: true,
        has_test: false,
    })
}

struct SandboxRun {
    report: ExecutionReport,
    tails: Arc<Tails>,
    packages: Vec<Package>,
    /// The instance kept for debugging after this run failed.
    kept: Option<KeptInstance>,
}

/// A name usable as a file name: letters, digits, `.`, `_` and `-`; anything else becomes `-`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn short_id(run_dir: &std::path::Path) -> String {
    run_dir
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .rev()
                .take(8)
                .collect::<String>()
                .chars()
                .rev()
                .collect()
        })
        .unwrap_or_else(|| "build".into())
}

/// Environment variables Image Builder gives components, with kiln's values.
fn image_env(rec: &ImageRecord, phase: &str) -> Vec<(String, String)> {
    vec![
        ("IMAGE_BUILD_VERSION_ARN".into(), rec.arn.clone()),
        (
            "IMAGE_PIPELINE_ARN".into(),
            rec.pipeline.clone().unwrap_or_default(),
        ),
        ("IMAGE_PHASE".into(), phase.into()),
        ("IMAGE_VERSION".into(), rec.version.to_string()),
        ("IMAGE_BUILD_VERSION".into(), rec.build.to_string()),
    ]
}

/// Turns a builder's writable layer into a stored layer (moved, not copied).
async fn capture(
    store: &LayerStore,
    upper: &std::path::Path,
    created: &[String],
    epoch: i64,
    recipe: &Recipe,
    name: &str,
) -> Result<StoredLayer, String> {
    // Mount points kiln had to create are not the component's work: drop them if still empty.
    for rel in created.iter().rev() {
        let p = upper.join(rel);
        let _ = std::fs::remove_dir(&p);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = std::fs::remove_file(&p);
        }
    }
    let store = store.clone();
    let upper = upper.to_path_buf();
    let compression = compression_of(recipe.compression);
    let description = format!("component {name}");
    tokio::task::spawn_blocking(move || {
        let blob = kiln_image::write_layer(&upper, &[], epoch, compression, &store.blobs_dir())
            .map_err(|e| e.to_string())?;
        store
            .adopt(&upper, &blob, &description)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Reads the package database inside a (test) instance.
async fn read_inventory(instance: &dyn Instance) -> Vec<Package> {
    use kiln_instance::fileops::{FileOp, FileOpOutput};
    if let Ok(FileOpOutput::Text(t)) = instance
        .file_op(&FileOp::ReadFile {
            path: "/var/lib/dpkg/status".into(),
            encoding: Default::default(),
        })
        .await
    {
        return inventory::parse_dpkg_status(&t);
    }
    let req = kiln_instance::ExecRequest {
        program: "rpm".into(),
        args: vec!["-qa".into(), "--qf".into(), inventory::RPM_QUERY.into()],
        timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    match instance.exec(&req, &mut kiln_instance::Discard).await {
        Ok(out) if out.status.success() => inventory::parse_rpm_query(&out.stdout),
        _ => Vec::new(),
    }
}

/// The dpkg database straight from the layers (topmost copy wins; a whiteout hides it).
fn dpkg_from_layers(chain: &[StoredLayer]) -> Vec<Package> {
    use std::os::unix::fs::FileTypeExt;
    for l in chain.iter().rev() {
        let p = l.fs.join("var/lib/dpkg/status");
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() => return Vec::new(),
            Ok(m) if m.is_file() => {
                return std::fs::read_to_string(&p)
                    .map(|t| inventory::parse_dpkg_status(&t))
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    Vec::new()
}

fn image_settings(
    recipe: &Recipe,
    rec: &ImageRecord,
    parent: &Parent,
    components: &[Component],
    chain: &[StoredLayer],
    epoch: i64,
) -> kiln_image::ImageSettings {
    let created = Utc.timestamp_opt(epoch, 0).single().unwrap_or(rec.created);
    let pc = parent.config.as_ref().and_then(|c| c.config().clone());
    let c = &recipe.image_config;
    let mut env: Vec<String> = pc
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    for e in &c.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if env.is_empty() {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let mut labels = pc
        .as_ref()
        .and_then(|p| p.labels().clone())
        .unwrap_or_default();
    labels.extend(c.labels.clone());
    labels.insert("org.opencontainers.image.title".into(), recipe.name.clone());
    labels.insert(
        "org.opencontainers.image.version".into(),
        recipe.semantic_version.to_string(),
    );
    if !recipe.description.is_empty() {
        labels.insert(
            "org.opencontainers.image.description".into(),
            recipe.description.clone(),
        );
    }
    labels.insert(
        "org.opencontainers.image.base.name".into(),
        recipe.parent.to_string(),
    );
    labels.insert("dev.kiln.image.arn".into(), rec.arn.clone());
    let mut history: Vec<kiln_image::HistoryEntry> = parent
        .layers
        .iter()
        .map(|_| kiln_image::HistoryEntry {
            created_by: format!("kiln parent {}", recipe.parent),
            comment: None,
            empty_layer: false,
        })
        .collect();
    for c in components.iter().filter(|c| c.has_layer) {
        history.push(kiln_image::HistoryEntry {
            created_by: format!("kiln component {} (build, validate)", c.name),
            comment: Some(c.source.clone()),
            empty_layer: false,
        });
    }
    history.truncate(chain.len());
    kiln_image::ImageSettings {
        entrypoint: c
            .entrypoint
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.entrypoint().clone())),
        cmd: c
            .cmd
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.cmd().clone())),
        env,
        working_dir: c
            .working_dir
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.working_dir().clone())),
        user: c
            .user
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.user().clone())),
        labels: labels.into_iter().collect(),
        exposed_ports: c.exposed_ports.clone(),
        architecture: "amd64".into(),
        os: "linux".into(),
        created,
        history,
    }
}
