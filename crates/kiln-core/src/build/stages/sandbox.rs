//! The sandbox builder: each component's build and validate phases run in a fresh sandbox over
//! the layers so far, and its writable layer becomes one layer of the image, found again in the
//! step cache when nothing that decides it changed.

use std::path::Path;
use std::time::Instant;

use crate::build::components::{file_safe, Component};
use crate::build::event::BuildEvent;
use crate::build::failure::StageFailure;
use crate::build::instance::{self, Drive, SandboxJob, SandboxResult};
use crate::build::run::BuildRun;
use crate::build::{millis, timings};
use crate::cache::{StepCache, StepKey, StepKind};
use crate::parent::compression_of;
use crate::record::{CacheUse, State};
use crate::shared_cache::SharedCache;
use crate::store::{LayerStore, StoredLayer};
use kiln_instance::BuilderKind;

/// Builds every component into a layer on `run.chain`.
pub(crate) async fn build(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    let components = run.components;
    for (i, c) in components.iter().enumerate() {
        component(run, i, c).await?;
    }
    Ok(())
}

/// The step-cache key of a component of the recipe on the chain so far.
fn key_of(run: &BuildRun<'_>, c: &Component) -> String {
    StepKey {
        kind: StepKind::Component,
        parents: run.chain.iter().map(|l| l.info.diff_id.clone()).collect(),
        input: c.sha256.clone(),
        parameters: c.parameters.clone(),
        builder: Some(run.recipe.infrastructure.builder),
        working_directory: run.recipe.working_directory.clone(),
        compression: run.recipe.compression,
    }
    .digest()
}

/// The shared step cache of the build's account, when kiln's configuration names one.
fn shared_cache(run: &BuildRun<'_>) -> Option<SharedCache> {
    let region = run.options.shared_cache.as_deref()?;
    match SharedCache::new(
        run.records.store().clone(),
        region,
        &run.options.regions,
        &run.options.access(),
        &run.rec.account,
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            run.event(BuildEvent::Warning {
                message: format!("the shared step cache is not used: {e}"),
            });
            None
        }
    }
}

/// A step's layer that another host built, fetched from the shared step cache and recorded in
/// this host's own. A cache that cannot be read is a warning: the step is built instead.
async fn from_shared_cache(
    run: &BuildRun<'_>,
    key: &str,
    cache: &StepCache,
) -> Option<crate::store::StoredLayer> {
    let shared = shared_cache(run)?;
    let layers = crate::store::LayerStore::new(run.home.clone());
    match shared.fetch(key, &layers, &run.run_dir).await {
        Ok(Some(layer)) => {
            run.progress(format!(
                "from the shared step cache ({}): {}",
                shared.location(),
                layer.info.diff_id
            ));
            if let Err(e) = cache.put(key, &layer, &layer.info.description) {
                tracing::warn!("cannot record the layer in the step cache: {e}");
            }
            Some(layer)
        }
        Ok(None) => None,
        Err(e) => {
            run.event(BuildEvent::Warning {
                message: format!(
                    "the shared step cache could not give step {key}: {e}; building it"
                ),
            });
            None
        }
    }
}

/// Publishes a step's layer to the shared step cache; a failure is a warning (the build goes
/// on, other hosts build the step themselves).
async fn to_shared_cache(
    run: &BuildRun<'_>,
    key: &str,
    layer: &crate::store::StoredLayer,
    description: &str,
) {
    let Some(shared) = shared_cache(run) else {
        return;
    };
    match shared.publish(key, layer, description).await {
        Ok(()) => run.progress(format!(
            "published to the shared step cache ({})",
            shared.location()
        )),
        Err(e) => run.event(BuildEvent::Warning {
            message: format!("the step could not be published to the shared step cache: {e}"),
        }),
    }
}

