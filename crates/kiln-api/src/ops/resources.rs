//! Components, recipes, configurations and pipelines: create, update, get, list, delete, all
//! through kiln-core's `Resources` (the same checks, versions and dependencies as the CLI).

use kiln_core::principal::Principal;
use kiln_core::request::{Document, Operation, Request};
use kiln_core::resources::{ListOptions, Resource};
use kiln_store::Kind;
use serde_json::{json, Value};

use super::{paging, required, text, view, Op};
use crate::error::ApiError;
use crate::App;

/// The kind an operation is about, and the member naming one resource in its request and
/// response.
fn kind_of(op: Op) -> (Kind, &'static str) {
    use Op::*;
    match op {
        CreateComponent | GetComponent | DeleteComponent | ListComponents => {
            (Kind::Component, "componentBuildVersionArn")
        }
        ListComponentBuildVersions => (Kind::Component, "componentVersionArn"),
        CreateImageRecipe | GetImageRecipe | DeleteImageRecipe | ListImageRecipes => {
            (Kind::ImageRecipe, "imageRecipeArn")
        }
        CreateContainerRecipe
        | GetContainerRecipe
        | DeleteContainerRecipe
        | ListContainerRecipes => (Kind::ContainerRecipe, "containerRecipeArn"),
        CreateInfrastructureConfiguration
        | UpdateInfrastructureConfiguration
        | GetInfrastructureConfiguration
        | DeleteInfrastructureConfiguration
        | ListInfrastructureConfigurations => (
            Kind::InfrastructureConfiguration,
            "infrastructureConfigurationArn",
        ),
        CreateDistributionConfiguration
        | UpdateDistributionConfiguration
        | GetDistributionConfiguration
        | DeleteDistributionConfiguration
        | ListDistributionConfigurations => (
            Kind::DistributionConfiguration,
            "distributionConfigurationArn",
        ),
        CreateLifecyclePolicy | UpdateLifecyclePolicy | DeleteLifecyclePolicy => {
            (Kind::LifecyclePolicy, "lifecyclePolicyArn")
        }
        _ => (Kind::ImagePipeline, "imagePipelineArn"),
    }
}

/// The member a Get response holds its resource in, and a List response its items.
fn holder(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Component => ("component", "componentVersionList"),
        Kind::ImageRecipe => ("imageRecipe", "imageRecipeSummaryList"),
        Kind::ContainerRecipe => ("containerRecipe", "containerRecipeSummaryList"),
        Kind::InfrastructureConfiguration => (
            "infrastructureConfiguration",
            "infrastructureConfigurationSummaryList",
        ),
        Kind::DistributionConfiguration => (
            "distributionConfiguration",
            "distributionConfigurationSummaryList",
        ),
        _ => ("imagePipeline", "imagePipelineList"),
    }
}

/// A client token as the store keeps it: per account and operation, as Image Builder scopes
/// them.
pub fn scoped_token(principal: &Principal, op: Op, token: &str) -> String {
    format!("{}/{}/{token}", principal.account, op.name())
}

