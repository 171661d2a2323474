//! One build: recipe → parent layers → components (each in a sandbox whose writable layer
//! becomes one OCI layer, cached by content; or all in one builder VM) → the disk → tests on a
//! fresh instance made from the output → each region, atomically → AVAILABLE. Any failure
//! leaves the image FAILED with the stage, the step, its last output lines and the log, and
//! nothing in any region.
//!
//! [`Builder::build`] checks the input and the host, numbers the build, and runs the stages
//! (`stages`) over a [`run::BuildRun`]; instances come from the [`Launcher`] it was given, so
//! the stages run the same over real sandboxes and VMs or over a fake in tests.

pub mod again;
mod boot;
mod components;
mod event;
mod failure;
mod image_config;
mod instance;
pub mod log;
pub mod queued;
mod run;
pub mod shipped_log;
mod stages;
#[cfg(test)]
pub(crate) mod tests;
pub mod worker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use kiln_dist::logs::LogDestination;
use kiln_instance::runlock::RunLock;
use kiln_instance::{BuilderKind, Launcher};
use kiln_toe::loader::DocumentLoader;
use kiln_toe::report::ExecutionReport;

use crate::cache::StepCache;
use crate::parent::RegistryCredentials;
use crate::principal::Principal;
use crate::recipe::Recipe;
use crate::record::{
    CacheUse, ComponentRecord, ImageRecord, LocalRuns, Records, State, StepTiming,
};
use crate::store::{self, sha256_hex, Home, LayerStore};

pub use components::file_safe;
pub use event::{BuildEvent, BuildObserver, Unobserved};

use components::Component;
use failure::StageFailure;
use run::BuildRun;

/// How a build runs.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Rebuild every component (the cache is refreshed, not read).
    pub no_cache: bool,
    /// Make the parent image again (re-bootstrap) instead of reusing it.
    pub refresh_parent: bool,
    /// Timestamp for layer files and the image config (`SOURCE_DATE_EPOCH`); the build's start
    /// time when `None`.
    pub epoch: Option<i64>,
    /// Most bytes the layer store may use before least-recently-used layers are removed.
    pub cache_max_bytes: u64,
    /// Credentials for registries parent images come from and images go to.
    pub registries: Vec<RegistryCredentials>,
    /// kiln's S3 settings, for logs shipped to a bucket and bucket regions.
    pub s3: Option<kiln_s3::S3Config>,
    /// What the configured region names are (registries, buckets); other names are folders.
    pub regions: crate::regions::RegionMap,
    /// Which components are trusted, and where the others run (kiln's configuration,
    /// `trust:`).
    pub trust: crate::trust::TrustPolicy,
    /// The scanner images are scanned with when their recipe asks (kiln's configuration,
    /// `scanning:`); none: such images are recorded as not scanned.
    pub scanning: Option<crate::scan::ScanSettings>,
    /// Where the KMS master key is (kiln's configuration, `kms:`).
    pub kms: crate::kms::KmsSettings,
    /// The region of the shared step cache (kiln's configuration, `cache.region`): steps
    /// another host built are fetched from it, and steps built here are published to it.
    pub shared_cache: Option<String>,
}

impl BuildOptions {
    /// How distribution, take-backs and retirements reach the configured registries and
    /// buckets.
    pub fn access(&self) -> kiln_dist::RegistryAccess {
        crate::parent::registry_access(&self.registries).with_s3(self.s3.clone())
    }
}

/// Errors that stop a build before it gets a number (bad input, a host that cannot build).
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
    /// A component no operator account owns must run in a VM, and the VM builder cannot make
    /// what the recipe asks for.
    #[error(transparent)]
    Trust(#[from] crate::trust::VmRefusal),
    /// A KMS key the recipe names cannot be used (unknown, disabled, not the account's).
    #[error("the recipe's KMS keys:\n{0}")]
    Kms(String),
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The worker running the build lost its lease: the build is another worker's now.
    #[error("this worker lost its lease on the build: another worker runs it now")]
    LeaseLost,
}

