//! The VM builder: the parent's disk (with the guest agent) boots in a VM, every component's
//! build and validate phases run there in order (reboots included), the VM powers off, and
//! what it wrote, flattened, is the image's disk. Its result is one filesystem, not layers:
//! there is no step cache for it.

use std::time::Instant;

use crate::build::components::file_safe;
use crate::build::event::BuildEvent;
use crate::build::failure::StageFailure;
use crate::build::instance::{self, Drive};
use crate::build::run::{BuildRun, BuiltDisk};
use crate::build::{millis, timings};
use crate::disk::cache::{self, DiskCache, Made};
use crate::disk::Assembled;
use crate::record::{CacheUse, DiskRecord, State};

use super::disk::{disk_of, with_guest_agent, VM_BUILDER_HEADROOM};

/// Builds every component in one builder VM; the disk it leaves is `run.disk`.
pub(crate) async fn build(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    let chain = run.chain.clone();
    let (base, guest_agent) = with_guest_agent(run, &chain).await?;
    run.progress("assembling the parent's disk for the builder VM");
    let t0 = Instant::now();
    let (parent_disk, _, cached) = disk_of(
        run,
        &base,
        VM_BUILDER_HEADROOM,
        run.run_dir.join("parent-disk"),
    )
    .await
    .map_err(|mut f| {
        f.reason = f.reason.replace("the disk image", "the parent's disk");
        f
    })?;
    if cached {
        run.progress("the parent's disk comes from the disk cache");
    }
    let assemble_ms = millis(t0);
    let log_dir = run.rec.logs.join("builder-vm");
    let vm_dir = run.run_dir.join("builder-vm");
    run.progress("booting the builder VM");
    let vm = instance::start_vm(
        run,
        &format!("{}-build", run.short_id()),
        &parent_disk.raw,
        &vm_dir,
        &log_dir,
        State::Building,
    )
    .await?;
    if let Some(b) = vm.boot() {
        run.progress(format!(
            "the builder VM booted in {:.1} s ({})",
            b.duration.as_secs_f64(),
            b.accel.as_str()
        ));
    }
    let outcome = components(run, &vm).await;
    instance::save_console(vm.as_ref(), &log_dir);
    let keep = outcome.is_err() && run.keeps_failed_instances();
    if !keep {
        run.progress("powering the builder VM off");
    }
    let (kept, stopped) = instance::keep_or_stop(run, &vm, keep, State::Building).await;
    if let Err(mut f) = outcome {
        f.kept = kept;
        return Err(f);
    }
    stopped.map_err(|e| {
        StageFailure::new(State::Building, format!("powering the builder VM off: {e}"))
    })?;
    // The overlay holds what the components wrote: flattened, it is the image's disk.
    let t0 = Instant::now();
    let overlay = vm.written_disk().ok_or_else(|| {
        StageFailure::new(State::Building, "the builder VM has no disk to read back")
    })?;
    let work = run.run_dir.join("disk");
    let (home, name) = (run.home.clone(), run.recipe.name.clone());
    let kept = tokio::task::spawn_blocking(move || -> Result<_, String> {
        std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
        let flat = work.join("disk.raw");
        kiln_image::disk::flatten(&overlay, &flat).map_err(|e| e.to_string())?;
        // Kept like an assembled disk (its conversions are made the same way), under its bytes:
        // it is not made of layers, so no other build will ask for it by what made it.
        let digest = cache::digest_of(&flat).map_err(|e| e.to_string())?;
        let flattened = Assembled {
            raw: flat,
            ..parent_disk
        };
        let made = Made {
            name,
            layers: Vec::new(),
            digest: digest.clone(),
            assemble_ms: 0,
        };
        let cache = DiskCache::new(&home);
        let entry = cache
            .put(&cache::written_key(&digest), made, &flattened)
            .map_err(|e| e.to_string())?;
        // The build goes on reading its own name, `disk.raw`, which the cache now shares.
        Ok((entry.assembled(flattened.raw), entry))
    })
    .await
    .map_err(|e| StageFailure::new(State::Building, e.to_string()))?
    .map_err(|e| StageFailure::new(State::Building, format!("the builder VM's disk: {e}")))?;
    let (assembled, entry) = kept;
    let _ = std::fs::remove_dir_all(run.run_dir.join("parent-disk"));
    run.rec.disk = Some(DiskRecord {
        kernel: assembled.kernel.clone(),
        size: assembled.size,
        filesystem_uuid: assembled.ids.filesystem.clone(),
        guest_agent: None,
        assemble_ms: assemble_ms + millis(t0),
        digest: Some(entry.raw.digest.clone()),
        cached: false,
    });
    run.disk = Some(BuiltDisk {
        assembled,
        entry,
        chain: Vec::new(),
        guest_agent,
    });
    Ok(())
}

/// Runs each component's build and validate phases on the builder VM, in order.
async fn components(
    run: &mut BuildRun<'_>,
    vm: &std::sync::Arc<dyn kiln_instance::Launched>,
) -> Result<(), StageFailure> {
    let components = run.components;
    let total = components.len();
    for (i, c) in components.iter().enumerate() {
        if !c.has_layer {
            run.rec.components[i].cache = CacheUse::NoLayer;
            continue;
        }
        run.event(BuildEvent::ComponentStarted {
            index: i,
            total,
            name: c.name.clone(),
            cached: false,
        });
        let t0 = Instant::now();
        let log_dir = run
            .rec
            .logs
            .join(format!("build-{:02}-{}", i + 1, file_safe(&c.name)));
        let drive = Drive {
            components: &[c],
            phases: &["build", "validate"],
            log_dir: log_dir.clone(),
            env: run.image_env("BUILDING"),
            stage: State::Building,
        };
        let driven = instance::drive(run, vm.clone(), &drive).await;
        let cr = &mut run.rec.components[i];
        cr.duration_ms = millis(t0);
        cr.cache = CacheUse::InVm;
        let driven = driven.map_err(|f| f.of_component(&c.name))?;
        cr.steps = timings(&driven.report);
        if !driven.report.status.ok() {
            return Err(StageFailure::from_run(
                State::Building,
                Some(c.name.clone()),
                &driven,
                &log_dir,
            ));
        }
        run.save().await;
        run.event(BuildEvent::ComponentFinished {
            index: i,
            record: run.rec.components[i].clone(),
        });
    }
    Ok(())
}
