//! DISTRIBUTING: the image and its disks go to every region through kiln-dist, which checks,
//! stages and promotes them so that no region shows half of them. What will be written is saved
//! in the record first, so that a kiln that dies half-way can be undone by the next one.

use std::sync::atomic::Ordering;

use kiln_dist::{Artifact, DiskFile, DiskImage, OciImage, Region};
use kiln_image::disk::DiskFormat;

use crate::build::event::BuildEvent;
use crate::build::failure::StageFailure;
use crate::build::image_config::image_settings;
use crate::build::run::BuildRun;
use crate::disk::cache::DiskCache;
use crate::record::State;
use crate::store::{Home, StoredLayer};

/// The regions of a recipe: each a local image layout folder (its `path`, or
/// `$KILN_HOME/regions/REGION` for the local account and
/// `$KILN_HOME/regions/ACCOUNT/REGION/NAME` for the others: a layout's tags are versions, so
/// two accounts', or two images', `1.0.0` never share one).
pub(crate) fn regions(home: &Home, recipe: &crate::recipe::Recipe, account: &str) -> Vec<Region> {
    region_dirs(home, recipe, account)
        .into_iter()
        .map(|(name, dir)| Region::local(&name, dir))
        .collect()
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
    let regions = regions(run.home, run.recipe, &run.rec.account);
    let files = disk_files(run).await?;
    let artifact = artifact(run, files).await;
    // What each region holds of the image and lacks of it, read before it is written.
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
    let usage: Vec<_> = region_dirs(run.home, run.recipe, &run.rec.account)
        .iter()
        .map(|(name, dir)| crate::usage::region(name, dir, &blobs, &disk_files))
        .collect();
    run.rec.distributing = kiln_dist::plan(&regions, &artifact);
    run.enter(State::Distributing).await;
    let observer = run.observer.clone();
    let progress = move |line: &str| {
        observer.event(&BuildEvent::Progress {
            message: line.to_string(),
        })
    };
    let outputs = kiln_dist::distribute(&regions, &artifact, &progress)
        .await
        .map_err(|e| StageFailure::new(State::Distributing, e.to_string()))?;
    run.rec.outputs = outputs;
    run.rec.usage.get_or_insert_with(Default::default).regions = usage;
    Ok(())
}

/// The disk in every format the recipe asks for: kept conversions of the disk in the disk
/// cache, made now for the formats it does not have yet.
async fn disk_files(run: &mut BuildRun<'_>) -> Result<Vec<DiskFile>, StageFailure> {
    let Some(d) = run.disk.as_mut() else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for &format in &run.recipe.disk.formats {
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
    }
}
