//! Lifecycle policies: rules that deprecate, disable or delete an account's images by age or
//! by count, run on a schedule ([`apply_all`]) or on demand ([`Lifecycle::run`], with a dry
//! run that changes nothing). Every run is an [`Execution`] kept in the store with what it did
//! to each image.
//!
//! DELETE removes an image's artifacts from every region ([`crate::retire::delete_image`]);
//! DELETE and DISABLE never touch an image a recipe still names as its parent or a running
//! build started from: it is skipped, and the execution says why.

mod execution;
mod policy;
mod select;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use kiln_store::{Filter, Kind};

pub use execution::{Execution, ExecutionResource, ExecutionStatus, Executions, ResourceStatus};
pub use policy::{
    Action, ActionType, AmiExclusion, ExclusionRules, FilterType, IncludeResources, LastLaunched,
    Policy, RecipeSelection, ResourceType, Rule, RuleFilter, Selection, TimeUnit,
};

use crate::principal::Principal;
use crate::record::{ImageRecord, OutputKind, Records, State, StateChange};
use crate::resources::{PipelineStatus, Resource, ResourceError, Resources};
use crate::retire::{delete_image, users_of, Scope};
use crate::state::Store;

/// Runs lifecycle policies over a store's images.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    resources: Resources,
    records: Records,
    executions: Executions,
    registries: kiln_dist::RegistryAccess,
}

impl Lifecycle {
    /// The lifecycle of a store's images; `registries` reaches the registries images were
    /// pushed to.
    pub fn new(store: Store, registries: kiln_dist::RegistryAccess) -> Self {
        Lifecycle {
            resources: Resources::new(store.clone()),
            records: Records::new(store.clone()),
            executions: Executions::new(store),
            registries,
        }
    }

    /// The executions kept in the store.
    pub fn executions(&self) -> &Executions {
        &self.executions
    }

    /// The policy a reference (ARN or name) names in `principal`'s account.
    pub async fn policy(
        &self,
        principal: &Principal,
        reference: &str,
    ) -> Result<Policy, ResourceError> {
        let r = self
            .resources
            .get(principal, reference, &[Kind::LifecyclePolicy])
            .await?;
        Policy::from_resource(&r)
    }

