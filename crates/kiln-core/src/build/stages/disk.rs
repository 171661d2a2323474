//! The disk of a build: the image's layers plus the QEMU guest agent (when the image lacks it
//! and kiln has to drive the disk's VMs through it), assembled into a raw bootable disk in the
//! run folder; after the tests, the agent kiln brought in goes again when the recipe asks.

use std::time::Instant;

use crate::build::components;
use crate::build::failure::StageFailure;
use crate::build::millis;
use crate::build::run::{BuildRun, BuiltDisk};
use crate::disk::{self, Assembled, GuestAgent};
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
    let assembled = assemble_chain(run, &chain).await?;
    run.disk = Some(BuiltDisk {
        assembled,
        chain,
        guest_agent,
        from_vm: false,
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

/// Assembles the raw disk of `chain` in the run folder and records it.
pub(crate) async fn assemble_chain(
    run: &mut BuildRun<'_>,
    chain: &[StoredLayer],
) -> Result<Assembled, StageFailure> {
    run.progress("assembling the disk image (GPT, GRUB, ext4 made with mkfs.ext4 -d)");
    let t0 = Instant::now();
    let (layers, work, size) = (
        chain.to_vec(),
        run.run_dir.join("disk"),
        run.recipe.disk.size_bytes,
    );
    let a = tokio::task::spawn_blocking(move || disk::assemble(&layers, &work, size, 0))
        .await
        .map_err(|e| StageFailure::new(State::Building, e.to_string()))?
        .map_err(|e| StageFailure::new(State::Building, format!("the disk image: {e}")))?;
    run.rec.disk = Some(DiskRecord {
        kernel: a.kernel.clone(),
        size: a.size,
        filesystem_uuid: a.ids.filesystem.clone(),
        guest_agent: None,
        assemble_ms: millis(t0),
    });
    run.progress(format!(
        "disk image assembled: {} MiB, kernel {} ({:.1} s)",
        a.size >> 20,
        a.kernel,
        t0.elapsed().as_secs_f64()
    ));
    Ok(a)
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
        let assembled = assemble_chain(run, &chain).await?;
        run.disk = Some(BuiltDisk {
            assembled,
            chain,
            guest_agent: GuestAgent::RemovedAfterTests,
            from_vm: false,
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
