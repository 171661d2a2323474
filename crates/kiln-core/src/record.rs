//! The record of a build: one JSON file per image build version, with its logs beside it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use kiln_instance::vm::Accel;
use kiln_instance::BuilderKind;
use kiln_store::{Filter, Kind, Row, Update};
use kiln_toe::report::StepStatus;

pub use crate::disk::GuestAgent;
/// What distribution wrote: the record keeps kiln-dist's outputs as they are.
pub use kiln_dist::{Output as OutputRecord, OutputKind, Planned as PlannedOutput};

use crate::state::{to_json, Store};
use crate::store::{read_json, Home, StoreError};
use crate::version::{Version, VersionFilter};

pub use crate::principal::{LOCAL_ACCOUNT, LOCAL_REGION};

/// The state of an image build (Image Builder's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Accepted, not started.
    Pending,
    /// Components are running.
    Building,
    /// Tests are running on a fresh instance.
    Testing,
    /// Being written to its regions.
    Distributing,
    /// Built, tested and distributed.
    Available,
    /// Something failed; see `failure`.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Still there and usable, but marked as outdated by a lifecycle policy (parents and
    /// pipelines still take it).
    Deprecated,
    /// Still in its regions, but no build takes it as a parent any more (a lifecycle policy
    /// disabled it).
    Disabled,
    /// Its artifacts were removed from every region; the record stays to say so.
    Deleted,
}

impl State {
    /// The Image Builder spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Building => "BUILDING",
            State::Testing => "TESTING",
            State::Distributing => "DISTRIBUTING",
            State::Available => "AVAILABLE",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
            State::Deprecated => "DEPRECATED",
            State::Disabled => "DISABLED",
            State::Deleted => "DELETED",
        }
    }

    /// Reads the Image Builder spelling (as the store's `state` column keeps it).
    pub fn parse(s: &str) -> Option<State> {
        // Through serde's derive, which knows every variant.
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// The states of a build under way (not yet AVAILABLE, FAILED or CANCELLED).
    pub const RUNNING: [State; 4] = [
        State::Pending,
        State::Building,
        State::Testing,
        State::Distributing,
    ];

    /// True once nothing will change any more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            State::Pending | State::Building | State::Testing | State::Distributing
        )
    }

    /// True for the states of a build whose artifacts are in its regions: what lifecycle
    /// policies count and act on, and what a version's names may point back at.
    pub fn has_artifacts(self) -> bool {
        matches!(self, State::Available | State::Deprecated | State::Disabled)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// The new state.
    pub state: State,
    /// When.
    pub at: DateTime<Utc>,
    /// Why (for FAILED and CANCELLED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lifecycle execution that made the change (`lce-...`), for DEPRECATED, DISABLED and
    /// DELETED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// Why a build failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    /// BUILDING, TESTING, ...
    pub stage: State,
    /// The component, when one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// `phase/step`, when a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What went wrong.
    pub reason: String,
    /// The last lines of the failing step's output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
    /// The full log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// The instance kept for debugging (`terminateInstanceOnFailure: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_instance: Option<String>,
}

impl FailureInfo {
    /// A failure of a whole stage, with no component, step or output to show.
    pub fn of_stage(stage: State, reason: String) -> Self {
        FailureInfo {
            stage,
            component: None,
            step: None,
            reason,
            output_tail: Vec::new(),
            log: None,
            kept_instance: None,
        }
    }
}

/// How a component's layer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheUse {
    /// Reused from the step cache.
    Hit,
    /// Built.
    Miss,
    /// Built: the component opts out of the cache.
    Disabled,
    /// Built: the build ran with `--no-cache`.
    Bypassed,
    /// Not run (the build failed before it).
    NotRun,
    /// No layer: the component has no build or validate phase (tests only).
    NoLayer,
    /// Built inside the builder VM, whose disk is one filesystem: no layer, no step cache.
    InVm,
}

impl CacheUse {
    /// The record's word for it (`hit`, `not-run`, `in-vm`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Disabled => "disabled",
            CacheUse::Bypassed => "bypassed",
            CacheUse::NotRun => "not-run",
            CacheUse::NoLayer => "no-layer",
            CacheUse::InVm => "in-vm",
        }
    }
}

/// One step of a component, with its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTiming {
    /// `phase/step`.
    pub step: String,
    /// Action module.
    pub action: String,
    /// Step status.
    pub status: StepStatus,
    /// Milliseconds.
    pub duration_ms: u64,
}

/// What happened to one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRecord {
    /// Document `name` (or its file name).
    pub name: String,
    /// Where it came from.
    pub source: String,
    /// SHA-256 of its document.
    pub document_sha256: String,
    /// Parameters given.
    pub parameters: Vec<(String, String)>,
    /// The stored component it is (its exact ARN), when the recipe named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Step cache key.
    pub cache_key: String,
    /// Cache outcome.
    pub cache: CacheUse,
    /// Its layer (none for components without build or validate phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// Compressed layer size.
    #[serde(default)]
    pub layer_size: u64,
    /// Wall time of its build and validate phases (0 when cached).
    pub duration_ms: u64,
    /// Its steps (build and validate phases).
    #[serde(default)]
    pub steps: Vec<StepTiming>,
}

/// How the test stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    /// Every test passed.
    Passed,
    /// A test failed.
    Failed,
    /// Tests are disabled (`imageTestsEnabled: false`).
    Skipped,
    /// This exact image passed its tests before; they were not run again.
    Cached,
}