    /// Runs a policy now, whatever its status: chooses an action for each image its rules
    /// pick, takes it (unless `dry_run`) and records the execution (unless `dry_run`: a dry
    /// run changes nothing, and its execution says what would have been done).
    pub async fn run(
        &self,
        policy: &Policy,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Execution, ResourceError> {
        let images = self.images(&policy.account).await?;
        let mut e = Execution {
            id: Execution::new_id(),
            policy_arn: policy.arn.clone(),
            account: policy.account.clone(),
            dry_run,
            status: ExecutionStatus::Success,
            reason: None,
            start_time: now,
            end_time: now,
            resources: Vec::new(),
        };
        for c in select::choose(policy, images, now) {
            let rule = policy.rules.get(c.rule);
            let r = self.act(&e.id, c, rule, now, dry_run).await?;
            e.resources.push(r);
        }
        let failed = e
            .resources
            .iter()
            .filter(|r| r.status == ResourceStatus::Failed)
            .count();
        if failed > 0 {
            e.status = ExecutionStatus::Failed;
            e.reason = Some(format!(
                "{failed} of {} actions failed: ListLifecycleExecutionResources (kiln lifecycle executions) says which",
                e.resources.len()
            ));
        }
        if !dry_run {
            self.executions.save(&e).await?;
        }
        Ok(e)
    }

    /// The account's builds whose artifacts are in their regions.
    async fn images(&self, account: &str) -> Result<Vec<ImageRecord>, ResourceError> {
        let f = Filter {
            kind: Some(Kind::Image),
            arn_prefix: Some(Principal::new(account, "").arn_prefix()),
            states: [State::Available, State::Deprecated, State::Disabled]
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            ..Filter::default()
        };
        let mut out = Vec::new();
        for s in self.records.summaries(&f).await? {
            if let Some(r) = self.records.get(&s.arn).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Takes (or, in a dry run, checks) one chosen action.
    async fn act(
        &self,
        execution: &str,
        c: select::Chosen,
        rule: Option<&Rule>,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<ExecutionResource, ResourceError> {
        let mut regions: Vec<String> = c.image.outputs.iter().map(|o| o.region.clone()).collect();
        regions.dedup();
        let image_uris = c
            .image
            .outputs
            .iter()
            .filter(|o| o.kind.is_image())
            .map(|o| match o.kind {
                OutputKind::OciLayout => format!("oci:{}:{}", o.location, o.tag),
                _ => format!("{}:{}", o.location, o.tag),
            })
            .collect();
        let mut r = ExecutionResource {
            image_arn: c.image.arn.clone(),
            action: c.action,
            action_reason: c.reason.clone(),
            status: ResourceStatus::Success,
            reason: None,
            regions,
            image_uris,
            removed: Vec::new(),
            start_time: now,
            end_time: now,
        };
        if c.action != ActionType::Deprecate {
            let users = users_of(&self.records, &c.image).await?;
            if !users.is_empty() {
                r.status = ResourceStatus::Skipped;
                r.reason = Some(format!("in use: {}", users.join("; ")));
                return Ok(r);
            }
        }
        if dry_run {
            return Ok(r);
        }
        let mut rec = c.image;
        match c.action {
            ActionType::Deprecate | ActionType::Disable => {
                let state = if c.action == ActionType::Deprecate {
                    State::Deprecated
                } else {
                    State::Disabled
                };
                rec.state = state;
                rec.history.push(StateChange {
                    state,
                    at: now,
                    reason: Some(c.reason.clone()),
                    execution: Some(execution.to_string()),
                });
                let outbox = self
                    .topics(&rec)
                    .await
                    .iter()
                    .map(|t| notice(t, &rec, c.action, &c.reason, execution, now))
                    .collect();
                self.records.save_with(&rec, outbox).await?;
            }
            ActionType::Delete => {
                let include = rule.and_then(|r| r.action.include_resources);
                let scope = Scope {
                    disks: include.and_then(|i| i.amis) != Some(false),
                    containers: include.and_then(|i| i.containers) != Some(false),
                };
                let topics = self.topics(&rec).await;
                let (reason, id) = (c.reason.clone(), execution.to_string());
                let tell = move |r: &ImageRecord| {
                    if r.state != State::Deleted {
                        return Vec::new();
                    }
                    topics
                        .iter()
                        .map(|t| notice(t, r, ActionType::Delete, &reason, &id, now))
                        .collect()
                };
                let d = delete_image(
                    &self.records,
                    rec,
                    &self.registries,
                    scope,
                    Some(execution),
                    now,
                    Some(&tell),
                )
                .await?;
                r.removed = d.removed.clone();
                if !d.complete() {
                    r.status = ResourceStatus::Failed;
                    r.reason = Some(d.failed.join("; "));
                }
            }
        }
        Ok(r)
    }
}

impl Lifecycle {
    /// The topics of the infrastructure configuration an image was built with.
    async fn topics(&self, rec: &ImageRecord) -> Vec<String> {
        let principal = Principal::new(rec.account.clone(), "lifecycle");
        crate::notify::topics_named(self.resources.store(), &principal, &rec.configurations).await
    }
}

/// The message telling a topic what a lifecycle execution did to an image.
fn notice(
    topic: &str,
    rec: &ImageRecord,
    action: ActionType,
    reason: &str,
    execution: &str,
    now: DateTime<Utc>,
) -> kiln_store::Message {
    let data = serde_json::json!({
        "imageBuildVersionArn": rec.arn,
        "action": action.as_str(),
        "state": rec.state.as_str(),
        "reason": reason,
        "lifecycleExecutionId": execution,
    });
    crate::notify::message(
        topic,
        crate::notify::Event::LifecycleAction,
        &format!("{}@{execution}", rec.arn),
        &data,
        now.timestamp_millis(),
    )
}

/// Runs every ENABLED lifecycle policy of every account once, as the server's daily schedule
/// does; returns each policy's ARN with its execution, or why it could not run (the others
/// run anyway).
pub async fn apply_all(
    store: &Store,
    registries: &kiln_dist::RegistryAccess,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Result<Execution, ResourceError>)>, ResourceError> {
    let lifecycle = Lifecycle::new(store.clone(), registries.clone());
    let f = Filter {
        kind: Some(Kind::LifecyclePolicy),
        states: vec![PipelineStatus::Enabled.as_str().to_string()],
        ..Filter::default()
    };
    let mut out = Vec::new();
    for row in store.db().list(&f).await? {
        let Some(row) = store.db().get(&row.arn).await? else {
            continue;
        };
        let result = match store.decode::<Resource>(&row.body, &format!("the resource {}", row.arn))
        {
            Ok(r) => match Policy::from_resource(&r) {
                Ok(p) => lifecycle.run(&p, now, false).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        out.push((row.arn, result));
    }
    Ok(out)
}
