//! Image pipelines: a stored recipe, infrastructure and distribution configuration put
//! together into the recipe one build runs.

use std::path::PathBuf;

use kiln_store::Kind;
use serde_json::{json, Value};

use crate::build::Origin;
use crate::principal::Principal;
use crate::recipe::{self, Recipe, RecipeSource};
use crate::resources::{ErrorCode, Invalid, Reference, Resource, ResourceError, Resources};
use crate::store::StoreError;

/// What a pipeline run builds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline.
    pub pipeline: Resource,
    /// The recipe version it resolved to.
    pub recipe: Resource,
    /// Its infrastructure configuration.
    pub infrastructure: Resource,
    /// Its distribution configuration, if it has one (else region `local`).
    pub distribution: Option<Resource>,
    /// The recipe the build runs.
    pub build_recipe: Recipe,
    /// For the image's record.
    pub origin: Origin,
}

impl Plan {
    /// Where the infrastructure configuration sends logs: a local folder.
    pub fn log_folder(&self) -> Option<PathBuf> {
        self.infrastructure
            .request
            .pointer("/logging/localPath")
            .and_then(Value::as_str)
            .map(PathBuf::from)
    }

    /// Every place the infrastructure configuration sends logs.
    pub fn logging(&self) -> Vec<kiln_dist::logs::LogDestination> {
        let mut out = Vec::new();
        if let Some(dir) = self.log_folder() {
            out.push(kiln_dist::logs::LogDestination::Folder(dir));
        }
        if let Some((bucket, prefix)) = self.log_bucket() {
            out.push(kiln_dist::logs::LogDestination::S3 { bucket, prefix });
        }
        out
    }

