//! Distributing a finished build again, to more regions (`kiln image distribute`, the API's
//! DistributeImage): nothing is built or tested again. Its container image and disk are taken
//! from one of the build's registry or bucket outputs (blobs the layer store or the pack store
//! has are not downloaded), or from its local region folder, and go to the named registry and
//! bucket regions as a build's do: staged by digest everywhere, tagged only when every region
//! has them, taken back everywhere on a failure. The build's record gains the outputs.

use std::path::PathBuf;

use kiln_dist::pieces::{self, Piece};
use kiln_dist::{Artifact, OutputKind, Region};

use crate::recipe::Distribution;
use crate::record::{ImageRecord, Records, State};
use crate::store::{Home, LayerStore};

use super::stages::distribute::{naming, remote};
use super::BuildOptions;

/// Why a build could not be distributed again (nothing of it was left in the new regions).
#[derive(Debug, thiserror::Error)]
pub enum AgainError {
    /// The build is not one that can be distributed (not AVAILABLE, a region that is not a
    /// registry or bucket, no source of its content).
    #[error("{0}")]
    Invalid(String),
    /// Reading the build's content or writing the regions failed.
    #[error("{0}")]
    Failed(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Distributes `rec` to `regions` (names kiln's configuration maps to registries or buckets);
/// returns the record with the new outputs, saved.
pub async fn distribute_again(
    home: &Home,
    records: &Records,
    options: &BuildOptions,
    mut rec: ImageRecord,
    regions: &[String],
    progress: kiln_dist::Progress<'_>,
) -> Result<ImageRecord, AgainError> {
    check(&rec, regions, options)?;
    let places: Vec<(String, crate::regions::RegionPlace)> = regions
        .iter()
        .filter_map(|r| Some((r.clone(), options.regions.get(r)?.clone())))
        .collect();
    let access = options.access();
    let scratch = Scratch(home.run().join(format!(
        "distribute-{}-{}",
        rec.build_id().build_stem(),
        std::process::id()
    )));
    std::fs::create_dir_all(&scratch.0)
        .map_err(|e| AgainError::Failed(format!("creating {}: {e}", scratch.0.display())))?;
    let pieces = sources(home, &rec, &access, &scratch.0).await?;
    if pieces.is_empty() {
        return Err(AgainError::Invalid(format!(
            "{} has no output in a registry, bucket or folder to distribute from",
            rec.build_version()
        )));
    }
    let dists: Vec<Distribution> = regions.iter().map(|r| Distribution::in_region(r)).collect();
    // The regions the build is in already lend blobs to new ones in the same registry.
    let mut lenders = dists.clone();
    for o in &rec.outputs {
        if !lenders.iter().any(|d| d.region == o.region) {
            lenders.push(Distribution::in_region(&o.region));
        }
    }
    let kinds: Vec<OutputKind> = pieces.iter().map(|p| p.kind).collect();
    let attaching = super::stages::supply_chain::again(home, &rec)
        .map_err(|e| AgainError::Failed(e.to_string()))?;
    let targets: Vec<Region> = dists
        .iter()
        .zip(&places)
        .map(|(d, (name, place))| {
            let mut kinds = kinds.clone();
            if !place.takes_container_disks() {
                kinds.retain(|k| *k != OutputKind::ContainerDisk);
            }
            let naming = naming(d, rec.build, rec.created);
            let target = remote(options, &lenders, d, place, &access, kinds, naming)
                .with_attachments(attaching.attachments.clone(), attaching.log.clone());
            Region {
                name: name.clone(),
                targets: vec![std::sync::Arc::new(target)],
            }
        })
        .collect();
    let artifact = Artifact {
        build: rec.build_id(),
        image: None,
        disk: None,
        previous: records.previous_available(&rec).await,
        scratch: scratch.0.clone(),
        pieces,
    };
    // Another account's repository is refused before anything is written (registry-auth.md).
    let planned = kiln_dist::plan(&targets, &artifact);
    crate::registry_auth::guard::check(records.store(), &rec.account, &planned)
        .await
        .map_err(AgainError::Invalid)?;
    let outputs = kiln_dist::distribute(&targets, &artifact, progress)
        .await
        .map_err(|e| AgainError::Failed(e.to_string()))?;
    let usage = rec.usage.get_or_insert_with(Default::default);
    for name in regions {
        usage.regions.push(crate::usage::RegionUsage {
            region: name.clone(),
            bytes_stored: artifact.pieces.iter().map(Piece::total_bytes).sum(),
            bytes_sent: outputs
                .iter()
                .filter(|o| &o.region == name)
                .filter_map(|o| o.sent)
                .sum(),
        });
    }
    rec.outputs.extend(outputs);
    super::stages::supply_chain::record_again(&mut rec, &attaching);
    records.save(&rec).await?;
    Ok(rec)
}

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `rec` can go to `regions` (checked before anything is read or written).
pub fn check(
    rec: &ImageRecord,
    regions: &[String],
    options: &BuildOptions,
) -> Result<(), AgainError> {
    if rec.state != State::Available {
        return Err(AgainError::Invalid(format!(
            "{} is {}: only an AVAILABLE image can be distributed again",
            rec.build_version(),
            rec.state.as_str()
        )));
    }
    if regions.is_empty() {
        return Err(AgainError::Invalid("no region to distribute to".into()));
    }
    for r in regions {
        if options.regions.get(r).is_none() {
            return Err(AgainError::Invalid(format!(
                "region `{r}` is not a registry or bucket in kiln's configuration (`regions:`); \
                 a folder region gets an image when a build names it"
            )));
        }
        if rec.outputs.iter().any(|o| &o.region == r) {
            return Err(AgainError::Invalid(format!(
                "{} is in region `{r}` already",
                rec.build_version()
            )));
        }
    }
    Ok(())
}

/// The build's content, one piece per kind, from its outputs: registry or bucket outputs
/// first (their manifests are what regions get), else its local folder.
async fn sources(
    home: &Home,
    rec: &ImageRecord,
    access: &kiln_dist::RegistryAccess,
    scratch: &std::path::Path,
) -> Result<Vec<Piece>, AgainError> {
    let layers = LayerStore::new(home.clone());
    let packs = crate::disk::chunks::packs_dir(home);
    let local = move |digest: &str| -> Option<PathBuf> {
        let blob = layers.blob_path(digest);
        if blob.is_file() {
            return Some(blob);
        }
        let pack = kiln_dist::chunked::blob_file(&packs, digest);
        pack.is_file().then_some(pack)
    };
    let mut pieces: Vec<Piece> = Vec::new();
    let remote_kinds = [
        (OutputKind::OciRegistry, OutputKind::OciRegistry),
        (OutputKind::OciBucket, OutputKind::OciRegistry),
        (OutputKind::DiskChunks, OutputKind::DiskChunks),
        (OutputKind::ContainerDisk, OutputKind::ContainerDisk),
    ];
    for (source, kind) in remote_kinds {
        if pieces.iter().any(|p| p.kind == kind) {
            continue;
        }
        let Some(o) = rec.outputs.iter().find(|o| o.kind == source) else {
            continue;
        };
        let target = kiln_dist::remote_for(&o.region, &o.location, access)
            .map_err(|e| AgainError::Failed(e.to_string()))?;
        let repo = target
            .repo_at(&o.location)
            .map_err(|e| AgainError::Failed(e.to_string()))?;
        let piece = pieces::fetch(repo.as_ref(), &o.manifest_digest, kind, &local, scratch)
            .await
            .map_err(|e| AgainError::Failed(format!("reading {}: {e}", o.reference())))?;
        pieces.push(piece);
    }
    if !pieces.iter().any(|p| p.kind == OutputKind::OciRegistry) {
        if let Some(o) = rec.outputs.iter().find(|o| o.kind == OutputKind::OciLayout) {
            let (dir, tag) = (o.location.clone(), rec.build_id().build_tag());
            let piece = tokio::task::spawn_blocking(move || {
                pieces::from_layout(
                    std::path::Path::new(&dir),
                    &tag,
                    OutputKind::OciRegistry,
                    None,
                )
            })
            .await
            .map_err(|e| AgainError::Failed(e.to_string()))?
            .map_err(|e| AgainError::Failed(e.to_string()))?;
            pieces.push(piece);
        }
    }
    if !pieces.iter().any(|p| p.kind == OutputKind::DiskChunks) {
        let raw = rec
            .outputs
            .iter()
            .find(|o| o.kind == OutputKind::Disk(kiln_image::disk::DiskFormat::Raw));
        if let Some(o) = raw {
            let (home, account, name, file) = (
                home.clone(),
                rec.account.clone(),
                rec.name.clone(),
                o.path().to_path_buf(),
            );
            let disk = tokio::task::spawn_blocking(move || {
                crate::disk::chunks::pack(&home, &account, &name, &file)
            })
            .await
            .map_err(|e| AgainError::Failed(e.to_string()))??;
            let title = format!("{}.raw", rec.build_id().version_stem());
            pieces.push(pieces::chunked_disk(&disk, &title));
        }
    }
    Ok(pieces)
}
