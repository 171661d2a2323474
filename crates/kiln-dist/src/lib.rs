//! Distribution: putting a built, tested image into its regions so that no region ever shows
//! half of it.
//!
//! A [`Region`] is a name and its [`Target`]s: an OCI image layout folder with a `disks/`
//! folder beside it ([`LayoutTarget`], a local region), or a repository in an OCI registry
//! ([`RegistryTarget`]). [`distribute`] moves one build into every region in phases: every
//! target is *checked* (nothing written), then every target *stages* the build under its own
//! names (`VERSION-BUILD` tags, `NAME-VERSION-BUILD.EXT` disks), and only then does every
//! target *promote* it (the version's names, `VERSION` and `NAME-VERSION.EXT`, move to it).
//! Anything that fails is *taken back* in every target: the build's own names go, and the
//! version's names return to the previous build. What a distribution will write is known up
//! front ([`plan`]), so that a process that died half-way can be undone by the next one
//! ([`take_back`]).
//!
//! A finished build is removed from its regions for good by [`retire`] (lifecycle policies,
//! DeleteImage), which says what it removed and what it could not.
//!
//! [`logs`] ships a build's logs to a folder or an S3 bucket.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_image::disk::DiskFormat;
use kiln_image::{ImageSettings, LayerBlob};
use serde::{Deserialize, Serialize};

pub mod attach;
pub mod chunked;
pub mod disk;
pub mod encrypt;
mod kind;
pub mod layout;
pub mod logs;
pub mod pieces;
pub mod registry;
pub mod remote;
pub mod repo;
pub mod retire;
pub mod s3;

pub use kind::OutputKind;
pub use layout::LayoutTarget;
pub use registry::{RegistryAccess, RegistryPlace};
pub use remote::{Naming, Place, RemoteTarget};
pub use repo::{Moved, Repo, RepoError};
pub use retire::{retire, Retired};
pub use s3::BucketPlace;

/// One build of an image version, by name: what targets name their tags and files after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildId {
    /// The image name.
    pub name: String,
    /// Its semantic version, as text.
    pub version: String,
    /// The build number of that version.
    pub build: u32,
}

impl BuildId {
    /// The tag only this build has: `VERSION-BUILD`.
    pub fn build_tag(&self) -> String {
        format!("{}-{}", self.version, self.build)
    }

    /// The tag the newest build of the version has: `VERSION`.
    pub fn version_tag(&self) -> String {
        self.version.clone()
    }

    /// The file stem only this build has: `NAME-VERSION-BUILD`.
    pub fn build_stem(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.build)
    }

    /// The file stem the newest build of the version has: `NAME-VERSION`.
    pub fn version_stem(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    /// Another build of the same version.
    pub fn with_build(&self, build: u32) -> BuildId {
        BuildId {
            build,
            ..self.clone()
        }
    }
}

/// A container image to distribute: its layers (blobs on disk, bottom first) and config.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layer blobs.
    pub blobs: Vec<LayerBlob>,
    /// Its configuration (entrypoint, env, labels, history, ...).
    pub settings: ImageSettings,
}

/// A bootable disk to distribute: one file per format, each region gets them all.
#[derive(Debug, Clone)]
pub struct DiskImage {
    /// The files, already in their formats.
    pub files: Vec<DiskFile>,
}

/// A disk file in one format, ready to be placed in regions (linked where it can be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFile {
    /// Its format.
    pub format: DiskFormat,
    /// Where it is.
    pub path: PathBuf,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// What one build distributes.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Which build.
    pub build: BuildId,
    /// Its container image, when the recipe makes one.
    pub image: Option<OciImage>,
    /// Its disk, when the recipe makes one.
    pub disk: Option<DiskImage>,
    /// The newest AVAILABLE earlier build of the same version: the version's names go back to
    /// it when this distribution is taken back.
    pub previous: Option<u32>,
    /// A scratch folder targets may use (a registry push reads from a layout written there).
    pub scratch: PathBuf,
    /// What registry and bucket regions receive, prepared once for all of them
    /// ([`pieces`]); empty when every region is a folder.
    pub pieces: Vec<pieces::Piece>,
}