impl TestStatus {
    /// The record's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
            TestStatus::Cached => "cached",
        }
    }
}

impl std::fmt::Display for TestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The test stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRecord {
    /// How it ended.
    pub status: TestStatus,
    /// Wall time.
    pub duration_ms: u64,
    /// Its steps.
    #[serde(default)]
    pub steps: Vec<StepTiming>,
    /// The build whose test result was reused, for `cached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Where the tests ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<BuilderKind>,
    /// For a VM: milliseconds from starting QEMU to the guest agent answering (firmware,
    /// bootloader, kernel, init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// For a VM: the accelerator it ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accel>,
    /// For a VM: where the boot went, phase by phase (records before kiln 0.2 have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_breakdown: Option<BootBreakdown>,
}

/// One phase of a VM's boot, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPhase {
    /// QEMU's start to the guest kernel's clock: firmware, the bootloader reading the kernel
    /// and initramfs, the kernel unpacking itself.
    Firmware,
    /// The kernel's own start-up, to the initramfs's `/init` (or to init without one).
    Kernel,
    /// The initramfs: to the real root's init.
    Initrd,
    /// The image's init, to the QEMU guest agent's service being started.
    Userspace,
    /// The guest agent's start to its first answer to kiln.
    Agent,
}

impl BootPhase {
    /// What `kiln image get` calls it.
    pub fn label(self) -> &'static str {
        match self {
            BootPhase::Firmware => "firmware + bootloader",
            BootPhase::Kernel => "kernel",
            BootPhase::Initrd => "initramfs",
            BootPhase::Userspace => "init to guest agent",
            BootPhase::Agent => "guest agent answer",
        }
    }
}

/// Where a VM's boot went, from starting QEMU to the guest agent's first answer (the
/// record's `bootMs`). The phases add up to it when all are known; a phase that could not be
/// measured (a guest without systemd says less about itself) is left out rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootBreakdown {
    /// [`BootPhase::Firmware`], in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_ms: Option<u64>,
    /// [`BootPhase::Kernel`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ms: Option<u64>,
    /// [`BootPhase::Initrd`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_ms: Option<u64>,
    /// [`BootPhase::Userspace`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userspace_ms: Option<u64>,
    /// [`BootPhase::Agent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ms: Option<u64>,
    /// systemd's "startup finished" (every unit started), from the kernel's start: often after
    /// the guest agent answered, while the tests already run. None when the boot had not
    /// finished by the end of the tests, or without systemd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// After the boot: kiln bringing its own agent in (copied through the guest agent and
    /// started), before the first test could run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiln_agent_ms: Option<u64>,
}

impl BootBreakdown {
    /// The measured phases, in boot order.
    pub fn phases(&self) -> Vec<(BootPhase, u64)> {
        [
            (BootPhase::Firmware, self.firmware_ms),
            (BootPhase::Kernel, self.kernel_ms),
            (BootPhase::Initrd, self.initrd_ms),
            (BootPhase::Userspace, self.userspace_ms),
            (BootPhase::Agent, self.agent_ms),
        ]
        .into_iter()
        .filter_map(|(p, ms)| ms.map(|ms| (p, ms)))
        .collect()
    }
}

/// The disk image of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskRecord {
    /// The kernel it boots (`vmlinuz-...` in /boot).
    pub kernel: String,
    /// Its virtual size in bytes.
    pub size: u64,
    /// The root filesystem's UUID.
    pub filesystem_uuid: String,
    /// Where the disk's QEMU guest agent came from (none until the build knows).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::disk::guest_agent_or_empty"
    )]
    pub guest_agent: Option<GuestAgent>,
    /// Milliseconds spent assembling the disk (0 when it came from the disk cache).
    pub assemble_ms: u64,
    /// `sha256:` of the raw disk: the same layers and settings give the same digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The disk came from the disk cache (nothing that makes it had changed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// One package of the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub architecture: String,
}

/// The parent image a build started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRecord {
    /// As the recipe named it.
    pub reference: String,
    /// What it resolved to (a tag, a build version, a digest).
    pub resolved: String,
    /// Its layers, bottom first.
    pub layers: Vec<String>,
    /// Whether it came from kiln's cache.
    pub cached: bool,
    /// The manifest digest its tag named when the build resolved it (the registry's for a
    /// `docker://` parent, the layout's for `oci:DIR:TAG`): what a later check of the tag
    /// compares with, since `resolved` is the pulled copy's digest, which differs for Docker
    /// schema 2 images and indexes. None for parents that name no tag, and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ParentRecord {
    /// The OCI chain ID of its layers: one digest for the parent's whole content, whatever
    /// kind of parent it was (a bootstrap has no manifest to name it by).
    pub fn chain_id(&self) -> Option<String> {
        let mut layers = self.layers.iter();
        let mut chain = layers.next()?.clone();
        for diff_id in layers {
            chain = format!(
                "sha256:{}",
                crate::store::sha256_hex(format!("{chain} {diff_id}").as_bytes())
            );
        }
        Some(chain)
    }
}

