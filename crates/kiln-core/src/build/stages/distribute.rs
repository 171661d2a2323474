//! DISTRIBUTING: the image and its disks go to every region through kiln-dist, which checks,
//! stages and promotes them so that no region shows half of them. What will be written is saved
//! in the record first, so that a kiln that dies half-way can be undone by the next one.

use std::sync::atomic::Ordering;

use std::sync::Arc;

use kiln_dist::pieces::Piece;
use kiln_dist::{
    Artifact, BucketPlace, DiskFile, DiskImage, Naming, OciImage, OutputKind, Region,
    RegistryPlace, RemoteTarget,
};
use kiln_image::disk::DiskFormat;

use crate::build::event::BuildEvent;
use crate::build::failure::StageFailure;
use crate::build::image_config::image_settings;
use crate::build::run::BuildRun;
use crate::disk::cache::DiskCache;
use crate::recipe::{render_disk_name, Distribution};
use crate::record::State;
use crate::regions::RegionPlace;
use crate::store::{Home, StoredLayer};

/// The regions of a recipe. A name kiln's configuration maps (`regions:`) is a registry or a
/// bucket; any other is a local image layout folder (its `path`, or
/// `$KILN_HOME/regions/REGION` for the local account and
/// `$KILN_HOME/regions/ACCOUNT/REGION/NAME` for the others: a layout's tags are versions, so
/// two accounts', or two images', `1.0.0` never share one).
/// Registry targets sign and attach with `attaching` when given.
pub(crate) fn regions(
    run: &BuildRun<'_>,
    attaching: Option<&super::supply_chain::Attaching>,
) -> Vec<Region> {
    let (home, recipe, options) = (run.home, run.recipe, run.options);
    let access = options.access();
    let dirs = region_dirs(home, recipe, &run.rec.account);
    recipe
        .distributions
        .iter()
        .zip(dirs)
        .map(|(d, (name, dir))| match options.regions.get(&d.region) {
            None => Region::local(&name, dir),
            Some(place) => {
                let mut target = remote_target(run, d, place, &access);
                if let Some(a) = attaching {
                    target = target.with_attachments(a.attachments.clone(), a.log.clone());
                }
                Region {
                    name: name.clone(),
                    targets: vec![Arc::new(target)],
                }
            }
        })
        .collect()
}

/// The target of a configured region for this build.
fn remote_target(
    run: &BuildRun<'_>,
    d: &Distribution,
    place: &RegionPlace,
    access: &kiln_dist::RegistryAccess,
) -> RemoteTarget {
    let recipe = run.recipe;
    let mut kinds = Vec::new();
    if recipe.wants_oci() {
        kinds.push(OutputKind::OciRegistry);
    }
    if run.disk.is_some() {
        kinds.push(OutputKind::DiskChunks);
        if place.takes_container_disks() {
            kinds.push(OutputKind::ContainerDisk);
        }
    }
    let naming = naming(d, run.rec.build, run.rec.created);
    remote(
        run.options,
        &recipe.distributions,
        d,
        place,
        access,
        kinds,
        naming,
    )
}

/// The names a distribution gives a build in a registry or bucket region.
pub(crate) fn naming(
    d: &Distribution,
    build: u32,
    created: chrono::DateTime<chrono::Utc>,
) -> Naming {
    Naming {
        repository: d.container.as_ref().and_then(|c| c.repository.clone()),
        container_tags: d
            .container
            .as_ref()
            .map(|c| c.tags.clone())
            .unwrap_or_default(),
        disk_tags: d
            .disk_name
            .iter()
            .map(|t| render_disk_name(t, build, created))
            .filter(|t| !t.is_empty())
            .collect(),
    }
}

/// A registry or bucket region's target, taking pieces of `kinds`; the other regions of the
/// same registry among `all` lend it blobs.
pub(crate) fn remote(
    options: &crate::build::BuildOptions,
    all: &[Distribution],
    d: &Distribution,
    place: &RegionPlace,
    access: &kiln_dist::RegistryAccess,
    kinds: Vec<OutputKind>,
    naming: Naming,
) -> RemoteTarget {
    match place {
        RegionPlace::Registry {
            host, namespace, ..
        } => {
            let siblings = all
                .iter()
                .filter(|o| o.region != d.region)
                .filter_map(|o| match options.regions.get(&o.region) {
                    Some(RegionPlace::Registry {
                        host: h,
                        namespace: n,
                        ..
                    }) if h == host => Some(n.clone().unwrap_or_default()),
                    _ => None,
                })
                .collect();
            let place = RegistryPlace::new(host, namespace.as_deref(), access.options_for(host));
            RemoteTarget::new(&d.region, Box::new(place), kinds, naming).with_siblings(siblings)
        }
        RegionPlace::Bucket { bucket, prefix } => RemoteTarget::new(
            &d.region,
            Box::new(BucketPlace::new(access.s3_client(), bucket, prefix)),
            kinds,
            naming,
        ),
    }
}