/// One thing a distribution wrote, as an image's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// The region.
    pub region: String,
    /// What it is.
    pub kind: OutputKind,
    /// Where: the layout folder, the disk file, or the registry repository (`HOST/REPO`).
    pub location: String,
    /// The tag (for a disk: `VERSION-BUILD`, the build its file is named after).
    pub tag: String,
    /// The manifest digest (for a disk: `sha256:` of the file).
    pub manifest_digest: String,
    /// Every tag the output has in a registry or bucket (`VERSION-BUILD`, `VERSION`, the
    /// distribution's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Bytes sent to the region for it (registries and buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
}

impl Output {
    /// The location as a path (layout folders and disk files).
    pub fn path(&self) -> &Path {
        Path::new(&self.location)
    }

    /// What a user types to get it: `docker://HOST/REPO:TAG`, `s3://BUCKET/KEY:TAG`, or the
    /// folder or file (`oci:DIR:TAG` for a layout).
    pub fn reference(&self) -> String {
        match self.kind {
            OutputKind::OciLayout => format!("oci:{}:{}", self.location, self.tag),
            OutputKind::Disk(_) => self.location.clone(),
            OutputKind::OciRegistry if !self.location.contains("://") => {
                format!("docker://{}:{}", self.location, self.tag)
            }
            _ => format!("{}:{}", self.location, self.tag),
        }
    }
}

/// One place a distribution is about to write, saved before it writes: what to take back when
/// the process doing it dies half-way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    /// The region.
    pub region: String,
    /// What will be written.
    pub kind: OutputKind,
    /// The layout folder, the disk file, or the registry repository.
    pub location: String,
    /// The tags the build writes there (images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The manifest it sends (registries and buckets): what to delete when it is taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// How records of older kilns wrote a planned output: a disk's kind was `disk`, its format only
/// in the file's extension.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlannedWire {
    region: String,
    kind: String,
    location: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

impl<'de> Deserialize<'de> for Planned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = PlannedWire::deserialize(d)?;
        let kind = if w.kind == "disk" {
            Path::new(&w.location)
                .extension()
                .and_then(|e| DiskFormat::parse(&e.to_string_lossy()))
                .map(OutputKind::Disk)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("disk {} has no known extension", w.location))
                })?
        } else {
            w.kind.parse().map_err(serde::de::Error::custom)?
        };
        Ok(Planned {
            region: w.region,
            kind,
            location: w.location,
            tags: w.tags,
            digest: w.digest,
        })
    }
}

/// Why a distribution failed (nothing of it is left in any region).
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The target cannot take this kind of output.
    #[error("region {region}: {what}")]
    Unsupported {
        /// The region.
        region: String,
        /// What it cannot take, and what to do.
        what: String,
    },
    /// Writing into a layout folder or placing a disk failed.
    #[error("region {region}: {detail}")]
    Write {
        /// The region.
        region: String,
        /// What failed.
        detail: String,
    },
    /// The registry refused or failed.
    #[error("region {region}: {source}")]
    Registry {
        /// The region.
        region: String,
        /// What the registry said.
        source: Box<kiln_image::RegistryError>,
    },
    /// A registry or bucket region refused or failed.
    #[error("region {region}: {location}: {source}")]
    Remote {
        /// The region.
        region: String,
        /// The repository (`docker://HOST/REPO`, `s3://BUCKET/PREFIX`).
        location: String,
        /// What went wrong.
        source: Box<RepoError>,
    },
    /// Shipping logs failed.
    #[error("{0}")]
    Logs(String),
    /// A distribution failed and was taken back in every region.
    #[error("{source}; {}", taken_back_text(taken_back))]
    TakenBack {
        /// What failed.
        source: Box<DistError>,
        /// What was taken back, as `REGION: WHAT`.
        taken_back: Vec<String>,
    },
}

