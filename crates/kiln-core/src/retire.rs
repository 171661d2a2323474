//! Deleting an image for good: its artifacts leave every region it was distributed to, and
//! its record says DELETED (or, when an artifact could not be removed, which ones are left).
//! Lifecycle policies' DELETE and the API's DeleteImage both come here; neither deletes an
//! image that a recipe names as its parent or that a running build started from.

use chrono::{DateTime, Utc};
use kiln_store::Filter;

use crate::record::{ImageQuery, ImageRecord, OutputRecord, Records, State, StateChange};
use crate::store::StoreError;

/// Which of an image's artifacts a deletion removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Disk files.
    pub disks: bool,
    /// Container images (layout tags, registry manifests).
    pub containers: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            disks: true,
            containers: true,
        }
    }
}

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The record as saved: DELETED, or its old state with the artifacts still there.
    pub record: ImageRecord,
    /// What is gone, as `REGION: WHAT`.
    pub removed: Vec<String>,
    /// What stays on purpose (outside the scope, or shared with a kept build), with why.
    pub kept: Vec<String>,
    /// What could not be removed, with why: the record still lists these outputs.
    pub failed: Vec<String>,
}

impl Deletion {
    /// True when every artifact in scope is gone.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Who still needs an image: stored resources that name it (an image recipe's `parentImage`,
/// by its exact ARN, or by a version or wildcard that resolves to it now), and running builds
/// that started from it. Each as a sentence naming the user.
pub async fn users_of(records: &Records, rec: &ImageRecord) -> Result<Vec<String>, StoreError> {
    let prefix = format!(
        "arn:kiln:imagebuilder:{}:{}:image/{}/",
        crate::principal::LOCAL_REGION,
        rec.account,
        rec.name.to_ascii_lowercase()
    );
    let mut users = Vec::new();
    for (from, to) in records.store().db().referrers(&prefix).await? {
        let Ok(q) = to.parse::<ImageQuery>() else {
            continue;
        };
        let names_it = match (q.version, q.build) {
            (Some(v), Some(b)) => v.matches(&rec.version) && b == rec.build,
            (Some(v), None) if v.matches(&rec.version) => records
                .newest_available(&q)
                .await?
                .is_some_and(|n| n.arn == rec.arn),
            _ => false,
        };
        if names_it {
            users.push(format!("{from} names it ({to})"));
        }
    }
    let running = Filter {
        arn_prefix: Some(format!(
            "arn:kiln:imagebuilder:{}:{}:",
            crate::principal::LOCAL_REGION,
            rec.account
        )),
        states: State::RUNNING
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        ..Filter::default()
    };
    for row in records.summaries(&running).await? {
        let Some(build) = records.get(&row.arn).await? else {
            continue;
        };
        if build
            .parent
            .as_ref()
            .is_some_and(|p| p.resolved == rec.build_version())
        {
            users.push(format!(
                "build {} ({}) started from it",
                build.arn, build.state
            ));
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// Notifications of a record as it is about to be saved.
pub type Tell = dyn Fn(&ImageRecord) -> Vec<kiln_store::Message> + Send + Sync;

/// Removes an image's artifacts (those in `scope`) from every region its record lists, and
/// saves the record: DELETED when nothing in scope is left, else in its old state with the
/// outputs that are still there and a reason naming them. The version's names (`VERSION`,
/// `NAME-VERSION.EXT`) go back to the newest other build of the version whose artifacts are
/// still there, or go. `execution` names the lifecycle execution doing it, if one is.
///
/// It does not ask [`users_of`]: the caller decides what to do about users first. `tell`
/// gives the notifications of the record as saved, stored in the same write.
pub async fn delete_image(
    records: &Records,
    mut rec: ImageRecord,
    registries: &kiln_dist::RegistryAccess,
    scope: Scope,
    execution: Option<&str>,
    now: DateTime<Utc>,
    tell: Option<&Tell>,
) -> Result<Deletion, StoreError> {
    let (in_scope, out_of_scope): (Vec<OutputRecord>, Vec<OutputRecord>) =
        rec.outputs.iter().cloned().partition(|o| {
            if o.kind.is_image() {
                scope.containers
            } else {
                scope.disks
            }
        });
    let previous = records.previous_available(&rec).await;
    let retired = kiln_dist::retire(&in_scope, &rec.build_id(), previous, registries).await;
    let mut kept: Vec<String> = retired.kept.clone();
    kept.extend(out_of_scope.iter().map(|o| {
        format!(
            "{}: {} {} stays (the policy does not include it)",
            o.region, o.kind, o.location
        )
    }));
    let failed: Vec<String> = retired.failed.iter().map(|(_, why)| why.clone()).collect();
    let mut left: Vec<OutputRecord> = retired.failed.iter().map(|(o, _)| o.clone()).collect();
    left.dedup();
    left.extend(out_of_scope);
    rec.outputs = left;
    let (state, reason) = if failed.is_empty() {
        let by = execution
            .map(|e| format!("deleted by lifecycle execution {e}"))
            .unwrap_or_else(|| "deleted".to_string());
        (State::Deleted, by)
    } else {
        (
            rec.state,
            format!(
                "deletion incomplete: {}; these are still in their regions: delete the image again once fixed",
                failed.join("; ")
            ),
        )
    };
    if state == State::Deleted {
        crate::attest::remove_from_regions(&mut rec);
    }
    rec.state = state;
    rec.history.push(StateChange {
        state,
        at: now,
        reason: Some(reason),
        execution: execution.map(str::to_string),
    });
    let outbox = tell.map(|t| t(&rec)).unwrap_or_default();
    records.save_with(&rec, outbox).await?;
    Ok(Deletion {
        record: rec,
        removed: retired.removed,
        kept,
        failed,
    })
}