/// The record of one build of an image version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// `arn:kiln:imagebuilder:local:000000000000:image/NAME/X.Y.Z/N`.
    pub arn: String,
    /// Image name.
    pub name: String,
    /// Semantic version.
    pub version: Version,
    /// Build number of that version.
    pub build: u32,
    /// Current state.
    pub state: State,
    /// Every state it went through.
    pub history: Vec<StateChange>,
    /// The recipe file.
    pub recipe: PathBuf,
    /// SHA-256 of the recipe text.
    pub recipe_sha256: String,
    /// The parent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRecord>,
    /// Components in recipe order.
    pub components: Vec<ComponentRecord>,
    /// The test stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestRecord>,
    /// The disk image, when the recipe asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskRecord>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureInfo>,
    /// Regions it was written to.
    pub outputs: Vec<OutputRecord>,
    /// Layers of the image, bottom first (diff ids).
    pub layers: Vec<String>,
    /// Packages in the image.
    pub packages: Vec<Package>,
    /// When the build started.
    pub created: DateTime<Utc>,
    /// Wall time of the whole build.
    pub duration_ms: u64,
    /// The folder of its logs.
    pub logs: PathBuf,
    /// Scratch folder of the kiln process running it (locked while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// The host whose kiln process runs it ([`this_host`]): on a store that several hosts
    /// share (PostgreSQL), only that host can tell from its run folder whether it still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The attempt of its queued job that wrote `host` and `run_dir` (1 for the first): the
    /// reaper trusts the run folder only for the attempt that holds the job now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Who started it (the user name).
    #[serde(default)]
    pub owner: String,
    /// The account it belongs to (part of its ARN); records of kiln 0.1 are the local one's.
    #[serde(default = "local_account")]
    pub account: String,
    /// The pipeline that made it (none for `kiln build FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The image recipe or container recipe it was made from, when it is a stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_arn: Option<String>,
    /// The infrastructure and distribution configurations (pipelines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configurations: Vec<String>,
    /// Where distribution is writing, saved before it writes: what to take back when the
    /// build dies half-way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distributing: Vec<PlannedOutput>,
    /// Tags (Image Builder's `tags`: given at CreateImage, changed by TagResource).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// What the build used: instances and regions (`kiln usage` sums it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::Usage>,
    /// Who or what started it: a person, or the pipeline's schedule.
    #[serde(default)]
    pub build_type: BuildType,
    /// Why the build ran, when whoever started it said (a pipeline's scheduler: which of its
    /// rebuild conditions held); empty for builds started without reasons, and older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::updates::Trigger>,
    /// The network its builder and test instances had: `host` only when the recipe or the
    /// infrastructure configuration opted in (records of kiln before confinement have none:
    /// they had the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<kiln_instance::sandbox::Network>,
    /// The builder the components ran on, and why (trust: who owns them); none in older
    /// records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<crate::trust::BuilderChoice>,
    /// The image scan: its findings, or why the image was not scanned; none in older records
    /// and in builds that ended before the scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<crate::scan::ScanRecord>,
    /// Outputs placed for other accounts (`targetAccountIds`): those accounts own them
    /// (docs/registry-auth.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub account_copies: Vec<crate::registry_auth::targets::AccountCopy>,
    /// Its SBOMs and provenance, where they are kept, and the signatures and referrers
    /// registry regions got; none before distribution, and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supply_chain: Option<crate::attest::SupplyChainRecord>,
}

/// What started a build (Image Builder's `buildType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildType {
    /// Someone asked: `kiln build`, `kiln pipeline start`, StartImagePipelineExecution,
    /// CreateImage.
    #[default]
    UserInitiated,
    /// The pipeline's schedule.
    Scheduled,
}

impl BuildType {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildType::UserInitiated => "USER_INITIATED",
            BuildType::Scheduled => "SCHEDULED",
        }
    }
}

impl fmt::Display for BuildType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl ImageRecord {
    /// `name/x.y.z/n`.
    pub fn build_version(&self) -> String {
        format!("{}/{}/{}", self.name, self.version, self.build)
    }

    /// Moves to a new state, remembering when.
    pub fn set_state(&mut self, state: State, reason: Option<String>) {
        self.state = state;
        self.history.push(StateChange {
            state,
            at: Utc::now(),
            reason,
            execution: None,
        });
    }

    /// When a lifecycle policy deprecated it (Image Builder's `deprecationTime`).
    pub fn deprecation_time(&self) -> Option<DateTime<Utc>> {
        self.history
            .iter()
            .rev()
            .find(|h| h.state == State::Deprecated)
            .map(|h| h.at)
    }

    /// The last lifecycle execution that acted on it (Image Builder's `lifecycleExecutionId`).
    pub fn lifecycle_execution(&self) -> Option<&str> {
        self.history
            .iter()
            .rev()
            .find_map(|h| h.execution.as_deref())
    }

    /// Which build this is, as distribution names builds.
    pub fn build_id(&self) -> kiln_dist::BuildId {
        kiln_dist::BuildId {
            name: self.name.clone(),
            version: self.version.to_string(),
            build: self.build,
        }
    }

    /// Component layers reused from the cache.
    pub fn cache_hits(&self) -> usize {
        self.components
            .iter()
            .filter(|c| c.cache == CacheUse::Hit)
            .count()
    }
}

/// An image ARN in an account.
pub fn image_arn(account: &str, name: &str, version: &Version, build: u32) -> String {
    format!(
        "arn:kiln:imagebuilder:{LOCAL_REGION}:{account}:image/{}/{version}/{build}",
        name.to_ascii_lowercase()
    )
}

fn local_account() -> String {
    LOCAL_ACCOUNT.to_string()
}

/// A reference to one or more builds: `NAME`, `NAME/VERSION[/N]` (VERSION may use `x`), or an
/// image ARN, which also names its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageQuery {
    /// The account an ARN named (`None`: any account, or the caller's, as the caller decides).
    pub account: Option<String>,
    /// Image name.
    pub name: String,
    /// Version filter.
    pub version: Option<VersionFilter>,
    /// Build number.
    pub build: Option<u32>,
}