fn taken_back_text(undone: &[String]) -> String {
    if undone.is_empty() {
        "no region had anything of this build to take back".to_string()
    } else {
        format!("taken back: {}", undone.join(", "))
    }
}

/// Something that reports progress lines ("region local: /var/lib/kiln/... (850 MiB)").
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A place a region's images go.
#[async_trait]
pub trait Target: Send + Sync {
    /// The region it belongs to.
    fn region(&self) -> &str;

    /// What it would write for `artifact`, before anything is written.
    fn plan(&self, artifact: &Artifact) -> Vec<Planned>;

    /// Whether it can take `artifact` (reachable, writable, the kinds it holds); writes nothing
    /// a reader can see.
    async fn check(&self, artifact: &Artifact) -> Result<(), DistError>;

    /// Writes the build under its own names only; what readers of the version see does not
    /// change. Returns what it wrote.
    async fn stage(
        &self,
        artifact: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError>;

    /// Moves the version's names to the staged build. Returns the outputs that now name it.
    async fn promote(
        &self,
        artifact: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError>;

    /// Undoes what `planned` (entries of this target) wrote for `build`, as far as it got: its
    /// own names go, and the version's names go back to build `previous` when they name
    /// `build`. Best effort: returns what was taken back; what could not be is logged.
    async fn take_back(
        &self,
        planned: &[Planned],
        build: &BuildId,
        previous: Option<u32>,
    ) -> Vec<String>;

    /// Removes a finished build's `outputs` (entries of this target, from its record) for good:
    /// its own names go, and the version's names go back to build `previous` when they name
    /// `build` (or go too, without one). Says what it removed and what it could not. Targets
    /// that cannot remove builds report every output as failed.
    async fn retire(&self, outputs: &[Output], build: &BuildId, previous: Option<u32>) -> Retired {
        let _ = (build, previous);
        Retired::all_failed(
            outputs,
            &format!("region {}: this target cannot remove builds", self.region()),
        )
    }
}

/// A named region and where its images go.
#[derive(Clone)]
pub struct Region {
    /// The region's name.
    pub name: String,
    /// Its targets.
    pub targets: Vec<Arc<dyn Target>>,
}

impl Region {
    /// A local region: one OCI image layout folder (with `disks/` in it).
    pub fn local(name: &str, dir: PathBuf) -> Region {
        Region {
            name: name.to_string(),
            targets: vec![Arc::new(LayoutTarget::new(name, dir))],
        }
    }
}

/// What every region's targets would write for `artifact`.
pub fn plan(regions: &[Region], artifact: &Artifact) -> Vec<Planned> {
    regions
        .iter()
        .flat_map(|r| r.targets.iter())
        .flat_map(|t| t.plan(artifact))
        .collect()
}

/// Distributes `artifact` into every region: check all, stage all, promote all. On any failure
/// every target is taken back and nothing of the build is left anywhere. Image outputs come
/// first in the result (region by region, build tag before version tag), then disks.
pub async fn distribute(
    regions: &[Region],
    artifact: &Artifact,
    progress: Progress<'_>,
) -> Result<Vec<Output>, DistError> {
    let targets: Vec<&Arc<dyn Target>> = regions.iter().flat_map(|r| r.targets.iter()).collect();
    for t in &targets {
        t.check(artifact).await?;
    }
    let mut staged: Vec<Vec<Output>> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match t.stage(artifact, progress).await {
            Ok(o) => staged.push(o),
            Err(e) => return Err(undo(&targets[..=i], artifact, e).await),
        }
    }
    let mut promoted: Vec<Vec<Output>> = Vec::new();
    for t in &targets {
        match t.promote(artifact, progress).await {
            Ok(o) => promoted.push(o),
            Err(e) => return Err(undo(&targets, artifact, e).await),
        }
    }
    let mut images = Vec::new();
    let mut disks = Vec::new();
    for (s, p) in staged.into_iter().zip(promoted) {
        for o in s.into_iter().chain(p) {
            if o.kind.is_image() {
                images.push(o);
            } else {
                disks.push(o);
            }
        }
    }
    // Per target the build tag is staged before the version tag is promoted: keep that order.
    images.extend(disks);
    Ok(images)
}

/// Takes every target back after `e`; the error says what was taken back.
async fn undo(targets: &[&Arc<dyn Target>], artifact: &Artifact, e: DistError) -> DistError {
    let mut all = Vec::new();
    for t in targets {
        let planned = t.plan(artifact);
        let undone = t
            .take_back(&planned, &artifact.build, artifact.previous)
            .await;
        if !undone.is_empty() {
            tracing::info!(
                region = t.region(),
                ?undone,
                "took back a failed distribution"
            );
        }
        all.extend(undone.into_iter().map(|u| format!("{}: {u}", t.region())));
    }
    DistError::TakenBack {
        source: Box::new(e),
        taken_back: all,
    }
}

/// Takes back what a build that died while distributing had planned (from its record): each
/// entry goes to the target that wrote it. Returns what was taken back, as `REGION: WHAT`.
pub async fn take_back(
    planned: &[Planned],
    build: &BuildId,
    previous: Option<u32>,
    access: &RegistryAccess,
) -> Vec<String> {
    let mut undone = Vec::new();
    for p in planned {
        let target = match target_for(&p.region, p.kind, &p.location, access) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot take back {}: {e}", p.location);
                continue;
            }
        };
        for what in target
            .take_back(std::slice::from_ref(p), build, previous)
            .await
        {
            undone.push(format!("{}: {what}", p.region));
        }
    }
    undone
}

