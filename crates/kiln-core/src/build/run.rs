//! One build while it runs: what it was given (recipe, components, where to record, how to start
//! instances) and what its stages have made so far (parent, layers, disk, the record). Every
//! stage is a function of this context.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln_instance::Launcher;

use crate::disk::cache::DiskEntry;
use crate::disk::{Assembled, GuestAgent};
use crate::parent::Parent;
use crate::recipe::Recipe;
use crate::record::{ImageRecord, Records, State};
use crate::store::{Home, StoredLayer};

use super::components::Component;
use super::event::{BuildEvent, BuildObserver};
use super::BuildOptions;

/// The disk a build made, and what it was made of.
pub(crate) struct BuiltDisk {
    /// The raw disk in the run folder.
    pub assembled: Assembled,
    /// It, kept in the disk cache (its conversions are made and kept there).
    pub entry: DiskEntry,
    /// Its layers (the image's, plus the guest agent when kiln added it); empty when a builder
    /// VM wrote the disk itself.
    pub chain: Vec<StoredLayer>,
    /// Where its guest agent came from.
    pub guest_agent: GuestAgent,
}

/// A running build.
pub(crate) struct BuildRun<'a> {
    pub home: &'a Home,
    pub options: &'a BuildOptions,
    pub launcher: &'a dyn Launcher,
    pub recipe: &'a Recipe,
    pub components: &'a [Component],
    pub records: &'a Records,
    pub observer: Arc<dyn BuildObserver>,
    /// Scratch of this build (locked while it runs).
    pub run_dir: PathBuf,
    /// Timestamp of layer files and the image config.
    pub epoch: i64,
    /// Set once distribution begins: from then on a cancel request waits for the end.
    pub distributing: Arc<AtomicBool>,
    /// The record, as the stages fill it.
    pub rec: ImageRecord,
    /// The parent, once resolved.
    pub parent: Option<Parent>,
    /// The image's layers so far, bottom first.
    pub chain: Vec<StoredLayer>,
    /// The disk, once made.
    pub disk: Option<BuiltDisk>,
}

impl BuildRun<'_> {
    /// Saves the record, warning when the store cannot take it (the build goes on; the final
    /// record is saved with an error).
    pub async fn save(&self) {
        if let Err(e) = self.records.save(&self.rec).await {
            tracing::warn!("cannot save the build record: {e}");
        }
    }

    /// Moves the record to a stage and says so.
    pub async fn enter(&mut self, state: State) {
        self.rec.set_state(state, None);
        self.save().await;
        self.event(BuildEvent::Stage { state });
    }

    /// Reports an event.
    pub fn event(&self, e: BuildEvent) {
        self.observer.event(&e);
    }

    /// Reports a line about what is happening.
    pub fn progress(&self, message: impl Into<String>) {
        self.event(BuildEvent::Progress {
            message: message.into(),
        });
    }

    /// Whether a failed instance is kept for debugging (`terminateInstanceOnFailure: false`).
    pub fn keeps_failed_instances(&self) -> bool {
        !self.recipe.infrastructure.terminate_instance_on_failure
    }

    /// A short id for this build's instances: the end of the run folder's name.
    pub fn short_id(&self) -> String {
        let name = self
            .run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let chars: Vec<char> = name.chars().collect();
        if chars.is_empty() {
            return "build".into();
        }
        chars[chars.len().saturating_sub(8)..].iter().collect()
    }

    /// Environment variables Image Builder gives components, with kiln's values.
    pub fn image_env(&self, phase: &str) -> Vec<(String, String)> {
        let rec = &self.rec;
        vec![
            ("IMAGE_BUILD_VERSION_ARN".into(), rec.arn.clone()),
            (
                "IMAGE_PIPELINE_ARN".into(),
                rec.pipeline.clone().unwrap_or_default(),
            ),
            ("IMAGE_PHASE".into(), phase.into()),
            ("IMAGE_VERSION".into(), rec.version.to_string()),
            ("IMAGE_BUILD_VERSION".into(), rec.build.to_string()),
        ]
    }
}