impl std::str::FromStr for ImageQuery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (account, s) = match s
            .strip_prefix(&format!("arn:kiln:imagebuilder:{LOCAL_REGION}:"))
            .and_then(|rest| rest.split_once(":image/"))
        {
            Some((account, rest)) => (Some(account.to_string()), rest),
            None => (None, s),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("`{s}`: name images as NAME, NAME/VERSION or NAME/VERSION/BUILD");
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(ImageQuery {
                account,
                name: name.to_string(),
                version: None,
                build: None,
            }),
            [name, v] => Ok(ImageQuery {
                account,
                name: name.to_string(),
                version: Some(
                    v.parse()
                        .map_err(|e: crate::version::VersionError| e.to_string())?,
                ),
                build: None,
            }),
            [name, v, n] => Ok(ImageQuery {
                account,
                name: name.to_string(),
                version: Some(
                    v.parse()
                        .map_err(|e: crate::version::VersionError| e.to_string())?,
                ),
                build: Some(n.parse().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        }
    }
}

/// Build records, kept in the state store; logs stay in files beside them.
#[derive(Debug, Clone)]
pub struct Records {
    store: Store,
    /// A worker's lease on the build it runs: its saves go through it (and are refused once it
    /// is gone), and the final one ends the job.
    lease: Option<kiln_store::Lease>,
    /// Set once the store refused a save under the lease: the build is not this worker's.
    lease_lost: Arc<LeaseLost>,
}

/// How long a leased save is tried again while the store is unreachable: well within the
/// 60 s lease its heartbeat renewed at most 10 s before.
const LEASED_SAVE_RETRY: std::time::Duration = std::time::Duration::from_secs(40);

/// Whether a leased save was refused, and a way to wait for it.
#[derive(Debug, Default)]
struct LeaseLost {
    lost: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// The short form of a record that lists show (the store keeps it beside the full record, so
/// a list of thousands of images never reads them all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    /// Image ARN.
    pub arn: String,
    /// Image name.
    pub name: String,
    /// Semantic version.
    pub version: Version,
    /// Build number.
    pub build: u32,
    /// Current state.
    pub state: State,
    /// When the build started.
    pub created: DateTime<Utc>,
    /// Wall time.
    pub duration_ms: u64,
    /// Component layers reused from the step cache.
    pub cache_hits: usize,
    /// Components that have a layer.
    pub layers: usize,
    /// Who started it.
    #[serde(default)]
    pub owner: String,
    /// The pipeline that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// What started it.
    #[serde(default)]
    pub build_type: BuildType,
}

impl ImageSummary {
    /// `name/x.y.z/n`.
    pub fn build_version(&self) -> String {
        format!("{}/{}/{}", self.name, self.version, self.build)
    }
}

impl ImageRecord {
    /// Its summary.
    pub fn summary(&self) -> ImageSummary {
        ImageSummary {
            arn: self.arn.clone(),
            name: self.name.clone(),
            version: self.version,
            build: self.build,
            state: self.state,
            created: self.created,
            duration_ms: self.duration_ms,
            cache_hits: self.cache_hits(),
            layers: self.components.iter().filter(|c| c.layer.is_some()).count(),
            owner: self.owner.clone(),
            pipeline: self.pipeline.clone(),
            build_type: self.build_type,
        }
    }
}

/// The store row of a record.
pub fn row_of(r: &ImageRecord) -> Result<Row, StoreError> {
    let mut row = columns_of(r);
    row.summary = to_json(&r.summary())?;
    row.body = to_json(r)?;
    Ok(row)
}

/// A record's row without its summary and body (which [`Records::create`] writes once the
/// build number is known).
fn columns_of(r: &ImageRecord) -> Row {
    let mut row = crate::state::row(Kind::Image, r.arn.clone(), r.name.clone());
    row.version = Some(crate::state::nodes(&r.version));
    row.build = Some(r.build);
    row.owner = r.owner.clone();
    row.state = Some(r.state.as_str().to_string());
    row.pipeline = r.pipeline.clone();
    row.digest = r.recipe_sha256.clone();
    row.created_ms = crate::state::millis(r.created);
    row
}

/// The store's filter for a query (within its account when it names one).
pub fn filter_of(q: &ImageQuery) -> Filter {
    Filter {
        kind: Some(Kind::Image),
        name: Some(q.name.clone()),
        version: q.version.map(|f| f.nodes()).unwrap_or([None; 3]),
        build: q.build,
        arn_prefix: q
            .account
            .as_ref()
            .map(|a| format!("arn:kiln:imagebuilder:{LOCAL_REGION}:{a}:")),
        ..Filter::default()
    }
}

impl Records {
    /// The records of a store.
    pub fn new(store: Store) -> Self {
        Records {
            store,
            lease: None,
            lease_lost: Arc::default(),
        }
    }

    /// The records of a store as the worker holding `lease` writes them: every save is
    /// conditional on the lease, and saving a final state finishes the job.
    pub fn leased(store: Store, lease: kiln_store::Lease) -> Self {
        Records {
            store,
            lease: Some(lease),
            lease_lost: Arc::default(),
        }
    }

    /// Whether the store refused a save because the lease is gone.
    pub fn lease_lost(&self) -> bool {
        self.lease_lost
            .lost
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the store refused a save because the lease is gone.
    pub async fn lease_refused(&self) {
        loop {
            let notified = self.lease_lost.notify.notified();
            if self.lease_lost() {
                return;
            }
            notified.await;
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn home(&self) -> &Home {
        self.store.home()
    }

    /// The folder of one build's files (its logs): `images/NAME/VERSION/BUILD` for the local
    /// account, `images/ACCOUNT/NAME/VERSION/BUILD` for the others (build numbers are per
    /// account).
    pub fn build_dir(&self, account: &str, name: &str, version: &Version, build: u32) -> PathBuf {
        let base = if account == LOCAL_ACCOUNT {
            self.home().images()
        } else {
            self.home().images().join(account)
        };
        base.join(name)
            .join(version.to_string())
            .join(build.to_string())
    }

    /// Where a build's logs go.
    pub fn logs_dir(&self, account: &str, name: &str, version: &Version, build: u32) -> PathBuf {
        self.build_dir(account, name, version, build).join("logs")
    }

    /// Stores a new record under the next build number of its version (two kiln processes
    /// never get the same one), filling in its number, ARN and logs folder.
    pub async fn create(&self, rec: &mut ImageRecord) -> Result<(), StoreError> {
        // The store numbers builds per account, which it reads from the row's ARN.
        rec.arn = image_arn(&rec.account, &rec.name, &rec.version, 0);
        let template = rec.clone();
        let make = |build: u32| {
            let mut r = template.clone();
            self.number(&mut r, build);
            let encoding = |e: serde_json::Error| kiln_store::StoreError::Database {
                path: crate::state::db_path(self.store.home()),
                detail: format!("encoding the record of {}: {e}", r.arn),
            };
            let summary = serde_json::to_string(&r.summary()).map_err(encoding)?;
            let body = serde_json::to_string(&r).map_err(encoding)?;
            Ok((r.arn.clone(), summary, body))
        };
        let stored = self
            .store
            .db()
            .create_build(columns_of(rec), Vec::new(), &make)
            .await?;
        let build = stored.build.unwrap_or(1);
        self.number(rec, build);
        Ok(())
    }

    fn number(&self, r: &mut ImageRecord, build: u32) {
        r.build = build;
        r.arn = image_arn(&r.account, &r.name, &r.version, build);
        r.logs = self.logs_dir(&r.account, &r.name, &r.version, build);
    }

    /// Saves a record's new state.
    pub async fn save(&self, record: &ImageRecord) -> Result<(), StoreError> {
        self.save_with(record, Vec::new()).await
    }

    /// Saves a record's new state with the notifications it makes, in one transaction: a
    /// message is stored exactly when the state it tells of is.
    pub async fn save_with(
        &self,
        record: &ImageRecord,
        outbox: Vec<kiln_store::Message>,
    ) -> Result<(), StoreError> {
        let update = Update {
            state: Some(record.state.as_str().to_string()),
            summary: Some(to_json(&record.summary())?),
            body: Some(to_json(record)?),
            outbox,
            ..Update::default()
        };
        match &self.lease {
            // Only the leased job's own record goes through the lease; a worker reads others.
            Some(lease) if lease.job == record.arn => {
                let saved = self.save_leased(lease, record, update).await;
                if let Err(kiln_store::StoreError::LeaseLost { .. }) = &saved {
                    self.lease_lost
                        .lost
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.lease_lost.notify.notify_waiters();
                }
                saved?;
            }
            _ => {
                self.store.db().update(&record.arn, update).await?;
            }
        }
        Ok(())
    }

    /// A leased save, tried again while the store is unreachable (a database restarting) for
    /// as long as the lease surely holds: giving up would leave the build to run again. A
    /// final save whose first try was committed before its connection broke is seen by the
    /// job being finished.
    async fn save_leased(
        &self,
        lease: &kiln_store::Lease,
        record: &ImageRecord,
        update: Update,
    ) -> Result<(), kiln_store::StoreError> {
        use kiln_store::StoreError as E;
        let jobs = self.store.jobs();
        let started = std::time::Instant::now();
        let mut retried = false;
        loop {
            let saved = if record.state.is_final() {
                jobs.finish_job(lease, &record.arn, update.clone()).await
            } else {
                jobs.update_leased(lease, &record.arn, update.clone()).await
            };
            match saved {
                Ok(_) => return Ok(()),
                Err(E::LeaseLost { .. }) if retried && record.state.is_final() => {
                    let finished = jobs
                        .job(&lease.job)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|j| j.state == kiln_store::JobState::Finished);
                    if finished {
                        return Ok(());
                    }
                    return saved.map(|_| ());
                }
                Err(
                    E::Unreachable { .. } | E::Server { .. } | E::Busy { .. } | E::Remote { .. },
                ) if started.elapsed() < LEASED_SAVE_RETRY => {
                    retried = true;
                    tracing::warn!(image = %record.arn, "the store is unreachable; saving the record again");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A stored record.
    fn parse(&self, row: &Row) -> Result<ImageRecord, StoreError> {
        self.store
            .decode(&row.body, &format!("the record of {}", row.arn))
    }

    /// One record by ARN.
    pub async fn get(&self, arn: &str) -> Result<Option<ImageRecord>, StoreError> {
        match self.store.db().get(arn).await? {
            None => Ok(None),
            Some(row) => self.parse(&row).map(Some),
        }
    }

    /// Summaries matching a filter (kind is set to images).
    pub async fn summaries(&self, filter: &Filter) -> Result<Vec<ImageSummary>, StoreError> {
        let mut f = filter.clone();
        f.kind = Some(Kind::Image);
        let rows = self.store.db().list(&f).await?;
        rows.iter()
            .map(|row| {
                self.store
                    .decode(&row.summary, &format!("the summary of {}", row.arn))
            })
            .collect()
    }

    /// The newest build a query names, in one of `states` (any state when empty).
    pub async fn newest(
        &self,
        q: &ImageQuery,
        states: &[State],
    ) -> Result<Option<ImageRecord>, StoreError> {
        let mut f = filter_of(q);
        f.states = states.iter().map(|s| s.as_str().to_string()).collect();
        f.limit = Some(1);
        match self.store.db().list(&f).await?.first() {
            None => Ok(None),
            Some(row) => self.get(&row.arn).await,
        }
    }

    /// The newest build a query names that a build may take as its parent: AVAILABLE, or
    /// DEPRECATED (Image Builder's pipelines still run from deprecated images).
    pub async fn newest_available(
        &self,
        q: &ImageQuery,
    ) -> Result<Option<ImageRecord>, StoreError> {
        self.newest(q, &[State::Available, State::Deprecated]).await
    }

    /// The newest build of `rec`'s version other than `rec` whose artifacts are still in its
    /// regions: where the version's names go back to when `rec`'s distribution is taken back
    /// or `rec` is deleted.
    pub async fn previous_available(&self, rec: &ImageRecord) -> Option<u32> {
        let q = ImageQuery {
            account: Some(rec.account.clone()),
            name: rec.name.clone(),
            version: rec.version.to_string().parse::<VersionFilter>().ok(),
            build: None,
        };
        let mut f = filter_of(&q);
        f.states = [State::Available, State::Deprecated, State::Disabled]
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        // A version's names may point back at any build whose artifacts are still there.
        let rows = self.store.db().list(&f).await.ok()?;
        rows.into_iter()
            .find(|r| r.arn != rec.arn)
            .and_then(|r| r.build)
    }

    /// Marks builds whose process died (as `liveness` tells) as FAILED with reason
    /// "interrupted", and takes back what they had begun to distribute. Returns their build
    /// versions.
    pub async fn recover_interrupted(
        &self,
        liveness: &dyn Liveness,
        registries: &kiln_dist::RegistryAccess,
    ) -> Result<Vec<String>, StoreError> {
        self.recover_interrupted_telling(liveness, registries, None)
            .await
    }

    /// Takes back what a build that stopped while distributing had written to its regions
    /// (`distributing`; the previous build's tags come back) and clears its outputs. Returns
    /// what to add to the reason: `; took back A, B`, or nothing.
    pub async fn take_back_distributed(
        &self,
        r: &mut ImageRecord,
        registries: &kiln_dist::RegistryAccess,
    ) -> String {
        let previous = self.previous_available(r).await;
        let undone =
            kiln_dist::take_back(&r.distributing, &r.build_id(), previous, registries).await;
        r.outputs.clear();
        if undone.is_empty() {
            String::new()
        } else {
            format!("; took back {}", undone.join(", "))
        }
    }

    /// [`Records::recover_interrupted`], writing each failed build's notifications (its
    /// topic's `image.failed`) with its new state, as a build that fails by itself does.
    pub async fn recover_interrupted_telling(
        &self,
        liveness: &dyn Liveness,
        registries: &kiln_dist::RegistryAccess,
        notices: Option<&dyn crate::notify::Notices>,
    ) -> Result<Vec<String>, StoreError> {
        // By state alone (only images have these states): the state index answers it.
        let running = Filter {
            states: State::RUNNING
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            ..Filter::default()
        };
        let mut fixed = Vec::new();
        for row in self.store.db().list(&running).await? {
            let Some(r) = self.get(&row.arn).await? else {
                continue;
            };
            if r.state.is_final() || liveness.alive(&r) {
                continue;
            }
            // A queued build is the queue's: its lease says whether its worker is alive, and
            // the reaper (`build::queued::reap`) ends it when every attempt's worker vanished.
            if self.store.jobs().job(&r.arn).await?.is_some() {
                continue;
            }
            // A build writes its final record before it releases its run folder, so a fresh
            // read now tells a finished build from a dead one.
            let Some(mut r) = self.get(&row.arn).await? else {
                continue;
            };
            if r.state.is_final() {
                continue;
            }
            let stage = r.state;
            let mut reason =
                "interrupted: the kiln process running this build stopped before it finished"
                    .to_string();
            if stage == State::Distributing {
                reason.push_str(&self.take_back_distributed(&mut r, registries).await);
            }
            r.set_state(State::Failed, Some(reason.clone()));
            r.failure = Some(FailureInfo::of_stage(stage, reason));
            let outbox = crate::notify::final_outbox(notices, &r).await;
            self.save_with(&r, outbox).await?;
            fixed.push(r.build_version());
        }
        Ok(fixed)
    }
}

/// Tells whether the process running a build still lives, so that the build of a process that
/// died can be marked FAILED.
pub trait Liveness: Send + Sync {
    /// True while whoever runs `rec` lives.
    fn alive(&self, rec: &ImageRecord) -> bool;
}

/// Builds run by kiln processes on this machine: alive while their run folder's lock is held.
pub struct LocalRuns;

impl Liveness for LocalRuns {
    fn alive(&self, rec: &ImageRecord) -> bool {
        // Another host's build is not this host's to judge: its run folder is over there.
        if rec.host.as_deref().is_some_and(|h| h != this_host()) {
            return true;
        }
        rec.run_dir
            .as_deref()
            .is_some_and(kiln_instance::runlock::is_held)
    }
}

/// This host, as records name it: its systemd machine id, else its host name.
pub fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(host_name)
    })
}

/// This host's name, as the kernel knows it (empty when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Reads a record file directly (tests, tools).
pub fn read_record(path: &Path) -> Result<Option<ImageRecord>, StoreError> {
    read_json(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn cache_words_are_the_records() {
        for c in [
            CacheUse::Hit,
            CacheUse::Miss,
            CacheUse::Disabled,
            CacheUse::Bypassed,
            CacheUse::NotRun,
            CacheUse::NoLayer,
            CacheUse::InVm,
        ] {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::String(c.as_str().into())
            );
        }
    }

    /// A build whose run folder is gone is dead when this host ran it, and not this host's to
    /// judge when another host did (a shared store).
    #[test]
    fn only_this_host_s_builds_are_judged_by_their_run_folders() {
        let mut r = record("x", "1.0.0", State::Building);
        r.run_dir = Some(PathBuf::from("/nonexistent/run/x"));
        assert!(
            !LocalRuns.alive(&r),
            "an old record without a host is this host's"
        );
        r.host = Some(this_host().to_owned());
        assert!(!LocalRuns.alive(&r));
        r.host = Some("another-host".to_owned());
        assert!(LocalRuns.alive(&r));
        assert!(!this_host().is_empty());
    }

    /// A record with nothing in it yet (tests of other modules use it too).
    pub(crate) fn record(name: &str, version: &str, state: State) -> ImageRecord {
        let version: Version = version.parse().unwrap();
        ImageRecord {
            arn: String::new(),
            name: name.into(),
            version,
            build: 0,
            state,
            history: vec![],
            recipe: "r.yml".into(),
            recipe_sha256: String::new(),
            parent: None,
            components: vec![],
            tests: None,
            disk: None,
            failure: None,
            outputs: vec![],
            layers: vec![],
            packages: vec![],
            created: Utc::now(),
            duration_ms: 0,
            logs: PathBuf::new(),
            run_dir: None,
            host: None,
            owner: "tester".into(),
            account: LOCAL_ACCOUNT.into(),
            pipeline: None,
            recipe_arn: None,
            configurations: vec![],
            distributing: vec![],
            tags: Default::default(),
            usage: None,
            build_type: BuildType::UserInitiated,
            triggers: vec![],
            network: None,
            builder: None,
            scan: None,
            account_copies: Vec::new(),
            supply_chain: None,
            attempt: None,
        }
    }

    async fn records(dir: &Path) -> Records {
        Records::new(Store::open(&Home::new(dir)).await.unwrap())
    }

    async fn add(recs: &Records, mut r: ImageRecord) -> ImageRecord {
        recs.create(&mut r).await.unwrap();
        r
    }

    #[tokio::test]
    async fn a_query_with_an_account_finds_that_accounts_builds_only() {
        let d = tempfile::tempdir().unwrap();
        let recs = records(d.path()).await;
        let mine = add(&recs, record("web", "1.0.0", State::Available)).await;
        let mut other = record("web", "1.0.0", State::Available);
        other.account = "111111111111".into();
        let theirs = add(&recs, other).await;
        assert_eq!(
            (mine.build, theirs.build),
            (1, 1),
            "builds are numbered per account"
        );
        let q: ImageQuery = "arn:kiln:imagebuilder:local:111111111111:image/web/1.x.x"
            .parse()
            .unwrap();
        assert_eq!(q.account.as_deref(), Some("111111111111"));
        let found = recs.newest_available(&q).await.unwrap().unwrap();
        assert_eq!(found.arn, theirs.arn);
        let q = ImageQuery {
            account: Some(LOCAL_ACCOUNT.into()),
            ..q
        };
        assert_eq!(
            recs.newest_available(&q).await.unwrap().unwrap().arn,
            mine.arn
        );
        // A plain name names no account: the caller says whose.
        let q: ImageQuery = "web/1.0.0".parse().unwrap();
        assert_eq!(q.account, None);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_named_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let recs = records(d.path()).await;
        let a = add(&recs, record("web", "1.0.0", State::Available)).await;
        let garbled = r#"{"name": 7}"#;
        recs.store()
            .db()
            .update(
                &a.arn,
                Update {
                    body: Some(garbled.into()),
                    ..Update::default()
                },
            )
            .await
            .unwrap();
        let e = recs.get(&a.arn).await.unwrap_err().to_string();
        let db = crate::state::db_path(&Home::new(d.path()));
        assert!(
            e.contains(&format!("the record of {} in {}", a.arn, db.display()))
                && e.contains("kiln changed nothing")
                && !e.contains("remove it"),
            "{e}"
        );
        let row = recs.store().db().get(&a.arn).await.unwrap().unwrap();
        assert_eq!(row.body, garbled);
    }

    #[tokio::test]
    async fn build_numbers_and_queries() {
        let d = tempfile::tempdir().unwrap();
        let recs = records(d.path()).await;
        let a = add(&recs, record("web", "1.0.0", State::Available)).await;
        let b = add(&recs, record("web", "1.0.0", State::Failed)).await;
        add(&recs, record("web", "1.2.0", State::Available)).await;
        add(&recs, record("db", "1.0.0", State::Available)).await;
        assert_eq!((a.build, b.build), (1, 2));
        assert_eq!(
            a.arn,
            "arn:kiln:imagebuilder:local:000000000000:image/web/1.0.0/1"
        );
        assert!(a.logs.ends_with("images/web/1.0.0/1/logs"));
        let q: ImageQuery = "web/1.x.x".parse().unwrap();
        let found = recs.summaries(&filter_of(&q)).await.unwrap();
        assert_eq!(
            found.iter().map(|r| r.build_version()).collect::<Vec<_>>(),
            vec!["web/1.2.0/1", "web/1.0.0/2", "web/1.0.0/1"]
        );
        let q: ImageQuery = "web/1.0.x".parse().unwrap();
        assert_eq!(
            recs.newest_available(&q)
                .await
                .unwrap()
                .unwrap()
                .build_version(),
            "web/1.0.0/1"
        );
        assert_eq!(
            recs.newest(&q, &[]).await.unwrap().unwrap().build_version(),
            "web/1.0.0/2"
        );
        let q: ImageQuery = "arn:kiln:imagebuilder:local:000000000000:image/web/1.0.0/2"
            .parse()
            .unwrap();
        assert_eq!(q.build, Some(2));
        assert!("web/1.x.2".parse::<ImageQuery>().is_err());
        // Saving changes the state the store filters on.
        let mut b = b;
        b.set_state(State::Available, None);
        recs.save(&b).await.unwrap();
        let q: ImageQuery = "web/1.0.0".parse().unwrap();
        assert_eq!(recs.newest_available(&q).await.unwrap().unwrap().build, 2);
    }

    #[tokio::test]
    async fn interrupted_builds_are_failed() {
        let d = tempfile::tempdir().unwrap();
        let recs = records(d.path()).await;
        let held_dir = d.path().join("run/held");
        let lock = kiln_instance::runlock::RunLock::acquire(&held_dir).unwrap();
        let mut running = record("a", "1.0.0", State::Building);
        running.run_dir = Some(held_dir.clone());
        let mut dead = record("b", "1.0.0", State::Testing);
        dead.run_dir = Some(d.path().join("run/gone"));
        add(&recs, running).await;
        let dead = add(&recs, dead).await;
        add(&recs, record("c", "1.0.0", State::Available)).await;
        assert_eq!(
            recs.recover_interrupted(&LocalRuns, &Default::default())
                .await
                .unwrap(),
            vec!["b/1.0.0/1".to_string()]
        );
        let b = recs.get(&dead.arn).await.unwrap().unwrap();
        assert_eq!(b.state, State::Failed);
        assert_eq!(b.failure.unwrap().stage, State::Testing);
        drop(lock);
        assert_eq!(
            recs.recover_interrupted(&LocalRuns, &Default::default())
                .await
                .unwrap(),
            vec!["a/1.0.0/1".to_string()]
        );
    }

    /// Tells a topic of every final record it is shown.
    struct TellAll;

    #[async_trait::async_trait]
    impl crate::notify::Notices for TellAll {
        async fn of_final(&self, r: &ImageRecord, now_ms: i64) -> Vec<kiln_store::Message> {
            let event = crate::notify::image_event(r.state).unwrap();
            vec![crate::notify::message(
                "topic/t",
                event,
                &r.arn,
                &serde_json::json!({"arn": r.arn}),
                now_ms,
            )]
        }
    }

    #[tokio::test]
    async fn an_interrupted_build_tells_its_topic_that_it_failed() {
        let d = tempfile::tempdir().unwrap();
        let recs = records(d.path()).await;
        let mut dead = record("b", "1.0.0", State::Building);
        dead.run_dir = Some(d.path().join("run/gone"));
        let dead = add(&recs, dead).await;
        let fixed = recs
            .recover_interrupted_telling(&LocalRuns, &Default::default(), Some(&TellAll))
            .await
            .unwrap();
        assert_eq!(fixed, ["b/1.0.0/1"]);
        let told = recs.store().db().messages("topic/t", 10).await.unwrap();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].message.event, "image.failed");
        assert!(told[0].message.body.contains(&dead.arn));
    }

    #[test]
    fn parent_chain_id() {
        let p = |layers: &[&str]| ParentRecord {
            reference: "r".into(),
            resolved: "r".into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            cached: false,
            digest: None,
        };
        assert_eq!(p(&[]).chain_id(), None);
        assert_eq!(p(&["sha256:aa"]).chain_id().unwrap(), "sha256:aa");
        let two = format!(
            "sha256:{}",
            crate::store::sha256_hex(b"sha256:aa sha256:bb")
        );
        assert_eq!(p(&["sha256:aa", "sha256:bb"]).chain_id().unwrap(), two);
    }

    #[tokio::test]
    async fn json_records_of_older_kilns_are_imported_once() {
        let d = tempfile::tempdir().unwrap();
        let mut old = record("legacy", "2.0.0", State::Available);
        old.build = 3;
        old.arn = image_arn(LOCAL_ACCOUNT, "legacy", &old.version, 3);
        let file = d.path().join("images/legacy/2.0.0/3/image.json");
        crate::store::write_json(&file, &old).unwrap();
        let recs = records(d.path()).await;
        let got = recs.get(&old.arn).await.unwrap().unwrap();
        assert_eq!(got.build, 3);
        assert!(file.exists(), "the JSON file stays");
        // The next build of that version continues the numbering.
        let next = add(&recs, record("legacy", "2.0.0", State::Pending)).await;
        assert_eq!(next.build, 4);
    }
}
