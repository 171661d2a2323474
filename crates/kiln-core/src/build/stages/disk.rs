//! The disk of a build: the image's layers plus the QEMU guest agent (when the image lacks it
//! and kiln has to drive the disk's VMs through it), assembled into a raw bootable disk in the
//! run folder; after the tests, the agent kiln brought in goes again when the recipe asks.

use std::path::PathBuf;
use std::time::Instant;

use crate::build::components;
use crate::build::failure::StageFailure;
use crate::build::millis;
use crate::build::run::{BuildRun, BuiltDisk};
use crate::disk::cache::{self, DiskCache, DiskEntry, Made};
use crate::disk::{self, Assembled, DiskSpec, GuestAgent};
use crate::recipe::ParentImage;
use crate::record::{DiskRecord, State};
use crate::store::StoredLayer;

use super::sandbox::internal_layer;

/// Free space the builder VM's disk gets beyond its content when the recipe gives no size:
/// components install packages in it.
pub(crate) const VM_BUILDER_HEADROOM: u64 = 2 << 30;

/// Assembles the disk of the image's layers, when the recipe wants one and no builder VM made
/// it already.
pub(crate) async fn assemble(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    if !run.recipe.wants_disk() || run.disk.is_some() {
        return Ok(());
    }
    let chain = run.chain.clone();
    let (chain, guest_agent) = with_guest_agent(run, &chain).await?;
    let (assembled, entry) = assemble_chain(run, &chain).await?;
    run.disk = Some(BuiltDisk {
        assembled,
        entry,
        chain,
        guest_agent,
    });
    Ok(())
}

/// True when kiln puts the guest agent into a `bootstrap:` parent itself (the recipe asked for a
/// disk and did not list the agent among its own packages).
fn parent_adds_guest_agent(run: &BuildRun<'_>) -> bool {
    matches!(run.recipe.parent, ParentImage::Bootstrap { .. })
        && !run
            .recipe
            .bootstrap_packages
            .iter()
            .any(|p| p == "qemu-guest-agent")
}

/// `chain` with the QEMU guest agent: as it is when the image has one, or with a layer from
/// kiln's own component that installs it.
pub(crate) async fn with_guest_agent(
    run: &BuildRun<'_>,
    chain: &[StoredLayer],
) -> Result<(Vec<StoredLayer>, GuestAgent), StageFailure> {
    if disk::has_guest_agent(chain) {
        let agent = if parent_adds_guest_agent(run) {
            GuestAgent::InstalledByKiln
        } else {
            GuestAgent::InImage
        };
        return Ok((chain.to_vec(), agent));
    }
    run.progress(
        "the image has no QEMU guest agent: installing it for the disk image (kiln drives VMs through it)",
    );
    let c = components::internal(disk::GUEST_AGENT_DOCUMENT)
        .map_err(|e| StageFailure::new(State::Building, e))?;
    let (layer, cached) = internal_layer(run, &c, chain).await.map_err(|mut f| {
        f.reason = format!(
            "{} (kiln installs qemu-guest-agent into disk images that lack it: the image needs a package manager and a network, or install qemu-guest-agent in a component)",
            f.reason
        );
        f
    })?;
    if cached {
        run.progress("the guest agent layer comes from the step cache");
    }
    let mut out = chain.to_vec();
    out.push(layer);
    Ok((out, GuestAgent::InstalledByKiln))
}