/// Each region's name and layout folder.
fn region_dirs(
    home: &Home,
    recipe: &crate::recipe::Recipe,
    account: &str,
) -> Vec<(String, std::path::PathBuf)> {
    let dir_of = |region: &str| {
        if account == crate::principal::LOCAL_ACCOUNT {
            home.regions().join(region)
        } else {
            home.regions()
                .join(account)
                .join(region)
                .join(recipe.name.to_ascii_lowercase())
        }
    };
    recipe
        .distributions
        .iter()
        .map(|d| {
            let dir = d.path.clone().unwrap_or_else(|| dir_of(&d.region));
            (d.region.clone(), dir)
        })
        .collect()
}

/// Distributes the build to every region.
pub(crate) async fn run(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    // From here on a cancel request waits: a region is never left half-written.
    run.distributing.store(true, Ordering::SeqCst);
    let remote: Vec<&str> = run
        .recipe
        .distributions
        .iter()
        .filter(|d| run.options.regions.get(&d.region).is_some())
        .map(|d| d.region.as_str())
        .collect();
    let container_disk = run.recipe.distributions.iter().any(|d| {
        run.options
            .regions
            .get(&d.region)
            .is_some_and(RegionPlace::takes_container_disks)
    });
    let mut files = disk_files(run, container_disk).await?;
    let qcow2 = files
        .iter()
        .find(|f| f.format == DiskFormat::Qcow2)
        .filter(|_| container_disk)
        .map(|f| f.path.clone());
    files.retain(|f| run.recipe.disk.formats.contains(&f.format));
    let mut artifact = artifact(run, files).await;
    let mut attaching = None;
    if !remote.is_empty() {
        artifact.pieces = pieces(run, &artifact, qcow2).await?;
        attaching = Some(super::supply_chain::prepare(run, &artifact.pieces)?);
    }
    let regions = regions(run, attaching.as_ref());
    // What each local region holds of the image and lacks of it, read before it is written.
    let blobs: Vec<(String, u64)> = artifact
        .image
        .iter()
        .flat_map(|i| i.blobs.iter().map(|b| (b.digest.clone(), b.size)))
        .collect();
    let disk_files: Vec<(String, u64)> = artifact
        .disk
        .iter()
        .flat_map(|d| {
            d.files.iter().map(|f| {
                let stem = run.rec.build_id().build_stem();
                (format!("{stem}.{}", f.format.extension()), f.size)
            })
        })
        .collect();
    let mut usage: Vec<_> = region_dirs(run.home, run.recipe, &run.rec.account)
        .iter()
        .filter(|(name, _)| !remote.contains(&name.as_str()))
        .map(|(name, dir)| crate::usage::region(name, dir, &blobs, &disk_files))
        .collect();
    let planned = kiln_dist::plan(&regions, &artifact);
    // Another account's repository is refused before anything is written (registry-auth.md).
    let (records, recipe, options) = (run.records, run.recipe, run.options);
    let auth = crate::registry_auth::stage::Distributing {
        store: records.store(),
        account: run.rec.account.clone(),
        distributions: &recipe.distributions,
        regions: &options.regions,
        access: options.access(),
    };
    auth.before(&planned)
        .await
        .map_err(|e| StageFailure::new(State::Distributing, e))?;
    run.rec.distributing = planned;
    run.enter(State::Distributing).await;
    // A worker whose lease went publishes nothing: the build is another worker's now.
    if run.records.lease_lost() {
        return Err(StageFailure::new(
            State::Distributing,
            "this worker lost its lease on the build before distributing",
        ));
    }
    let observer = run.observer.clone();
    let progress = move |line: &str| {
        observer.event(&BuildEvent::Progress {
            message: line.to_string(),
        })
    };
    let outputs = kiln_dist::distribute(&regions, &artifact, &progress)
        .await
        .map_err(|e| StageFailure::new(State::Distributing, e.to_string()))?;
    for name in &remote {
        let mine = outputs.iter().filter(|o| o.region == *name);
        let stored = artifact.pieces.iter().map(|p| p.total_bytes()).sum();
        usage.push(crate::usage::RegionUsage {
            region: name.to_string(),
            bytes_stored: stored,
            bytes_sent: mine.filter_map(|o| o.sent).sum(),
        });
    }
    // targetAccountIds: copies in other accounts' repositories, by mounts (registry-auth.md).
    let (outputs, owners) = auth
        .after(&artifact, &run.rec.distributing, outputs)
        .await
        .map_err(|e| StageFailure::new(State::Distributing, e))?;
    run.rec.account_copies = owners;
    run.rec.outputs = outputs;
    run.rec.usage.get_or_insert_with(Default::default).regions = usage;
    super::supply_chain::record(run, attaching);
    Ok(())
}

