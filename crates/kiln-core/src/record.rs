//! The record of a build: one JSON file per image build version, with its logs beside it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{read_json, write_json, Home, StoreError};
use crate::version::{Version, VersionFilter};

/// The region and account kiln names its resources with.
pub const LOCAL_REGION: &str = "local";
/// The account kiln names its resources with.
pub const LOCAL_ACCOUNT: &str = "000000000000";

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
        }
    }

    /// True once nothing will change any more.
    pub fn is_final(self) -> bool {
        matches!(self, State::Available | State::Failed | State::Cancelled)
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

/// One step of a component, with its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTiming {
    /// `phase/step`.
    pub step: String,
    /// Action module.
    pub action: String,
    /// Step status.
    pub status: String,
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

/// The test stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRecord {
    /// passed, failed, skipped (tests disabled), cached (the same image passed before).
    pub status: String,
    /// Wall time.
    pub duration_ms: u64,
    /// Its steps.
    #[serde(default)]
    pub steps: Vec<StepTiming>,
    /// The build whose test result was reused, for `cached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Where the tests ran: `sandbox` or `vm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// For a VM: milliseconds from starting QEMU to the guest agent answering (firmware,
    /// bootloader, kernel, init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// For a VM: `kvm` or `tcg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
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
    /// The QEMU guest agent: `in the image`, `installed by kiln` or `installed by kiln,
    /// removed after the tests`.
    pub guest_agent: String,
    /// Milliseconds spent assembling the disk.
    pub assemble_ms: u64,
}

/// Where the image went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputRecord {
    /// Region.
    pub region: String,
    /// `oci-layout`, or `disk-FORMAT` (`disk-qcow2`, `disk-raw`, ...).
    pub kind: String,
    /// The layout folder, or the disk file.
    pub location: PathBuf,
    /// Tag in it (for a disk: the version, or `VERSION-BUILD`).
    pub tag: String,
    /// Manifest digest (for a disk: `sha256:` of the file).
    pub manifest_digest: String,
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
        });
    }

    /// Component layers reused from the cache.
    pub fn cache_hits(&self) -> usize {
        self.components
            .iter()
            .filter(|c| c.cache == CacheUse::Hit)
            .count()
    }
}

/// An image ARN.
pub fn image_arn(name: &str, version: &Version, build: u32) -> String {
    format!(
        "arn:kiln:imagebuilder:{LOCAL_REGION}:{LOCAL_ACCOUNT}:image/{}/{version}/{build}",
        name.to_ascii_lowercase()
    )
}