/// The target that wrote `location` (of output kind `kind`), as a plan or record names it:
/// what takes a dead build back and retires a finished one.
pub(crate) fn target_for(
    region: &str,
    kind: OutputKind,
    location: &str,
    access: &RegistryAccess,
) -> Result<Arc<dyn Target>, String> {
    Ok(match kind {
        OutputKind::OciLayout => Arc::new(LayoutTarget::new(region, location.to_string())),
        OutputKind::Disk(_) => {
            // A disk lives in `REGION_DIR/disks/FILE`.
            let dir = Path::new(location)
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| "the disk is not in a region folder".to_string())?;
            Arc::new(LayoutTarget::new(region, dir.to_path_buf()))
        }
        OutputKind::OciRegistry
        | OutputKind::OciBucket
        | OutputKind::DiskChunks
        | OutputKind::ContainerDisk => {
            Arc::new(remote_for(region, location, access).map_err(|e| e.to_string())?)
        }
    })
}

/// The target that wrote a registry or bucket location a plan or record names
/// (`docker://HOST/REPO`, `s3://BUCKET/KEY`; a bare `HOST/REPO` from older records).
pub fn remote_for(
    region: &str,
    location: &str,
    access: &RegistryAccess,
) -> Result<RemoteTarget, DistError> {
    let place: Box<dyn Place> = if location.starts_with("s3://") {
        let (bucket, _) = kiln_s3::parse_url(location).map_err(|e| DistError::Remote {
            region: region.to_string(),
            location: location.to_string(),
            source: Box::new(e.into()),
        })?;
        Box::new(BucketPlace::new(access.s3_client(), &bucket, ""))
    } else {
        let rest = location.strip_prefix("docker://").unwrap_or(location);
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || !rest.contains('/') {
            return Err(DistError::Unsupported {
                region: region.to_string(),
                what: format!("`{location}` is not a registry repository (HOST/REPO)"),
            });
        }
        Box::new(RegistryPlace::new(host, None, access.options_for(host)))
    };
    Ok(RemoteTarget::new(
        region,
        place,
        vec![
            OutputKind::OciRegistry,
            OutputKind::DiskChunks,
            OutputKind::ContainerDisk,
        ],
        Naming::default(),
    ))
}