/// A build checked and ready to be numbered: the recipe it runs (moved to the VM builder when
/// the trust policy said so), its components and the builder choice.
struct Prepared {
    recipe: Recipe,
    components: Vec<Component>,
    choice: crate::trust::BuilderChoice,
}

/// A numbered build about to run, and what it runs with.
struct Execution<'a> {
    prepared: &'a Prepared,
    records: &'a Records,
    rec: ImageRecord,
    run_dir: PathBuf,
    lock: RunLock,
    observer: Arc<dyn BuildObserver>,
}

/// How [`Builder::execute`] ended.
enum Executed {
    /// The build ended and its final record is stored.
    Ended(Box<ImageRecord>),
    /// The worker's lease went: nothing more was recorded.
    LeaseLost,
}

/// Where a build comes from, for its record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    /// Who started it.
    pub principal: Principal,
    /// The pipeline, when a pipeline runs it.
    pub pipeline: Option<String>,
    /// The stored recipe.
    pub recipe_arn: Option<String>,
    /// The infrastructure and distribution configurations.
    pub configurations: Vec<String>,
    /// The image's tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// A person's start or the schedule's.
    pub build_type: crate::record::BuildType,
    /// Why it runs (the scheduler's rebuild conditions that held), kept in the record.
    pub triggers: Vec<crate::updates::Trigger>,
}

impl Origin {
    /// A build a principal started from a recipe file (no pipeline, no stored recipe).
    pub fn of(principal: Principal) -> Self {
        Origin {
            principal,
            pipeline: None,
            recipe_arn: None,
            configurations: Vec::new(),
            tags: Default::default(),
            build_type: crate::record::BuildType::UserInitiated,
            triggers: Vec::new(),
        }
    }
}

/// Runs builds in a data directory.
pub struct Builder {
    home: Home,
    options: BuildOptions,
    loader: DocumentLoader,
    store: Option<crate::state::Store>,
    origin: Origin,
    launcher: Arc<dyn Launcher>,
    logging: Vec<LogDestination>,
    notices: Option<Arc<dyn crate::notify::Notices>>,
    outbox: Option<Arc<shipped_log::LogOutbox>>,
}

impl Builder {
    /// A builder for a data directory: `origin` says who builds, for the records; `launcher`
    /// starts its builder and test instances.
    pub fn new(
        home: Home,
        options: BuildOptions,
        origin: Origin,
        launcher: Arc<dyn Launcher>,
    ) -> Self {
        Builder {
            home,
            options,
            loader: DocumentLoader::new(),
            store: None,
            origin,
            launcher,
            logging: Vec::new(),
            outbox: None,
            notices: None,
        }
    }

