//! Retiring a build: removing what its distribution wrote from every region, for good (a
//! lifecycle policy's DELETE, DeleteImage).
//!
//! Unlike [`crate::take_back`], which undoes a distribution that never finished and logs what
//! it cannot undo, retiring says exactly what it removed, what it left on purpose and what it
//! failed to remove, so that the image's record can say which artifacts are still there.

use crate::{BuildId, Output, OutputKind, RegistryAccess};

/// What retiring a build did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    /// What is gone, as `REGION: WHAT` (`local: tag 1.0.0-3`, `local: web-1.0.0-3.raw`).
    pub removed: Vec<String>,
    /// What stays on purpose, with why (a registry manifest another build's tag also names).
    pub kept: Vec<String>,
    /// The outputs that could not be removed, each with what went wrong: they are still there.
    pub failed: Vec<(Output, String)>,
}

impl Retired {
    /// Adds another target's result.
    pub fn extend(&mut self, other: Retired) {
        self.removed.extend(other.removed);
        self.kept.extend(other.kept);
        self.failed.extend(other.failed);
    }

    /// A result where every output failed for the same reason.
    pub fn all_failed(outputs: &[Output], why: &str) -> Retired {
        Retired {
            failed: outputs
                .iter()
                .map(|o| (o.clone(), why.to_string()))
                .collect(),
            ..Retired::default()
        }
    }
}

/// Removes a build's outputs (from its record) from the regions they are in, each by the
/// target that wrote it. The version's names (`VERSION`, `NAME-VERSION.EXT`) go back to build
/// `previous` when they name this build and `previous` is still there, and are removed
/// otherwise. Outputs that are already gone count as removed.
pub async fn retire(
    outputs: &[Output],
    build: &BuildId,
    previous: Option<u32>,
    registries: &RegistryAccess,
) -> Retired {
    let mut done = Retired::default();
    // One target per place: a layout's or repository's outputs (build tag, version tag) are
    // retired together.
    let mut places: Vec<(OutputKind, String, String, Vec<Output>)> = Vec::new();
    for o in outputs {
        match places
            .iter_mut()
            .find(|(k, r, p, _)| *k == o.kind && *r == o.region && *p == o.location)
        {
            Some((_, _, _, group)) => group.push(o.clone()),
            None => places.push((
                o.kind,
                o.region.clone(),
                o.location.clone(),
                vec![o.clone()],
            )),
        }
    }
    for (kind, region, location, group) in places {
        let target = match crate::target_for(&region, kind, &location, registries) {
            Ok(t) => t,
            Err(e) => {
                done.extend(Retired::all_failed(&group, &e));
                continue;
            }
        };
        done.extend(target.retire(&group, build, previous).await);
    }
    done
}
