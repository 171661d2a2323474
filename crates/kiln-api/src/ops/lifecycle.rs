//! Lifecycle policies and their executions. Policies are resources (created, updated and
//! deleted through kiln-core's `Resources` like the others, in `resources`); this module
//! answers Get and List with their shapes, and the executions' operations. Executions run to
//! completion when they start, so there is never one to cancel.

use chrono::{DateTime, Utc};
use kiln_core::lifecycle::{Execution, ExecutionResource, Executions};
use kiln_core::principal::Principal;
use kiln_core::resources::{ListOptions, Resource};
use kiln_store::Kind;
use serde_json::{json, Value};

use super::resources::matches;
use super::{paging, required, view, Op};
use crate::error::ApiError;
use crate::App;

/// Timestamps of the lifecycle shapes (`DateTimeTimestamp`): epoch seconds, as REST-JSON
/// services send them.
fn epoch(t: DateTime<Utc>) -> Value {
    json!(t.timestamp_millis() as f64 / 1000.0)
}

fn executions(app: &App) -> Executions {
    Executions::new(app.resources.store().clone())
}

/// A policy as `LifecyclePolicy` (and `LifecyclePolicySummary`, which has fewer members).
async fn policy_view(app: &App, principal: &Principal, r: &Resource) -> Result<Value, ApiError> {
    let mut v = view::resource(r);
    v["dateCreated"] = epoch(r.date_created);
    if let Some(u) = r.date_updated {
        v["dateUpdated"] = epoch(u);
    }
    if let Some(s) = r.status {
        v["status"] = json!(s.as_str());
    }
    if let Some(t) = executions(app).last_run(principal, &r.arn).await? {
        v["dateLastRun"] = epoch(t);
    }
    Ok(v)
}

/// GetLifecyclePolicy.
pub async fn get(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let arn = required(&input, "lifecyclePolicyArn")?;
    if !arn.starts_with("arn:") {
        return Err(ApiError::invalid(format!(
            "lifecyclePolicyArn: `{arn}` is not an ARN (arn:kiln:imagebuilder:REGION:ACCOUNT:lifecycle-policy/NAME)"
        )));
    }
    let r = app
        .resources
        .get(principal, arn, &[Kind::LifecyclePolicy])
        .await?;
    Ok(json!({"lifecyclePolicy": policy_view(app, principal, &r).await?}))
}

/// ListLifecyclePolicies.
pub async fn list(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let mut items = Vec::new();
    let all = app
        .resources
        .list(principal, &[Kind::LifecyclePolicy], &ListOptions::default())
        .await?;
    for s in all {
        let Ok(r) = app
            .resources
            .get(principal, &s.arn, &[Kind::LifecyclePolicy])
            .await
        else {
            continue;
        };
        let v = policy_view(app, principal, &r).await?;
        if matches(&v, &input) {
            items.push(v);
        }
    }
    let page = paging::page(items, |v| v["arn"].as_str().unwrap_or(""), &input)?;
    Ok(json!({"lifecyclePolicySummaryList": page.items, "nextToken": page.next}))
}

fn execution_view(e: &Execution) -> Value {
    let mut state = json!({"status": e.status.as_str()});
    if let Some(r) = &e.reason {
        state["reason"] = json!(r);
    }
    json!({
        "lifecycleExecutionId": e.id,
        "lifecyclePolicyArn": e.policy_arn,
        "resourcesImpactedSummary": {"hasImpactedResources": e.has_impacted_resources()},
        "state": state,
        "startTime": epoch(e.start_time),
        "endTime": epoch(e.end_time),
    })
}

fn resource_view(e: &Execution, r: &ExecutionResource) -> Value {
    let mut state = json!({"status": r.status.as_str()});
    if let Some(reason) = &r.reason {
        state["reason"] = json!(reason.chars().take(1024).collect::<String>());
    }
    json!({
        "accountId": e.account,
        "resourceId": r.image_arn,
        "state": state,
        "action": {"name": r.action.as_str(), "reason": r.action_reason},
        "region": r.regions.join(","),
        "imageUris": r.image_uris,
        "startTime": epoch(r.start_time),
        "endTime": epoch(r.end_time),
    })
}

async fn execution(app: &App, principal: &Principal, id: &str) -> Result<Execution, ApiError> {
    executions(app)
        .get(principal, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no lifecycle execution has the id `{id}`")))
}

/// ListLifecycleExecutions (of a policy, or that acted on an image), GetLifecycleExecution,
/// ListLifecycleExecutionResources and CancelLifecycleExecution.
pub async fn executions_op(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    match op {
        Op::ListLifecycleExecutions => {
            let arn = required(&input, "resourceArn")?;
            let found = if arn.contains(":lifecycle-policy/") {
                app.resources
                    .get(principal, arn, &[Kind::LifecyclePolicy])
                    .await?;
                executions(app).of_policy(principal, arn).await?
            } else if arn.contains(":image/") {
                executions(app).of_image(principal, arn).await?
            } else {
                return Err(ApiError::invalid(format!(
                    "resourceArn: `{arn}` is neither a lifecycle policy's nor an image's ARN"
                )));
            };
            let items: Vec<Value> = found.iter().map(execution_view).collect();
            let page = paging::page(
                items,
                |v| v["lifecycleExecutionId"].as_str().unwrap_or(""),
                &input,
            )?;
            Ok(json!({"lifecycleExecutions": page.items, "nextToken": page.next}))
        }
        Op::GetLifecycleExecution => {
            let e = execution(app, principal, required(&input, "lifecycleExecutionId")?).await?;
            Ok(json!({"lifecycleExecution": execution_view(&e)}))
        }
        Op::ListLifecycleExecutionResources => {
            let e = execution(app, principal, required(&input, "lifecycleExecutionId")?).await?;
            let items: Vec<Value> = e.resources.iter().map(|r| resource_view(&e, r)).collect();
            let page = paging::page(items, |v| v["resourceId"].as_str().unwrap_or(""), &input)?;
            Ok(json!({
                "lifecycleExecutionId": e.id,
                "lifecycleExecutionState": execution_view(&e)["state"],
                "resources": page.items,
                "nextToken": page.next,
            }))
        }
        _ => {
            let e = execution(app, principal, required(&input, "lifecycleExecutionId")?).await?;
            Err(ApiError::new(
                "ResourceInUseException",
                format!(
                    "lifecycle execution {} has ended ({}): executions run to completion when they start, so there is nothing to cancel",
                    e.id,
                    e.status.as_str()
                ),
            ))
        }
    }
}
