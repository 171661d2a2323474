//! First stage: the parent image, as layers in the store (`parent.log` keeps what it said).

use std::io::Write;
use std::sync::Mutex;

use crate::build::event::BuildEvent;
use crate::build::failure::StageFailure;
use crate::build::run::BuildRun;
use crate::parent::{self, ParentContext};
use crate::record::State;

/// Resolves the parent into `run.chain`; a disk that could not boot from it fails here, before
/// any component runs.
pub(crate) async fn resolve(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    run.enter(State::Building).await;
    let log = Mutex::new(std::fs::File::create(run.rec.logs.join("parent.log")).ok());
    let observer = run.observer.clone();
    let progress = |line: &str| {
        observer.event(&BuildEvent::Progress {
            message: line.to_string(),
        });
        if let Ok(mut f) = log.lock() {
            if let Some(f) = f.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    };
    let cx = ParentContext {
        home: run.home,
        records: run.records,
        account: &run.rec.account,
        epoch: run.epoch,
        refresh: run.options.refresh_parent,
        registries: &run.options.registries,
        progress: &progress,
    };
    let parent = parent::resolve(&cx, run.recipe)
        .await
        .map_err(|e| StageFailure::new(State::Building, e.to_string()))?;
    run.rec.parent = Some(parent.record.clone());
    run.chain.extend(parent.layers.iter().cloned());
    run.parent = Some(parent);
    run.save().await;
    if run.recipe.wants_disk() {
        crate::disk::bootable(&run.chain).map_err(|e| {
            StageFailure::new(
                State::Building,
                format!("{} (parent {})", e, run.recipe.parent),
            )
        })?;
    }
    Ok(())
}