async fn component(run: &mut BuildRun<'_>, i: usize, c: &Component) -> Result<(), StageFailure> {
    let total = run.components.len();
    let key = key_of(run, c);
    run.rec.components[i].cache_key = key.clone();
    if !c.has_layer {
        run.rec.components[i].cache = CacheUse::NoLayer;
        finished(run, i);
        return Ok(());
    }
    let cache = StepCache::new(run.home.clone());
    if c.cache && !run.options.no_cache {
        let cached = match cache.get(&key) {
            Some(layer) => Some(layer),
            None => from_shared_cache(run, &key, &cache).await,
        };
        if let Some(layer) = cached {
            started(run, i, c, total, true);
            let cr = &mut run.rec.components[i];
            cr.cache = CacheUse::Hit;
            cr.layer = Some(layer.info.diff_id.clone());
            cr.layer_size = layer.info.size;
            run.chain.push(layer);
            finished(run, i);
            return Ok(());
        }
    }
    started(run, i, c, total, false);
    let t0 = Instant::now();
    let log_dir = run
        .rec
        .logs
        .join(format!("build-{:02}-{}", i + 1, file_safe(&c.name)));
    let job = SandboxJob {
        id: format!("{}-{i}", run.short_id()),
        chain: &run.chain,
        dir: run.run_dir.join(format!("c{i}")),
        drive: Drive {
            components: &[c],
            phases: &["build", "validate"],
            log_dir: log_dir.clone(),
            env: run.image_env("BUILDING"),
            stage: State::Building,
        },
        keep: run.keeps_failed_instances(),
    };
    let done = instance::in_sandbox(run, job)
        .await
        .map_err(|f| f.of_component(&c.name))?;
    run.rec.components[i].steps = timings(&done.driven.report);
    run.rec.components[i].duration_ms = millis(t0);
    let layer = captured(run, c, &done, &log_dir).await?;
    if c.cache {
        let description = format!("component {}", c.name);
        if let Err(e) = cache.put(&key, &layer, &description) {
            tracing::warn!("cannot record the layer in the step cache: {e}");
        }
        to_shared_cache(run, &key, &layer, &description).await;
    }
    let cr = &mut run.rec.components[i];
    cr.cache = if !c.cache {
        CacheUse::Disabled
    } else if run.options.no_cache {
        CacheUse::Bypassed
    } else {
        CacheUse::Miss
    };
    cr.layer = Some(layer.info.diff_id.clone());
    cr.layer_size = layer.info.size;
    run.chain.push(layer);
    run.save().await;
    finished(run, i);
    Ok(())
}

fn started(run: &BuildRun<'_>, index: usize, c: &Component, total: usize, cached: bool) {
    run.event(BuildEvent::ComponentStarted {
        index,
        total,
        name: c.name.clone(),
        cached,
    });
}

fn finished(run: &BuildRun<'_>, index: usize) {
    run.event(BuildEvent::ComponentFinished {
        index,
        record: run.rec.components[index].clone(),
    });
}

/// A layer made by one of kiln's own components (the guest agent) over `chain`, cached like any
/// other; true when it came from the cache.
pub(crate) async fn internal_layer(
    run: &BuildRun<'_>,
    c: &Component,
    chain: &[StoredLayer],
) -> Result<(StoredLayer, bool), StageFailure> {
    let cache = StepCache::new(run.home.clone());
    let key = StepKey {
        kind: StepKind::Internal,
        parents: chain.iter().map(|l| l.info.diff_id.clone()).collect(),
        input: c.sha256.clone(),
        parameters: Vec::new(),
        builder: Some(BuilderKind::Sandbox),
        working_directory: "/".into(),
        compression: run.recipe.compression,
    }
    .digest();
    if !run.options.no_cache {
        if let Some(l) = cache.get(&key) {
            return Ok((l, true));
        }
    }
    let log_dir = run.rec.logs.join(format!("build-{}", file_safe(&c.name)));
    let job = SandboxJob {
        id: format!("{}-{}", run.short_id(), file_safe(&c.name)),
        chain,
        dir: run.run_dir.join(file_safe(&c.name)),
        drive: Drive {
            components: &[c],
            phases: &["build"],
            log_dir: log_dir.clone(),
            env: Vec::new(),
            stage: State::Building,
        },
        keep: false,
    };
    let done = instance::in_sandbox(run, job)
        .await
        .map_err(|f| f.of_component(&c.name))?;
    let layer = captured(run, c, &done, &log_dir).await?;
    if let Err(e) = cache.put(&key, &layer, &format!("kiln {}", c.name)) {
        tracing::warn!("cannot record the layer in the step cache: {e}");
    }
    Ok((layer, false))
}

/// The layer of a component's sandbox run, or the failure of its first failed step.
async fn captured(
    run: &BuildRun<'_>,
    c: &Component,
    done: &SandboxResult,
    log_dir: &Path,
) -> Result<StoredLayer, StageFailure> {
    if !done.driven.report.status.ok() {
        return Err(StageFailure::from_run(
            State::Building,
            Some(c.name.clone()),
            &done.driven,
            log_dir,
        ));
    }
    run.progress(format!("capturing the layer of {}", c.name));
    capture(run, &done.upper, &done.created, &c.name)
        .await
        .map_err(|e| {
            StageFailure::new(State::Building, format!("capturing the layer: {e}"))
                .of_component(&c.name)
        })
}

/// Turns a builder's writable layer into a stored layer (moved, not copied).
async fn capture(
    run: &BuildRun<'_>,
    upper: &Path,
    created: &[String],
    name: &str,
) -> Result<StoredLayer, String> {
    // Mount points kiln had to create are not the component's work: drop them if still empty.
    for rel in created.iter().rev() {
        let p = upper.join(rel);
        let _ = std::fs::remove_dir(&p);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = std::fs::remove_file(&p);
        }
    }
    let store = LayerStore::new(run.home.clone());
    let upper = upper.to_path_buf();
    let compression = compression_of(run.recipe.compression);
    let description = format!("component {name}");
    let epoch = run.epoch;
    tokio::task::spawn_blocking(move || {
        let blob = kiln_image::write_layer(&upper, &[], epoch, compression, &store.blobs_dir())
            .map_err(|e| e.to_string())?;
        store
            .adopt(&upper, &blob, &description)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