    /// Writes what the final record tells subscribers (an image AVAILABLE or FAILED) into the
    /// outbox, in the same transaction as the record.
    pub fn with_notices(mut self, notices: Arc<dyn crate::notify::Notices>) -> Self {
        self.notices = Some(notices);
        self
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

    /// Ships every build's logs to these places when it ends (an infrastructure
    /// configuration's `logging`).
    pub fn with_logging(mut self, logging: Vec<LogDestination>) -> Self {
        self.logging = logging;
        self
    }

    /// Also hands every line of the build log to `outbox` (a queued build's worker sends them
    /// to the store).
    pub fn with_log_outbox(mut self, outbox: Arc<shipped_log::LogOutbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The builder the components run on: the recipe's, or the VM builder when one of them
    /// is untrusted and the trust policy (or the infrastructure) says so.
    fn choose_builder(
        &self,
        recipe: &Recipe,
        components: &[Component],
    ) -> crate::trust::BuilderChoice {
        let account = &self.origin.principal.account;
        let owned: Vec<crate::trust::OwnedComponent> = components
            .iter()
            .map(|c| crate::trust::OwnedComponent {
                component: c.arn.clone().unwrap_or_else(|| c.source.clone()),
                owner: crate::trust::Owner::of(c.arn.as_deref(), account),
            })
            .collect();
        self.options.trust.decide(
            recipe.infrastructure.builder,
            recipe.infrastructure.untrusted_components,
            &owned,
        )
    }

    /// Checks that this host can build the recipe, before anything is numbered or run.
    fn preflight(&self, recipe: &Recipe) -> Result<(), BuildError> {
        let env = |e: kiln_instance::InstanceError| BuildError::Environment(e.to_string());
        if recipe.wants_disk() || recipe.infrastructure.builder == BuilderKind::Vm {
            // The programs disks are assembled and converted with; QEMU is the launcher's.
            let missing = kiln_image::disk::missing_tools();
            if !missing.is_empty() {
                return Err(BuildError::Environment(format!(
                    "disk images need {} on this host: run scripts/setup, or apt-get install them",
                    missing.join(", ")
                )));
            }
            self.launcher.preflight(BuilderKind::Vm).map_err(env)?;
        }
        Ok(())
    }

    /// Builds a recipe. Errors are returned for bad input (nothing was started); once the build
    /// has a number, the returned record says how it ended (AVAILABLE, FAILED or CANCELLED).
    pub async fn build(
        &self,
        recipe: &Recipe,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<ImageRecord, BuildError> {
        let prepared = self.prepare(recipe).await?;
        let recipe = &prepared.recipe;
        kiln_instance::runlock::sweep(&self.home.run());
        let (run_dir, lock) = self.hold_run_dir(recipe)?;
        let records = Records::new(self.store().await?);
        let access = self.options.access();
        for b in records
            .recover_interrupted_telling(&LocalRuns, &access, self.notices.as_deref())
            .await?
        {
            observer.event(&BuildEvent::Progress {
                message: format!("{b} was interrupted earlier; it is now FAILED"),
            });
        }
        let mut rec = self.new_record(recipe, &prepared.components, Some(run_dir.clone()));
        rec.builder = Some(prepared.choice.clone());
        records.create(&mut rec).await?;
        let run = Execution {
            prepared: &prepared,
            records: &records,
            rec,
            run_dir,
            lock,
            observer,
        };
        match self.execute(run, std::future::pending()).await? {
            Executed::Ended(rec) => Ok(*rec),
            // Nothing but a lease is lost, and this build has none.
            Executed::LeaseLost => Err(BuildError::LeaseLost),
        }
    }

    /// Checks the input and the host and chooses the builder: everything a build does before
    /// it gets a number.
    async fn prepare(&self, recipe: &Recipe) -> Result<Prepared, BuildError> {
        self.prepare_with(recipe, None).await
    }

    /// [`Builder::prepare`] with the builder already chosen (by the server that queued the
    /// build: its trust policy decides, not the worker's).
    async fn prepare_with(
        &self,
        recipe: &Recipe,
        chosen: Option<crate::trust::BuilderChoice>,
    ) -> Result<Prepared, BuildError> {
        // Every build starts sandboxes (components, tests, kiln's own layers): a host that
        // cannot is told first, before anything is read.
        self.launcher
            .preflight(BuilderKind::Sandbox)
            .map_err(|e| BuildError::Environment(e.to_string()))?;
        let components = components::load(&self.loader, recipe).await?;
        let choice = match chosen {
            Some(c) => c,
            None => self.choose_builder(recipe, &components),
        };
        let recipe = if choice.raised() {
            crate::trust::on_vm_builder(recipe, &choice)?
        } else {
            recipe.clone()
        };
        self.preflight(&recipe)?;
        crate::kms::check(
            &recipe,
            &self.home,
            &self.options.kms,
            &self.options.regions,
            &self.origin.principal.account,
        )
        .map_err(BuildError::Kms)?;
        Ok(Prepared {
            recipe,
            components,
            choice,
        })
    }

    /// The store builds are recorded in.
    async fn store(&self) -> Result<crate::state::Store, BuildError> {
        Ok(match &self.store {
            Some(s) => s.clone(),
            None => crate::state::Store::open(&self.home).await?,
        })
    }

    /// Holds a fresh run folder for a build of `recipe`, before its record says it runs here,
    /// so that another kiln never takes a starting build for an interrupted one.
    fn hold_run_dir(&self, recipe: &Recipe) -> Result<(PathBuf, RunLock), BuildError> {
        let run_dir = self.home.run().join(format!(
            "{}-{}-{}",
            recipe.name,
            recipe.semantic_version,
            uuid::Uuid::new_v4().simple()
        ));
        let lock =
            RunLock::acquire(&run_dir).map_err(|e| BuildError::Environment(e.to_string()))?;
        Ok((run_dir, lock))
    }

    /// Runs a numbered build's stages and records how it ended; `lost` resolving (a worker's
    /// lease gone) stops the stages and writes nothing more, since the build is another
    /// worker's by then.
    async fn execute(
        &self,
        run: Execution<'_>,
        lost: impl std::future::Future<Output = ()>,
    ) -> Result<Executed, BuildError> {
        let Execution {
            prepared,
            records,
            rec,
            run_dir,
            lock,
            observer,
        } = run;
        let (recipe, components) = (&prepared.recipe, &prepared.components);
        let started = Instant::now();
        let epoch = self.options.epoch.unwrap_or(Utc::now().timestamp());
        LayerStore::new(self.home.clone()).sweep();
        crate::disk::cache::DiskCache::new(&self.home).sweep();
        let logs = rec.logs.clone();
        std::fs::create_dir_all(&logs).map_err(store::io("creating", &logs))?;
        let observer: Arc<dyn BuildObserver> =
            Arc::new(log::Tee::new(observer, &logs, self.outbox.clone()));
        observer.event(&BuildEvent::Started {
            record: Box::new(rec.clone()),
        });
        tell_choice(observer.as_ref(), &prepared.choice);

        let mut run = BuildRun {
            home: &self.home,
            options: &self.options,
            launcher: self.launcher.as_ref(),
            recipe,
            components,
            records,
            observer: observer.clone(),
            run_dir,
            epoch,
            distributing: Arc::new(AtomicBool::new(false)),
            rec,
            parent: None,
            chain: Vec::new(),
            disk: None,
        };
        let result = {
            let arn = run.rec.arn.clone();
            let distributing = run.distributing.clone();
            // `kiln image cancel` asks through the store; dropping the stages stops their
            // instance (sandbox helpers and VM keepers die with their handles). Once
            // distribution starts the build finishes: a region is never left half-written.
            tokio::select! {
                r = stages::run_all(&mut run) => Some(Some(r)),
                _ = cancel_requested(records, &arn, &distributing) => Some(None),
                _ = lost => None,
            }
        };
        let Some(result) = result else {
            observer.event(&BuildEvent::Warning {
                message: "this worker lost its lease on the build (it was paused or cut off \
                          for longer than the lease): it stops here and records nothing; \
                          another worker runs the build"
                    .into(),
            });
            drop(lock);
            kiln_instance::vm::remove_sockets_under(&run.run_dir);
            store::remove_tree(&run.run_dir);
            return Ok(Executed::LeaseLost);
        };
        let rec = self.finish(run, result, lock, started).await?;
        Ok(Executed::Ended(Box::new(rec)))
    }

    fn new_record(
        &self,
        recipe: &Recipe,
        components: &[Component],
        run_dir: Option<PathBuf>,
    ) -> ImageRecord {
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
            created: Utc::now(),
            duration_ms: 0,
            logs: PathBuf::new(),
            host: run_dir
                .as_ref()
                .map(|_| crate::record::this_host().to_owned()),
            run_dir,
            owner: self.origin.principal.user.clone(),
            account: self.origin.principal.account.clone(),
            pipeline: self.origin.pipeline.clone(),
            recipe_arn: self.origin.recipe_arn.clone(),
            configurations: self.origin.configurations.clone(),
            distributing: Vec::new(),
            tags: self.origin.tags.clone(),
            usage: None,
            build_type: self.origin.build_type,
            triggers: self.origin.triggers.clone(),
            network: Some(recipe.infrastructure.network),
            builder: None,
            scan: None,
            account_copies: Vec::new(),
            supply_chain: None,
            attempt: None,
        };
        rec.set_state(State::Pending, None);
        rec
    }

    /// Records how the build ended, releases its run folder, ships its logs and keeps the
    /// layer store within its bound.
    async fn finish(
        &self,
        run: BuildRun<'_>,
        result: Option<Result<(), StageFailure>>,
        lock: RunLock,
        started: Instant,
    ) -> Result<ImageRecord, BuildError> {
        let BuildRun {
            mut rec,
            records,
            observer,
            run_dir,
            chain,
            disk,
            recipe: run_recipe,
            ..
        } = run;
        match result {
            None => {
                observer.event(&BuildEvent::Progress {
                    message: "cancelled on request".into(),
                });
                rec.set_state(State::Cancelled, Some("cancelled on request".into()));
            }
            Some(Ok(())) => rec.set_state(State::Available, None),
            Some(Err(f)) => {
                rec.set_state(State::Failed, Some(f.reason.clone()));
                rec.failure = Some(f.info());
            }
        }
        rec.duration_ms = millis(started);
        let (builder, test) = crate::usage::instances(run_recipe, &rec);
        let usage = rec.usage.get_or_insert_with(Default::default);
        usage.builder = builder;
        usage.test = test;
        // The final record is written while the run folder is still held: another kiln that
        // sees the folder released must also see the final state, never take the build for
        // an interrupted one.
        rec.distributing.clear();
        let outbox = crate::notify::final_outbox(self.notices.as_deref(), &rec).await;
        let saved = records.save_with(&rec, outbox).await;
        drop(lock);
        // A cancelled build's VM went with its handle, not through `stop`.
        kiln_instance::vm::remove_sockets_under(&run_dir);
        store::remove_tree(&run_dir);
        saved?;
        self.ship_logs(&rec, observer.as_ref()).await;
        observer.event(&BuildEvent::Finished {
            record: Box::new(rec.clone()),
        });
        let mut keep: HashSet<String> = chain.iter().map(|l| l.info.diff_id.clone()).collect();
        keep.extend(
            disk.iter()
                .flat_map(|d| d.chain.iter().map(|l| l.info.diff_id.clone())),
        );
        keep.extend(disk.iter().map(|d| d.entry.key.clone()));
        let cache = StepCache::new(self.home.clone());
        if cache.usage() > self.options.cache_max_bytes {
            let report = cache.prune(self.options.cache_max_bytes, &keep);
            tracing::info!(?report, "pruned the step cache");
        }
        Ok(rec)
    }

    /// Copies or uploads the build's logs where `with_logging` said, under
    /// `NAME/VERSION/BUILD`.
    async fn ship_logs(&self, rec: &ImageRecord, observer: &dyn BuildObserver) {
        let sub = format!("{}/{}/{}", rec.name, rec.version, rec.build);
        for dest in &self.logging {
            match kiln_dist::logs::ship(&rec.logs, &sub, dest, self.options.s3.as_ref()).await {
                Ok(s) => observer.event(&BuildEvent::LogsShipped {
                    to: s.to,
                    files: s.files,
                    uploaded: s.uploaded,
                }),
                Err(e) => observer.event(&BuildEvent::Warning {
                    message: e.to_string(),
                }),
            }
        }
    }
}

/// Says in the build's log which builder runs the components, and why.
fn tell_choice(observer: &dyn BuildObserver, choice: &crate::trust::BuilderChoice) {
    observer.event(&BuildEvent::Builder {
        choice: choice.clone(),
    });
    if let Some(ignored) = choice.ignored_setting {
        observer.event(&BuildEvent::Warning {
            message: format!(
                "the infrastructure's `untrustedComponents: {ignored}` asks for less than this server's `trust.untrustedComponents: {}`: it is ignored",
                choice.boundary
            ),
        });
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

pub(crate) fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// The steps of a report with their timings, as the record keeps them.
pub(crate) fn timings(report: &ExecutionReport) -> Vec<StepTiming> {
    report
        .documents
        .iter()
        .flat_map(|d| d.phases.iter())
        .flat_map(|p| {
            p.steps.iter().map(move |s| StepTiming {
                step: format!("{}/{}", p.name, s.name),
                action: s.action.clone(),
                status: s.status,
                duration_ms: (s.end_time - s.start_time).num_milliseconds().max(0) as u64,
            })
        })
        .collect()
}