/// A reference to one or more builds: `NAME`, `NAME/VERSION[/N]` (VERSION may use `x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageQuery {
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
        let s = s
            .strip_prefix(&format!(
                "arn:kiln:imagebuilder:{LOCAL_REGION}:{LOCAL_ACCOUNT}:image/"
            ))
            .unwrap_or(s);
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("`{s}`: name images as NAME, NAME/VERSION or NAME/VERSION/BUILD");
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(ImageQuery {
                name: name.to_string(),
                version: None,
                build: None,
            }),
            [name, v] => Ok(ImageQuery {
                name: name.to_string(),
                version: Some(
                    v.parse()
                        .map_err(|e: crate::version::VersionError| e.to_string())?,
                ),
                build: None,
            }),
            [name, v, n] => Ok(ImageQuery {
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

/// Build records in the data directory.
#[derive(Debug, Clone)]
pub struct Records {
    home: Home,
}

impl Records {
    /// The records of a data directory.
    pub fn new(home: Home) -> Self {
        Records { home }
    }

    fn version_dir(&self, name: &str, version: &Version) -> PathBuf {
        self.home.images().join(name).join(version.to_string())
    }

    /// The folder of one build (record and logs).
    pub fn build_dir(&self, name: &str, version: &Version, build: u32) -> PathBuf {
        self.version_dir(name, version).join(build.to_string())
    }

    /// Reserves the next build number of a version: creates its folder atomically, so two
    /// builds never get the same number.
    pub fn allocate(&self, name: &str, version: &Version) -> Result<u32, StoreError> {
        let dir = self.version_dir(name, version);
        std::fs::create_dir_all(&dir).map_err(crate::store::io("creating", &dir))?;
        let mut n = self.builds_of(name, version).into_iter().max().unwrap_or(0) + 1;
        loop {
            let d = dir.join(n.to_string());
            match std::fs::create_dir(&d) {
                Ok(()) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(crate::store::io("creating", &d)(e)),
            }
        }
    }

    fn builds_of(&self, name: &str, version: &Version) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.version_dir(name, version)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Saves a record (atomically).
    pub fn save(&self, record: &ImageRecord) -> Result<(), StoreError> {
        write_json(
            &self
                .build_dir(&record.name, &record.version, record.build)
                .join("image.json"),
            record,
        )
    }

    /// Loads one record.
    pub fn load(
        &self,
        name: &str,
        version: &Version,
        build: u32,
    ) -> Result<Option<ImageRecord>, StoreError> {
        read_json(&self.build_dir(name, version, build).join("image.json"))
    }

    /// Every record, oldest first (records that cannot be read are skipped with a warning).
    pub fn all(&self) -> Vec<ImageRecord> {
        let mut out = Vec::new();
        let Ok(names) = std::fs::read_dir(self.home.images()) else {
            return out;
        };
        for name in names.flatten() {
            let Ok(versions) = std::fs::read_dir(name.path()) else {
                continue;
            };
            for v in versions.flatten() {
                let Ok(builds) = std::fs::read_dir(v.path()) else {
                    continue;
                };
                for b in builds.flatten() {
                    match read_json::<ImageRecord>(&b.path().join("image.json")) {
                        Ok(Some(r)) => out.push(r),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
        }
        out.sort_by_key(|r| r.created);
        out
    }

    /// The records a query names, newest first.
    pub fn find(&self, q: &ImageQuery) -> Vec<ImageRecord> {
        let mut found: Vec<ImageRecord> = self
            .all()
            .into_iter()
            .filter(|r| r.name == q.name)
            .filter(|r| q.version.is_none_or(|f| f.matches(&r.version)))
            .filter(|r| q.build.is_none_or(|n| n == r.build))
            .collect();
        found.sort_by(|a, b| crate::version::cmp_build((b.version, b.build), (a.version, a.build)));
        found
    }

    /// The newest AVAILABLE build a query names (parent images, "the previous image").
    pub fn newest_available(&self, q: &ImageQuery) -> Option<ImageRecord> {
        self.find(q)
            .into_iter()
            .find(|r| r.state == State::Available)
    }

    /// Marks builds whose kiln process died (their run folder is no longer held) as FAILED
    /// with reason "interrupted". Returns their build versions.
    pub fn recover_interrupted(&self) -> Vec<String> {
        let mut fixed = Vec::new();
        for mut r in self.all() {
            if r.state.is_final() {
                continue;
            }
            let alive = r
                .run_dir
                .as_deref()
                .is_some_and(kiln_instance::sandbox::is_held);
            if alive {
                continue;
            }
            // A build writes its final record before it releases its run folder, so a fresh
            // read now tells a finished build from a dead one.
            match self.load(&r.name, &r.version, r.build) {
                Ok(Some(fresh)) if !fresh.state.is_final() => r = fresh,
                _ => continue,
            }
            let stage = r.state;
            let reason =
                "interrupted: the kiln process running this build stopped before it finished"
                    .to_string();
            r.set_state(State::Failed, Some(reason.clone()));
            r.failure = Some(FailureInfo {
                stage,
                component: None,
                step: None,
                reason,
                output_tail: Vec::new(),
                log: None,
                kept_instance: None,
            });
            if self.save(&r).is_ok() {
                fixed.push(r.build_version());
            }
        }
        fixed
    }

    /// Where a build's logs go.
    pub fn logs_dir(&self, name: &str, version: &Version, build: u32) -> PathBuf {
        self.build_dir(name, version, build).join("logs")
    }
}

/// Reads a record file directly (tests, tools).
pub fn read_record(path: &Path) -> Result<Option<ImageRecord>, StoreError> {
    read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str, build: u32, state: State) -> ImageRecord {
        let version: Version = version.parse().unwrap();
        ImageRecord {
            arn: image_arn(name, &version, build),
            name: name.into(),
            version,
            build,
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
        }
    }

    #[test]
    fn build_numbers_and_queries() {
        let d = tempfile::tempdir().unwrap();
        let recs = Records::new(Home::new(d.path()));
        let v: Version = "1.0.0".parse().unwrap();
        assert_eq!(recs.allocate("web", &v).unwrap(), 1);
        assert_eq!(recs.allocate("web", &v).unwrap(), 2);
        recs.save(&record("web", "1.0.0", 1, State::Available))
            .unwrap();
        recs.save(&record("web", "1.0.0", 2, State::Failed))
            .unwrap();
        recs.save(&record("web", "1.2.0", 1, State::Available))
            .unwrap();
        recs.save(&record("db", "1.0.0", 1, State::Available))
            .unwrap();
        let q: ImageQuery = "web/1.x.x".parse().unwrap();
        let found = recs.find(&q);
        assert_eq!(
            found.iter().map(|r| r.build_version()).collect::<Vec<_>>(),
            vec!["web/1.2.0/1", "web/1.0.0/2", "web/1.0.0/1"]
        );
        let q: ImageQuery = "web/1.0.x".parse().unwrap();
        assert_eq!(
            recs.newest_available(&q).unwrap().build_version(),
            "web/1.0.0/1"
        );
        assert_eq!(recs.all().len(), 4);
        assert_eq!(
            image_arn("Web", &v, 3),
            "arn:kiln:imagebuilder:local:000000000000:image/web/1.0.0/3"
        );
        let q: ImageQuery = "arn:kiln:imagebuilder:local:000000000000:image/web/1.0.0/2"
            .parse()
            .unwrap();
        assert_eq!(q.build, Some(2));
        assert!("web/1.x.2".parse::<ImageQuery>().is_err());
    }

    #[test]
    fn interrupted_builds_are_failed() {
        let d = tempfile::tempdir().unwrap();
        let recs = Records::new(Home::new(d.path()));
        let held_dir = d.path().join("run/held");
        let lock = kiln_instance::sandbox::RunLock::acquire(&held_dir).unwrap();
        let mut running = record("a", "1.0.0", 1, State::Building);
        running.run_dir = Some(held_dir.clone());
        let mut dead = record("b", "1.0.0", 1, State::Testing);
        dead.run_dir = Some(d.path().join("run/gone"));
        recs.save(&running).unwrap();
        recs.save(&dead).unwrap();
        recs.save(&record("c", "1.0.0", 1, State::Available))
            .unwrap();
        assert_eq!(recs.recover_interrupted(), vec!["b/1.0.0/1".to_string()]);
        let b = recs
            .load("b", &"1.0.0".parse().unwrap(), 1)
            .unwrap()
            .unwrap();
        assert_eq!(b.state, State::Failed);
        assert_eq!(b.failure.unwrap().stage, State::Testing);
        drop(lock);
        assert_eq!(recs.recover_interrupted(), vec!["a/1.0.0/1".to_string()]);
    }
}
