//! Builder and test instances of a build: started through the launcher, driven by the
//! component engine with their logs written as they go, then stopped, or kept for debugging
//! when they failed and the recipe asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kiln_instance::sandbox::SandboxSpec;
use kiln_instance::vm::VmSpec;
use kiln_instance::{Instance, InstanceError, LaunchSpec, Launched};
use kiln_toe::events::{ConsoleLog, Fanout, Observer};
use kiln_toe::report::ExecutionReport;
use kiln_toe::{DocumentRun, Engine, RunSpec};

use crate::instances::{Instances, KeptInstance};
use crate::record::{Package, State};
use crate::store::StoredLayer;

use super::components::Component;
use super::event::Forward;
use super::failure::{StageFailure, Tails, TAIL};
use super::run::BuildRun;

/// What running documents on an instance gave.
pub(crate) struct Driven {
    pub report: ExecutionReport,
    pub tails: Arc<Tails>,
    /// The package inventory, read after passing tests.
    pub packages: Vec<Package>,
    /// The instance kept for debugging after this run failed.
    pub kept: Option<KeptInstance>,
}

/// Documents to run on an instance, and where their logs go.
pub(crate) struct Drive<'a> {
    pub components: &'a [&'a Component],
    pub phases: &'a [&'a str],
    pub log_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub stage: State,
}

/// Runs documents' phases on an instance, logging into `log_dir` (`console.log`,
/// `detailedoutput.json`); after passing tests, reads the package inventory.
pub(crate) async fn drive(
    run: &BuildRun<'_>,
    instance: Arc<dyn Instance>,
    d: &Drive<'_>,
) -> Result<Driven, StageFailure> {
    let stage = d.stage;
    std::fs::create_dir_all(&d.log_dir)
        .map_err(|e| StageFailure::new(stage, format!("creating {}: {e}", d.log_dir.display())))?;
    let console = std::fs::File::create(d.log_dir.join("console.log"))
        .map_err(|e| StageFailure::new(stage, format!("creating the log: {e}")))?;
    let tails = Arc::new(Tails::default());
    let toe_observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
        Arc::new(Forward(run.observer.clone())),
        Arc::new(ConsoleLog::new(std::io::BufWriter::new(console))),
        tails.clone(),
    ]));
    let engine = Engine::new(instance.clone())
        .with_observer(toe_observer)
        .with_env(d.env.clone());
    let spec = RunSpec {
        documents: d
            .components
            .iter()
            .map(|c| DocumentRun {
                resolved: c.resolved.clone(),
                parameters: c.parameters.clone(),
            })
            .collect(),
        phases: Some(d.phases.iter().map(|s| s.to_string()).collect()),
        execution_id: uuid::Uuid::new_v4().to_string(),
    };
    let report = engine.run(spec).await;
    let _ = std::fs::write(
        d.log_dir.join("detailedoutput.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
    let mut packages = Vec::new();
    if stage == State::Testing && report.status.ok() {
        packages = crate::inventory::read(instance.as_ref()).await;
    }
    Ok(Driven {
        report,
        tails,
        packages,
        kept: None,
    })
}

/// A sandbox to run documents in.
pub(crate) struct SandboxJob<'a> {
    /// Its id.
    pub id: String,
    /// The layers it sees, bottom first.
    pub chain: &'a [StoredLayer],
    /// Its folder (writable layer, work and root folders).
    pub dir: PathBuf,
    /// What runs in it.
    pub drive: Drive<'a>,
    /// Keep it when the run fails.
    pub keep: bool,
}

/// What a sandbox run left: the run, its writable layer and the mount points kiln made in it.
pub(crate) struct SandboxResult {
    pub driven: Driven,
    pub upper: PathBuf,
    pub created: Vec<String>,
}

/// Runs documents' phases in a sandbox over a chain of layers.
pub(crate) async fn in_sandbox(
    run: &BuildRun<'_>,
    job: SandboxJob<'_>,
) -> Result<SandboxResult, StageFailure> {
    let stage = job.drive.stage;
    let recipe = run.recipe;
    let upper = job.dir.join("upper");
    let mut spec = SandboxSpec::new(
        &job.id,
        job.chain.iter().rev().map(|l| l.fs.clone()).collect(),
        upper.clone(),
        job.dir.join("work"),
        job.dir.join("root"),
    );
    spec.working_dir = recipe.working_directory.clone();
    spec.network = recipe.infrastructure.network;
    spec.limits = recipe.infrastructure.limits.clone();
    spec.hostname = format!("kiln-{}", recipe.name.chars().take(40).collect::<String>());
    let sandbox = run
        .launcher
        .launch(LaunchSpec::Sandbox(spec))
        .await
        .map_err(|e| StageFailure::new(stage, format!("starting the sandbox: {e}")))?;
    let driven = drive(run, sandbox.clone(), &job.drive).await;
    let created = sandbox.created_paths();
    let failed = !matches!(&driven, Ok(d) if d.report.status.ok());
    let (kept, stopped) = keep_or_stop(run, &sandbox, job.keep && failed, stage).await;
    if let Err(e) = stopped {
        tracing::warn!("stopping the sandbox: {e}");
    }
    let mut driven = driven?;
    driven.kept = kept;
    Ok(SandboxResult {
        driven,
        upper,
        created,
    })
}