/// What registry and bucket regions receive: the container image (from a layout written in
/// scratch), the disk as chunks, and the disk as a containerDisk when a region wants it.
async fn pieces(
    run: &BuildRun<'_>,
    artifact: &Artifact,
    container_disk: Option<std::path::PathBuf>,
) -> Result<Vec<Piece>, StageFailure> {
    let fail = |e: String| StageFailure::new(State::Distributing, e);
    let mut pieces = Vec::new();
    let a = artifact.clone();
    let image = tokio::task::spawn_blocking(move || kiln_dist::pieces::image(&a))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    let image = match image {
        Some(p) => Some(super::encrypt::image_piece(run, artifact, p).await?),
        None => None,
    };
    pieces.extend(image);
    let Some(d) = &run.disk else {
        return Ok(pieces);
    };
    run.observer.event(&BuildEvent::Progress {
        message: "cutting the disk into chunks".into(),
    });
    let t0 = std::time::Instant::now();
    let (home, account, name, raw) = (
        run.home.clone(),
        run.rec.account.clone(),
        run.recipe.name.clone(),
        d.assembled.raw.clone(),
    );
    let key = super::encrypt::disk_key(run).map_err(fail)?;
    let chunked = tokio::task::spawn_blocking(move || {
        crate::disk::chunks::pack_keyed(&home, &account, &name, &raw, key.as_ref())
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| fail(e.to_string()))?;
    run.observer.event(&BuildEvent::Progress {
        message: format!(
            "the disk in chunks: {} of {} chunks new ({} compressed) in {:.1} s",
            chunked.new_chunks,
            chunked.chunks,
            kiln_dist::remote::human(chunked.new_bytes),
            t0.elapsed().as_secs_f64()
        ),
    });
    let stem = artifact.build.version_stem();
    pieces.push(kiln_dist::pieces::chunked_disk(
        &chunked,
        &format!("{stem}.raw"),
    ));
    if let Some(qcow2) = container_disk {
        let scratch = artifact.scratch.join("containerdisk");
        let settings = kiln_image::ImageSettings {
            created: run.rec.created,
            ..Default::default()
        };
        let file = format!("{}.qcow2", run.recipe.name.to_ascii_lowercase());
        let piece = tokio::task::spawn_blocking(move || {
            kiln_dist::pieces::container_disk(&qcow2, &file, &scratch, &settings)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(fail)?;
        pieces.push(piece);
    }
    Ok(pieces)
}

/// The disk in every format the recipe asks for: kept conversions of the disk in the disk
/// cache, made now for the formats it does not have yet.
async fn disk_files(
    run: &mut BuildRun<'_>,
    container_disk: bool,
) -> Result<Vec<DiskFile>, StageFailure> {
    let Some(d) = run.disk.as_mut() else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    let mut formats = run.recipe.disk.formats.clone();
    // A containerDisk holds the qcow2 file, whatever formats the folders get.
    if container_disk && !formats.contains(&DiskFormat::Qcow2) {
        formats.push(DiskFormat::Qcow2);
    }
    for &format in &formats {
        let compression = run.recipe.disk.compression;
        let have = d.entry.formats.iter().any(|f| {
            f.format == format && (format != DiskFormat::Qcow2 || f.compression == compression)
        });
        if format != DiskFormat::Raw && !have {
            run.observer.event(&BuildEvent::Progress {
                message: format!("converting the disk to {}", format.extension()),
            });
        }
        let (cache, mut entry) = (DiskCache::new(run.home), d.entry.clone());
        let (raw, scratch) = (d.assembled.raw.clone(), run.run_dir.join("disk"));
        let t0 = std::time::Instant::now();
        let (file, entry, kept) = tokio::task::spawn_blocking(move || {
            cache
                .format(&mut entry, &raw, &scratch, format, compression)
                .map(|(f, kept)| (f, entry, kept))
        })
        .await
        .map_err(|e| StageFailure::new(State::Distributing, e.to_string()))?
        .map_err(|e| StageFailure::new(State::Distributing, e.to_string()))?;
        if !kept {
            run.observer.event(&BuildEvent::Progress {
                message: format!(
                    "the disk as {}: {} MiB in {:.1} s",
                    format.extension(),
                    file.size >> 20,
                    t0.elapsed().as_secs_f64()
                ),
            });
        }
        d.entry = entry;
        files.push(file);
    }
    Ok(files)
}

async fn artifact(run: &BuildRun<'_>, files: Vec<DiskFile>) -> Artifact {
    let image = match (&run.parent, run.recipe.wants_oci()) {
        (Some(parent), true) => Some(OciImage {
            blobs: run.chain.iter().map(StoredLayer::as_blob).collect(),
            settings: image_settings(
                run.recipe,
                &run.rec,
                parent,
                run.components,
                &run.chain,
                run.epoch,
            ),
        }),
        _ => None,
    };
    let disk = run.disk.as_ref().map(|_| DiskImage { files });
    Artifact {
        build: run.rec.build_id(),
        image,
        disk,
        previous: run.records.previous_available(&run.rec).await,
        scratch: run.run_dir.join("dist"),
        pieces: Vec::new(),
    }
}
