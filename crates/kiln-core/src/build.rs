//! One build: recipe → parent layers → a sandbox per component (its writable layer becomes one
//! OCI layer, cached by content) → tests in a fresh sandbox from the captured image → each
//! region, atomically → AVAILABLE. Any failure leaves the image FAILED with the stage, the
//! step, its last output lines and the log, and nothing in any region.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use kiln_instance::sandbox::{RunLock, Sandbox, SandboxSpec};
use kiln_instance::Instance;
use kiln_toe::events::{ConsoleLog, Event, Fanout, Observer};
use kiln_toe::loader::{DocumentLoader, LoadError, Resolved};
use kiln_toe::report::{ExecutionReport, StepStatus};
use kiln_toe::{DocumentRun, Engine, RunSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{StepCache, StepKey};
use crate::inventory;
use crate::parent::{self, compression_of, Parent};
use crate::recipe::{ComponentSource, Recipe};
use crate::record::*;
use crate::store::{self, read_json, write_json, Home, LayerStore, StoredLayer};

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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
}

impl Builder {
    /// A builder for a data directory.
    pub fn new(home: Home, options: BuildOptions) -> Self {
        Builder {
            home,
            options,
            loader: DocumentLoader::new(),
        }
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
                    "parameter{} {} ha{} no default: give {} under `parameters` in the recipe",
                    if missing.len() > 1 { "s" } else { "" },
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if missing.len() > 1 { "ve" } else { "s" },
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
        let records = Records::new(self.home.clone());
        for b in records.recover_interrupted() {
            observer.event(&BuildEvent::Progress(&format!(
                "{b} was interrupted earlier; it is now FAILED"
            )));
        }
        let build = records.allocate(&recipe.name, &recipe.semantic_version)?;
        let logs = records.logs_dir(&recipe.name, &recipe.semantic_version, build);
        std::fs::create_dir_all(&logs).map_err(store::io("creating", &logs))?;
        let mut rec = ImageRecord {
            arn: image_arn(&recipe.name, &recipe.semantic_version, build),
            name: recipe.name.clone(),
            version: recipe.semantic_version,
            build,
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
            failure: None,
            outputs: Vec::new(),
            layers: Vec::new(),
            packages: Vec::new(),
            created: now,
            duration_ms: 0,
            logs: logs.clone(),
            run_dir: Some(run_dir.clone()),
        };
        rec.set_state(State::Pending, None);
        records.save(&rec)?;
        observer.event(&BuildEvent::Started(&rec));

        let mut chain: Vec<StoredLayer> = Vec::new();
        let result = self
            .stages(
                recipe,
                &components,
                &mut rec,
                &records,
                &run_dir,
                epoch,
                &mut chain,
                &observer,
            )
            .await;
        match result {
            Ok(()) => rec.set_state(State::Available, None),
            Err(f) => {
                rec.set_state(State::Failed, Some(f.reason.clone()));
                rec.failure = Some(FailureInfo {
                    stage: f.stage,
                    component: f.component,
                    step: f.step,
                    reason: f.reason,
                    output_tail: f.tail,
                    log: f.log,
                });
            }
        }
        rec.duration_ms = millis(started);
        // The final record is written while the run folder is still held: another kiln that
        // sees the folder released must also see the final state, never take the build for
        // an interrupted one.
        let saved = records.save(&rec);
        drop(lock);
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
    ) -> Result<(), StageFailure> {
        let save = |rec: &ImageRecord| {
            if let Err(e) = records.save(rec) {
                tracing::warn!("cannot save the build record: {e}");
            }
        };
        // BUILDING: the parent, then each component.
        rec.set_state(State::Building, None);
        save(rec);
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
        save(rec);

        let cache = StepCache::new(self.home.clone());
        let store = LayerStore::new(self.home.clone());
        let total = components.len();
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
            save(rec);
            observer.event(&BuildEvent::ComponentFinished {
                index: i,
                record: &rec.components[i],
            });
        }
        rec.layers = chain.iter().map(|l| l.info.diff_id.clone()).collect();

        // TESTING: a fresh sandbox from the captured image, every component's test phase.
        rec.set_state(State::Testing, None);
        save(rec);
        observer.event(&BuildEvent::Stage(State::Testing));
        let t0 = Instant::now();
        let testable: Vec<&Component> = components.iter().filter(|c| c.has_test).collect();
        let test_key = {
            let mut h = Sha256::new();
            h.update(b"kiln-test-v1");
            for l in chain.iter() {
                h.update(l.info.diff_id.as_bytes());
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
        let cached: Option<TestCacheEntry> = if self.options.no_cache {
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
            });
            rec.packages = entry.packages;
        } else {
            let log_dir = rec.logs.join("test");
            let limit =
                std::time::Duration::from_secs(u64::from(recipe.tests.timeout_minutes) * 60);
            let test_id = format!("{}-test", short_id(run_dir));
            let test_dir = run_dir.join("test");
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
            );
            let (report, _, _) = match tokio::time::timeout(limit, run).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(StageFailure::new(
                        State::Testing,
                        format!(
                            "the tests ran longer than imageTestsConfiguration.timeoutMinutes ({})",
                            recipe.tests.timeout_minutes
                        ),
                    ))
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
        save(rec);

        // DISTRIBUTING: every region gets the image, each atomically.
        rec.set_state(State::Distributing, None);
        save(rec);
        observer.event(&BuildEvent::Stage(State::Distributing));
        let settings = image_settings(recipe, rec, &parent, components, chain, epoch);
        let blobs: Vec<kiln_image::LayerBlob> = chain.iter().map(StoredLayer::as_blob).collect();
        for d in &recipe.distributions {
            let dir = d
                .path
                .clone()
                .unwrap_or_else(|| self.home.regions().join(&d.region));
            let tags = [
                rec.version.to_string(),
                format!("{}-{}", rec.version, rec.build),
            ];
            for tag in &tags {
                let (dir2, tag2, blobs2, settings2) =
                    (dir.clone(), tag.clone(), blobs.clone(), settings.clone());
                let written = tokio::task::spawn_blocking(move || {
                    kiln_image::write_image(&dir2, &tag2, &blobs2, &settings2)
                })
                .await
                .map_err(|e| StageFailure::new(State::Distributing, e.to_string()))?
                .map_err(|e| {
                    StageFailure::new(State::Distributing, format!("region {}: {e}", d.region))
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
        Ok(())
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
        let console = std::fs::File::create(log_dir.join("console.log"))
            .map_err(|e| StageFailure::new(stage, format!("creating the log: {e}")))?;
        let tails = Arc::new(Tails::default());
        let toe_observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
            Arc::new(Forward(observer.clone())),
            Arc::new(ConsoleLog::new(std::io::BufWriter::new(console))),
            tails.clone(),
        ]));
        let engine = Engine::new(sandbox.clone())
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
            packages = read_inventory(sandbox.as_ref()).await;
        }
        let created = sandbox.created_paths();
        if let Err(e) = sandbox.stop().await {
            tracing::warn!("stopping the sandbox: {e}");
        }
        Ok((
            SandboxRun {
                report,
                tails,
                packages,
            },
            upper,
            created,
        ))
    }
}

struct SandboxRun {
    report: ExecutionReport,
    tails: Arc<Tails>,
    packages: Vec<Package>,
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
        ("IMAGE_PIPELINE_ARN".into(), String::new()),
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