/// Boots a VM from `disk` (through a copy-on-write overlay in `dir`). A boot that fails
/// becomes a failure of `stage` quoting the serial console.
pub(crate) async fn start_vm(
    run: &BuildRun<'_>,
    id: &str,
    disk: &Path,
    dir: &Path,
    log_dir: &Path,
    stage: State,
) -> Result<Arc<dyn Launched>, StageFailure> {
    let recipe = run.recipe;
    let vm = &recipe.infrastructure.vm;
    let spec = VmSpec {
        id: id.to_string(),
        disk: disk.to_path_buf(),
        dir: dir.to_path_buf(),
        memory_mib: vm.memory_mib,
        cpus: vm.cpus,
        network: recipe.infrastructure.network,
        boot_timeout: Duration::from_secs(vm.boot_timeout_secs),
        // The launcher knows where kiln-agent is.
        agent: PathBuf::new(),
        working_dir: recipe.working_directory.clone(),
        env: Vec::new(),
        accel: vm.accel,
        // Whether KVM works is a fact of this host until it reboots: /run is the place.
        kvm_verdict: Some(PathBuf::from("/run/kiln/kvm-verdict")),
    };
    let _ = std::fs::create_dir_all(log_dir);
    match run.launcher.launch(LaunchSpec::Vm(spec)).await {
        Ok(v) => Ok(v),
        Err(e) => Err(boot_failure(e, dir, log_dir, stage)),
    }
}

/// A VM that did not boot: the reason, and the console's last lines (kept in the logs).
fn boot_failure(e: InstanceError, dir: &Path, log_dir: &Path, stage: State) -> StageFailure {
    let console = dir.join("console.log");
    let kept = log_dir.join("serial-console.log");
    let _ = std::fs::copy(&console, &kept);
    let text = e.to_string();
    let reason = text
        .split_once("; the console")
        .map_or(text.as_str(), |(head, _)| head)
        .to_string();
    let lines: Vec<String> = std::fs::read_to_string(&kept)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let tail = lines[lines.len().saturating_sub(TAIL)..].to_vec();
    StageFailure {
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
    }
}

/// Keeps a VM's serial console beside the logs of what ran on it.
pub(crate) fn save_console(instance: &dyn Launched, log_dir: &Path) {
    if let Some(console) = instance.console_log() {
        let _ = std::fs::copy(console, log_dir.join("serial-console.log"));
    }
}

/// Ends an instance's work: kept for debugging when `keep` (it failed and the recipe asks),
/// stopped otherwise; a test instance is discarded (nothing reads what it wrote, so a test VM
/// is switched off rather than shut down). Returns the kept instance and how stopping went.
pub(crate) async fn keep_or_stop(
    run: &BuildRun<'_>,
    instance: &Arc<dyn Launched>,
    keep: bool,
    stage: State,
) -> (Option<KeptInstance>, Result<(), InstanceError>) {
    if keep {
        let instances = Instances::new(run.home);
        let id = instance.id().to_string();
        match instance.keep(&instances.dir_of(&id)).await {
            Ok(k) => {
                let kept = KeptInstance {
                    id,
                    kind: instance.builder_kind(),
                    build: run.rec.build_version(),
                    stage,
                    kept_at: Utc::now(),
                    pid: k.pid,
                    dir: k.dir,
                    qga_socket: k.guest_agent_socket,
                    console: k.console,
                };
                if let Err(e) = instances.add(&kept) {
                    tracing::warn!("could not record the kept instance: {e}");
                }
                return (Some(kept), Ok(()));
            }
            Err(e) => tracing::warn!("could not keep the failed instance: {e}"),
        }
    }
    let stopped = if stage == State::Testing {
        instance.discard().await
    } else {
        instance.stop().await
    };
    (None, stopped)
}