/// The raw disk of `chain` with `extra` free space (when the recipe gives no size): the kept
/// one when nothing that makes it changed, else assembled now and kept. The build reads it
/// through its own name in `work` (`work/disk.raw`), so the cache may drop it meanwhile.
pub(crate) async fn disk_of(
    run: &BuildRun<'_>,
    chain: &[StoredLayer],
    extra: u64,
    work: PathBuf,
) -> Result<(Assembled, DiskEntry, bool), StageFailure> {
    let fail = |e: String| StageFailure::new(State::Building, e);
    let (home, name, size, no_cache) = (
        run.home.clone(),
        run.recipe.name.clone(),
        run.recipe.disk.size_bytes,
        run.options.no_cache,
    );
    let chain = chain.to_vec();
    tokio::task::spawn_blocking(move || {
        let spec = DiskSpec {
            name: &name,
            chain: &chain,
            size,
            extra,
        };
        let cache = DiskCache::new(&home);
        let key = cache::key(&spec);
        let raw = work.join("disk.raw");
        // The build's own name for a kept disk; when the cache dropped it meanwhile, it is
        // assembled again.
        let kept = if no_cache { None } else { cache.get(&key) }.filter(|entry| {
            std::fs::create_dir_all(&work).is_ok()
                && cache::link_or_copy(&cache.raw_path(entry), &raw).is_ok()
        });
        let (entry, cached) = match kept {
            Some(entry) => (entry, true),
            None => {
                let t0 = Instant::now();
                let layers = crate::store::LayerStore::new(home.clone());
                let a = disk::assemble(&spec, &layers, &work)?;
                let made = Made {
                    name: name.clone(),
                    layers: chain.iter().map(|l| l.info.diff_id.clone()).collect(),
                    digest: cache::digest_of(&a.raw).map_err(|e| e.to_string())?,
                    assemble_ms: millis(t0),
                };
                (cache.put(&key, made, &a).map_err(|e| e.to_string())?, false)
            }
        };
        Ok((entry.assembled(raw), entry, cached))
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e: String| fail(format!("the disk image: {e}")))
}

/// The raw disk of `chain` for the image, recorded.
pub(crate) async fn assemble_chain(
    run: &mut BuildRun<'_>,
    chain: &[StoredLayer],
) -> Result<(Assembled, DiskEntry), StageFailure> {
    run.progress("assembling the disk image (GPT, GRUB, ext4 made with mkfs.ext4 -d)");
    let t0 = Instant::now();
    let (a, entry, cached) = disk_of(run, chain, 0, run.run_dir.join("disk")).await?;
    run.rec.disk = Some(DiskRecord {
        kernel: a.kernel.clone(),
        size: a.size,
        filesystem_uuid: a.ids.filesystem.clone(),
        guest_agent: None,
        assemble_ms: if cached { 0 } else { entry.assemble_ms },
        digest: Some(entry.raw.digest.clone()),
        cached,
    });
    if cached {
        run.progress(format!(
            "the disk image comes from the disk cache: {} MiB, kernel {}, {}",
            a.size >> 20,
            a.kernel,
            entry.raw.digest
        ));
    } else {
        run.progress(format!(
            "disk image assembled: {} MiB, kernel {} ({:.1} s), {}",
            a.size >> 20,
            a.kernel,
            t0.elapsed().as_secs_f64(),
            entry.raw.digest
        ));
    }
    Ok((a, entry))
}

/// After the tests: the guest agent kiln installed goes when the recipe asks
/// (`disk.removeGuestAgent`), as one more layer on the disk, which is assembled again.
pub(crate) async fn remove_guest_agent(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    let Some(d) = run.disk.as_ref() else {
        return Ok(());
    };
    if run.recipe.disk.remove_guest_agent && d.guest_agent == GuestAgent::InstalledByKiln {
        run.progress("removing the QEMU guest agent kiln installed (disk.removeGuestAgent)");
        let c = components::internal(disk::REMOVE_GUEST_AGENT_DOCUMENT)
            .map_err(|e| StageFailure::new(State::Building, e))?;
        let mut chain = d.chain.clone();
        let (layer, _) = internal_layer(run, &c, &chain).await?;
        chain.push(layer);
        let (assembled, entry) = assemble_chain(run, &chain).await?;
        run.disk = Some(BuiltDisk {
            assembled,
            entry,
            chain,
            guest_agent: GuestAgent::RemovedAfterTests,
        });
    }
    record_guest_agent(run);
    run.save().await;
    Ok(())
}

/// Writes where the disk's guest agent came from into the record.
pub(crate) fn record_guest_agent(run: &mut BuildRun<'_>) {
    let agent = run.disk.as_ref().map(|d| d.guest_agent);
    if let Some(d) = run.rec.disk.as_mut() {
        d.guest_agent = agent;
    }
}
