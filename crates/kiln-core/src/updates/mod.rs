//! kiln's own rebuild conditions, beyond Image Builder's newer component and parent versions:
//! a pipeline's scheduler asks them whether a scheduled run should build, and records why it
//! did as [`Trigger`]s.
//!
//! - [`parent_moved`]: the tag the last image's parent was pulled by names another manifest
//!   now (a base image rebuilt under the same tag).
//! - [`package_updates`]: the last image's package manager has updates to offer, asked in a
//!   throwaway sandbox over the image's layers.
//!
//! Both are questions about the last image only: neither writes to its layers or its record.
//! A check that cannot tell is an [`UpdateError`], never a "no".

mod packages;
mod parent;

use serde::{Deserialize, Serialize};

use kiln_instance::ExitStatus;

pub use packages::{package_updates, parse_apt_simulation, parse_dnf_check_update, PackageManager};
pub use parent::parent_moved;

/// A parent tag that names another manifest than the one the last image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentMoved {
    /// The parent as the recipe named it (`docker://HOST/REPO:TAG`, `oci:DIR:TAG`).
    pub reference: String,
    /// The manifest digest the last image's record saved.
    pub was: String,
    /// The digest the tag names now.
    pub now: String,
}

/// A package of the image that its package manager would upgrade.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageUpdate {
    /// The package's name.
    pub name: String,
    /// The version installed in the image.
    pub from: String,
    /// The version the package manager would install.
    pub to: String,
}

/// A dependency of a pipeline's recipe with a newer version than the last image used (the
/// scheduler's check of components and parent images by version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyChange {
    /// What changed: a component's or a parent image's ARN or reference.
    pub reference: String,
    /// The version the last image was built with.
    pub was: String,
    /// The version a build would use now.
    pub now: String,
}

/// Why a build ran, as its record keeps it (`triggers`): the scheduler's conditions that held,
/// or that someone asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Trigger {
    /// Someone started it (`kiln pipeline start`, StartImagePipelineExecution).
    Manual,
    /// The pipeline's schedule came round, and its schedule builds whatever changed.
    Schedule,
    /// Components or the parent image have newer versions.
    Dependencies {
        /// What is newer.
        changes: Vec<DependencyChange>,
    },
    /// The parent's tag names another manifest (see [`parent_moved`]).
    ParentDigest {
        /// The parent as the recipe named it.
        reference: String,
        /// The digest the last image was built from.
        was: String,
        /// The digest the tag names now.
        now: String,
    },
    /// The image's package manager has updates (see [`package_updates`]).
    Packages {
        /// What it would upgrade.
        updates: Vec<PackageUpdate>,
    },
}

impl From<ParentMoved> for Trigger {
    fn from(m: ParentMoved) -> Self {
        Trigger::ParentDigest {
            reference: m.reference,
            was: m.was,
            now: m.now,
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Manual => f.write_str("started by hand"),
            Trigger::Schedule => f.write_str("the schedule"),
            Trigger::Dependencies { changes } => {
                f.write_str("newer versions: ")?;
                let list: Vec<String> = changes
                    .iter()
                    .map(|c| format!("{} {} -> {}", c.reference, c.was, c.now))
                    .collect();
                f.write_str(&list.join(", "))
            }
            Trigger::ParentDigest {
                reference,
                was,
                now,
            } => write!(f, "parent {reference} moved from {was} to {now}"),
            Trigger::Packages { updates } => {
                write!(f, "{} package update(s): ", updates.len())?;
                let list: Vec<String> = updates
                    .iter()
                    .map(|u| format!("{} {} -> {}", u.name, u.from, u.to))
                    .collect();
                f.write_str(&list.join(", "))
            }
        }
    }
}

/// Why a rebuild condition could not be checked. The scheduler must not take any of these for
/// "nothing changed".
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The parent's registry or layout could not say what its tag names.
    #[error("parent image {reference}: {why}")]
    Parent {
        /// The parent as the recipe named it.
        reference: String,
        /// What went wrong.
        why: String,
    },
    /// The last image's layers are neither in the layer store nor in a region kiln can read.
    #[error("image {image}: {why}")]
    Layers {
        /// `name/version/build`.
        image: String,
        /// What is missing.
        why: String,
    },
    /// The image has no package manager kiln knows how to ask.
    #[error("image {image} has neither apt (dpkg) nor dnf (rpm): kiln cannot check its packages for updates")]
    NoPackageManager {
        /// `name/version/build`.
        image: String,
    },
    /// The throwaway sandbox did not start, or lost its connection.
    #[error("the sandbox checking {image} for package updates: {why}")]
    Sandbox {
        /// `name/version/build`.
        image: String,
        /// What went wrong.
        why: String,
    },
    /// The package manager's check failed (no network, broken sources...).
    #[error("`{command}` failed ({status}); its last lines:\n  {}", tail.join("\n  "))]
    Check {
        /// The command line, as it ran in the sandbox.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines of its output, standard error after standard output.
        tail: Vec<String>,
    },
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_tagged_by_kind_with_camel_case_fields() {
        let t = Trigger::ParentDigest {
            reference: "docker://h/r:1".into(),
            was: "sha256:a".into(),
            now: "sha256:b".into(),
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "parentDigest", "reference": "docker://h/r:1", "was": "sha256:a", "now": "sha256:b"})
        );
        let p = Trigger::Packages {
            updates: vec![PackageUpdate {
                name: "kiln-probe".into(),
                from: "1.0".into(),
                to: "1.1".into(),
            }],
        };
        let back: Trigger = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            serde_json::to_value(Trigger::Schedule).unwrap(),
            serde_json::json!({"kind": "schedule"})
        );
        assert_eq!(p.to_string(), "1 package update(s): kiln-probe 1.0 -> 1.1");
    }
}