    /// Where the infrastructure configuration sends logs: an S3 bucket and key prefix.
    pub fn log_bucket(&self) -> Option<(String, String)> {
        let s3 = self.infrastructure.request.pointer("/logging/s3Logs")?;
        Some((
            s3.get("s3BucketName")?.as_str()?.to_string(),
            s3.get("s3KeyPrefix")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    }
}

async fn resolve(
    resources: &Resources,
    principal: &Principal,
    pipeline: &Resource,
    key: &str,
    kind: Kind,
) -> Result<Option<Resource>, ResourceError> {
    let Some(text) = pipeline.field(key) else {
        return Ok(None);
    };
    let r = Reference::parse(text, &[kind]).map_err(ResourceError::BadReference)?;
    match resources.newest(principal, &r).await? {
        Some(found) => Ok(Some(found)),
        None => Err(ResourceError::NotFound(format!(
            "pipeline {}: its {key} {text} matches nothing any more",
            pipeline.name
        ))),
    }
}

/// Puts a pipeline's resources together into the recipe of its next build, which `principal`
/// starts.
pub async fn plan(
    resources: &Resources,
    principal: &Principal,
    pipeline_ref: &str,
) -> Result<Plan, ResourceError> {
    let pipeline = resources
        .get(principal, pipeline_ref, &[Kind::ImagePipeline])
        .await?;
    plan_for(resources, principal, pipeline).await
}

/// [`plan`] for a pipeline resource the caller has: a stored one, or (with an empty ARN) the
/// fields of an Image Builder `CreateImage` request, which builds once without a pipeline.
pub async fn plan_for(
    resources: &Resources,
    principal: &Principal,
    pipeline: Resource,
) -> Result<Plan, ResourceError> {
    let recipe = match resolve(
        resources,
        principal,
        &pipeline,
        "imageRecipeArn",
        Kind::ImageRecipe,
    )
    .await?
    {
        Some(r) => r,
        None => resolve(
            resources,
            principal,
            &pipeline,
            "containerRecipeArn",
            Kind::ContainerRecipe,
        )
        .await?
        .ok_or_else(|| {
            ResourceError::NotFound(format!("pipeline {} has no recipe", pipeline.name))
        })?,
    };
    let infrastructure = resolve(
        resources,
        principal,
        &pipeline,
        "infrastructureConfigurationArn",
        Kind::InfrastructureConfiguration,
    )
    .await?
    .ok_or_else(|| {
        ResourceError::NotFound(format!(
            "pipeline {} has no infrastructure configuration",
            pipeline.name
        ))
    })?;
    let distribution = resolve(
        resources,
        principal,
        &pipeline,
        "distributionConfigurationArn",
        Kind::DistributionConfiguration,
    )
    .await?;

    let doc = recipe_document(
        resources,
        &pipeline,
        &recipe,
        &infrastructure,
        distribution.as_ref(),
    )?;
    let text = serde_json::to_string_pretty(&doc).map_err(|e| {
        StoreError::Encode(format!("the recipe of pipeline {}: {e}", pipeline.name))
    })?;
    let build_recipe = recipe::parse(RecipeSource {
        path: PathBuf::from(format!(
            "pipeline {} (recipe {})",
            pipeline.name, recipe.arn
        )),
        text,
    })
    .map_err(|e| {
        // What the pipeline's resources say together is refused: the request to run it is
        // what cannot be done, not any one field of it.
        Invalid::message(
            ErrorCode::InvalidRequest,
            format!(
                "pipeline {}: its resources do not make a valid recipe:\n{e}",
                pipeline.name
            ),
        )
    })?;
    let mut configurations = vec![infrastructure.arn.clone()];
    if let Some(d) = &distribution {
        configurations.push(d.arn.clone());
    }
    let origin = Origin {
        principal: principal.clone(),
        pipeline: Some(pipeline.arn.clone()).filter(|a| !a.is_empty()),
        recipe_arn: Some(recipe.arn.clone()),
        configurations,
        tags: Default::default(),
        build_type: crate::record::BuildType::UserInitiated,
        triggers: Vec::new(),
    };
    Ok(Plan {
        pipeline,
        recipe,
        infrastructure,
        distribution,
        build_recipe,
        origin,
    })
}

/// The document of the recipe a pipeline builds: the recipe's own fields (less what only AWS
/// uses), then the infrastructure configuration's builder settings, the distribution
/// configuration's regions and the pipeline's test settings.
fn recipe_document(
    resources: &Resources,
    pipeline: &Resource,
    recipe: &Resource,
    infrastructure: &Resource,
    distribution: Option<&Resource>,
) -> Result<Value, ResourceError> {
    // The recipe's own fields, then what the other resources say.
    let mut doc = recipe.request.clone();
    let Some(o) = doc.as_object_mut() else {
        return Err(StoreError::Unreadable {
            path: crate::state::db_path(resources.store().home()),
            what: format!("the request of recipe {}", recipe.arn),
            detail: "not a mapping".into(),
        }
        .into());
    };
    for k in [
        "amiTags",
        "kmsKeyId",
        "platformOverride",
        "imageOsVersionOverride",
        "instanceConfiguration",
        "targetRepository",
        "containerType",
        "dockerfileTemplateData",
        "dockerfileTemplateUri",
    ] {
        o.remove(k);
    }
    if recipe.kind == Kind::ContainerRecipe {
        o.insert("outputs".into(), json!(["oci"]));
    } else if !o.contains_key("outputs") {
        o.insert("outputs".into(), json!(["disk"]));
    }
    let mut infra = serde_json::Map::new();
    for k in crate::recipe::INFRA_KEYS {
        if let Some(v) = infrastructure.request.get(*k) {
            infra.insert(k.to_string(), v.clone());
        }
    }
    // Through the API the setting is a tag (the model has no member for it); the field wins.
    let field = crate::trust::UNTRUSTED_COMPONENTS_FIELD;
    if let (false, Some(v)) = (
        infra.contains_key(field),
        crate::trust::tag_of(infrastructure),
    ) {
        infra.insert(field.to_string(), Value::String(v.to_string()));
    }
    o.insert("infrastructure".into(), Value::Object(infra));
    let regions: Vec<Value> = match distribution {
        Some(d) => d
            .request
            .get("distributions")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        let mut m = serde_json::Map::new();
                        for k in [
                            "region",
                            "path",
                            "containerDistributionConfiguration",
                            "amiDistributionConfiguration",
                        ] {
                            if let Some(v) = i.get(k) {
                                m.insert(k.into(), v.clone());
                            }
                        }
                        Value::Object(m)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![json!({"region": "local"})],
    };
    o.insert("distributions".into(), Value::Array(regions));
    if let Some(t) = pipeline.request.get("imageScanningConfiguration") {
        o.insert("imageScanningConfiguration".into(), t.clone());
    }
    if let Some(t) = pipeline.request.get("imageTestsConfiguration") {
        o.insert("imageTestsConfiguration".into(), t.clone());
    }
    Ok(doc)
}