/// Create and Update operations.
pub async fn apply(
    app: &App,
    principal: &Principal,
    op: Op,
    mut input: Value,
) -> Result<Value, ApiError> {
    let operation: Operation = op
        .name()
        .parse()
        .map_err(|e: String| ApiError::bad_request(e))?;
    let token = text(&input, "clientToken").map(str::to_string);
    let dry_run = input
        .get("dryRun")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Members the model does not give the operation (a newer client's) are left out, as AWS
    // services ignore them; dryRun is the API's, not the resource's.
    let known: Vec<String> = crate::model::Model::get()
        .operation(op.name())
        .and_then(|o| o.input.clone())
        .and_then(|s| crate::model::Model::get().shape(&s))
        .map(|s| s.members.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    if let Some(o) = input.as_object_mut() {
        o.retain(|k, _| known.contains(k) && k != "dryRun");
        if let Some(t) = &token {
            o.insert("clientToken".into(), json!(scoped_token(principal, op, t)));
        }
    }
    let body = serde_json::to_string(&input).map_err(ApiError::service)?;
    let doc = Document::parse(op.name(), body, None)?;
    let request = Request::new(operation, doc);
    if dry_run {
        app.resources.check(principal, &request).await?;
        return Err(ApiError::new(
            "DryRunOperationException",
            format!(
                "{}: the request would succeed; nothing was made (dryRun)",
                op.name()
            ),
        ));
    }
    let outcome = app.resources.apply(principal, request).await?;
    let (kind, key) = kind_of(op);
    // kiln takes a recipe of the same content as the one stored, whatever its description;
    // Image Builder refuses another description for a name and version that exist.
    let wanted = text(&input, "description").unwrap_or("");
    if !outcome.created
        && matches!(kind, Kind::ImageRecipe | Kind::ContainerRecipe)
        && outcome.resource.description != wanted
    {
        return Err(ApiError::new(
            "ResourceAlreadyExistsException",
            format!(
                "{} already exists with another description: create a new version to change it",
                outcome.resource.arn
            ),
        ));
    }
    Ok(json!({"clientToken": token, key: outcome.resource.arn}))
}

/// Get operations.
pub async fn get(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let (kind, key) = kind_of(op);
    let arn = required(&input, key)?;
    let r = exact(app, principal, kind, arn).await?;
    let mut v = view::resource(&r);
    if kind == Kind::ImagePipeline {
        runs(app, &r, &mut v).await?;
    }
    Ok(json!({ holder(kind).0: v }))
}

/// A pipeline's runs into its view.
async fn runs(app: &App, r: &Resource, v: &mut Value) -> Result<(), ApiError> {
    let status = kiln_core::scheduler::status(&app.records, r, chrono::Utc::now())
        .await
        .map_err(ApiError::service)?;
    view::pipeline_runs(v, &status);
    Ok(())
}

/// The resource an ARN names, visible to `principal`: `arn:` references only (a name is a
/// CLI convenience).
async fn exact(
    app: &App,
    principal: &Principal,
    kind: Kind,
    arn: &str,
) -> Result<Resource, ApiError> {
    if !arn.starts_with("arn:") {
        return Err(ApiError::invalid(format!(
            "`{arn}` is not an ARN (arn:kiln:imagebuilder:REGION:ACCOUNT:TYPE/NAME/...)"
        )));
    }
    Ok(app.resources.get(principal, arn, &[kind]).await?)
}

/// List operations.
pub async fn list(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let (kind, key) = kind_of(op);
    let mut opts = ListOptions::default();
    let mut owner = text(&input, "owner").unwrap_or("Self");
    // The builds of another account's component version: those it shares with the caller.
    let mut of_account = None;
    if op == Op::ListComponentBuildVersions {
        let arn = required(&input, key)?;
        let r = kiln_core::resources::Reference::parse(arn, &[kind]).map_err(ApiError::invalid)?;
        opts.name = Some(r.name);
        opts.version = r.version;
        if let Some(a) = r.account.filter(|a| *a != principal.account) {
            owner = "Shared";
            of_account = Some(a);
        }
    }
    // The caller's own resources, what other accounts share with it (`Shared`), or kiln's
    // managed components (`Amazon`).
    let mut found: Vec<Resource> = match (owner, kind) {
        ("Self", _) => {
            let mut out = Vec::new();
            for s in app.resources.list(principal, &[kind], &opts).await? {
                if let Ok(r) = app.resources.get(principal, &s.arn, &[kind]).await {
                    out.push(r);
                }
            }
            out
        }
        ("Shared", Kind::Component | Kind::ImageRecipe | Kind::ContainerRecipe) => {
            app.resources.shared(principal, kind, &opts).await?
        }
        ("Amazon", Kind::Component) => kiln_core::managed::components()
            .into_iter()
            .filter(|c| {
                opts.name
                    .as_ref()
                    .is_none_or(|n| n.eq_ignore_ascii_case(&c.name))
                    && opts
                        .version
                        .is_none_or(|v| c.version.is_some_and(|cv| v.matches(&cv)))
            })
            .collect(),
        _ => Vec::new(),
    };
    if let Some(a) = &of_account {
        found.retain(|r| kiln_core::resources::sharing::account_of(&r.arn) == Some(a.as_str()));
    }
    let mut items = Vec::new();
    for r in found {
        {
            let mut v = view::resource(&r);
            if kind == Kind::ImagePipeline {
                runs(app, &r, &mut v).await?;
            }
            if kind == Kind::Component && op == Op::ListComponents {
                v["arn"] = json!(view::version_arn(&r.arn));
            }
            if matches(&v, &input) {
                items.push(v);
            }
        }
    }
    let page = paging::page(items, |v| v["arn"].as_str().unwrap_or(""), &input)?;
    let list_key = if op == Op::ListComponentBuildVersions {
        "componentSummaryList"
    } else {
        holder(kind).1
    };
    Ok(json!({ list_key: page.items, "nextToken": page.next }))
}

/// Whether a view passes the request's `filters` (each a member name and the values it may
/// have).
pub fn matches(v: &Value, input: &Value) -> bool {
    let Some(filters) = input.get("filters").and_then(Value::as_array) else {
        return true;
    };
    filters.iter().all(|f| {
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return true;
        };
        let values: Vec<&str> = f
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let field = match name {
            "type" if v.get("containerType").is_some() => "containerType",
            other => other,
        };
        let have = match v.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            Some(other) => other.to_string(),
            None => return false,
        };
        values.iter().any(|want| *want == have)
    })
}

/// Delete operations.
pub async fn delete(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let (kind, key) = kind_of(op);
    let arn = required(&input, key)?;
    exact(app, principal, kind, arn).await?;
    let r = app.resources.delete(principal, arn, &[kind]).await?;
    Ok(json!({ key: r.arn }))
}
