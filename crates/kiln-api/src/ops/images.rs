//! Images: builds started through the API (a pipeline's, or CreateImage's), their records,
//! cancel and delete (which removes what was distributed, through kiln-core's `retire`).

use std::collections::{BTreeMap, HashSet};

use kiln_core::principal::Principal;
use kiln_core::record::{ImageQuery, ImageRecord};
use kiln_core::resources::{PipelineStatus, Resource};
use kiln_store::{Filter, Kind};
use serde_json::{json, Value};

use super::resources::matches;
use super::{paging, required, text, view, Op};
use crate::error::ApiError;
use crate::App;

/// StartImagePipelineExecution and CreateImage: the build is queued and numbered now; the
/// answer names it while it runs.
pub async fn start(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let pipeline = match op {
        Op::StartImagePipelineExecution => {
            let arn = required(&input, "imagePipelineArn")?;
            let p = app
                .resources
                .get(principal, arn, &[Kind::ImagePipeline])
                .await?;
            if p.status == Some(PipelineStatus::Disabled) {
                return Err(ApiError::bad_request(format!(
                    "pipeline {} is DISABLED: enable it (UpdateImagePipeline with status ENABLED) to run it",
                    p.arn
                )));
            }
            p
        }
        _ => one_off(principal, &input),
    };
    let mut plan = kiln_core::pipeline::plan_for(&app.resources, principal, pipeline).await?;
    if let Some(tags) = input.get("tags").and_then(Value::as_object) {
        plan.origin.tags = tags
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect::<BTreeMap<_, _>>();
    }
    let arn = app.builds.start(plan).await?;
    Ok(json!({"clientToken": text(&input, "clientToken"), "imageBuildVersionArn": arn}))
}

/// A CreateImage request as the pipeline of one build.
fn one_off(principal: &Principal, input: &Value) -> Resource {
    let mut request = serde_json::Map::new();
    for k in [
        "imageRecipeArn",
        "containerRecipeArn",
        "infrastructureConfigurationArn",
        "distributionConfigurationArn",
        "imageTestsConfiguration",
        "imageScanningConfiguration",
    ] {
        if let Some(v) = input.get(k) {
            request.insert(k.into(), v.clone());
        }
    }
    Resource {
        arn: String::new(),
        kind: Kind::ImagePipeline,
        name: "CreateImage".into(),
        version: None,
        owner: principal.user.clone(),
        date_created: chrono::Utc::now(),
        date_updated: None,
        description: String::new(),
        digest: String::new(),
        request: Value::Object(request),
        source_file: None,
        component_type: None,
        platform: None,
        data: None,
        status: None,
        uses: Vec::new(),
    }
}

/// What an image ARN of `principal`'s account names: a version (`.../image/NAME/1.0.0`) or
/// one build of it (`.../1.0.0/1`).
fn query(principal: &Principal, arn: &str) -> Result<ImageQuery, ApiError> {
    if !arn.starts_with("arn:") {
        return Err(ApiError::invalid(format!(
            "`{arn}` is not an image ARN (arn:kiln:imagebuilder:REGION:ACCOUNT:image/NAME/VERSION/BUILD)"
        )));
    }
    let q: ImageQuery = arn
        .parse()
        .ok()
        .filter(|q: &ImageQuery| q.account.is_some() && q.version.is_some())
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "`{arn}` is not an image ARN (.../image/NAME/VERSION/BUILD)"
            ))
        })?;
    if q.account.as_deref() != Some(principal.account.as_str()) {
        return Err(ApiError::not_found(format!("no image has the ARN `{arn}`")));
    }
    Ok(q)
}

/// The record an image ARN names in `principal`'s account (the newest build for a version
/// ARN). Another account's image is not the principal's to change: `ForbiddenException` when
/// it is shared with the principal, not found otherwise.
pub(crate) async fn record(
    app: &App,
    principal: &Principal,
    arn: &str,
) -> Result<ImageRecord, ApiError> {
    let q = match query(principal, arn) {
        Err(e) if e.status == 404 => {
            let missing = kiln_core::resources::ResourceError::NotFound(e.message.clone());
            return Err(app
                .resources
                .refuse_write(principal, arn, missing)
                .await?
                .into());
        }
        other => other?,
    };
    app.records
        .newest(&q, &[])
        .await
        .map_err(ApiError::service)?
        .ok_or_else(|| ApiError::not_found(format!("no image has the ARN `{arn}`")))
}

/// GetImage: the record with the recipe and configurations it was built from.
pub async fn get(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let arn = required(&input, "imageBuildVersionArn")?;
    let rec = match super::shared_images::record(app, principal, arn).await? {
        Some(rec) => rec,
        None => record(app, principal, arn).await?,
    };
    let image = image_object(&app.resources, principal, &rec).await;
    Ok(json!({ "image": image }))
}

/// An image record as GetImage's `Image`, with the recipe and configurations it was built
/// from (what a notification carries too).
pub(crate) async fn image_object(
    resources: &kiln_core::resources::Resources,
    principal: &Principal,
    rec: &ImageRecord,
) -> Value {
    let mut image = view::image(rec);
    let mut uses: Vec<&String> = rec.recipe_arn.iter().collect();
    uses.extend(rec.configurations.iter());
    for used in uses {
        let Ok(r) = resources
            .get(
                principal,
                used,
                &[
                    Kind::ImageRecipe,
                    Kind::ContainerRecipe,
                    Kind::InfrastructureConfiguration,
                    Kind::DistributionConfiguration,
                ],
            )
            .await
        else {
            continue;
        };
        let key = match r.kind {
            Kind::ImageRecipe => "imageRecipe",
            Kind::ContainerRecipe => "containerRecipe",
            Kind::InfrastructureConfiguration => "infrastructureConfiguration",
            _ => "distributionConfiguration",
        };
        image[key] = view::resource(&r);
    }
    if let Some(t) = &rec.tests {
        image["imageTestsConfiguration"] =
            json!({"imageTestsEnabled": t.status.as_str() != "SKIPPED"});
    }
    if let Some(scan) = &rec.scan {
        let enabled = scan.status != kiln_core::scan::ScanStatus::NotRequested;
        image["imageScanningConfiguration"] = json!({"imageScanningEnabled": enabled});
        if let Some(word) = scan.status.api_word() {
            image["scanState"] = json!({"status": word, "reason": scan.summary()});
        }
    }
    image
}

/// ListImages (one entry per version), ListImageBuildVersions and ListImagePipelineImages
/// (one per build).
pub async fn list(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let mut f = Filter {
        kind: Some(Kind::Image),
        arn_prefix: Some(principal.arn_prefix()),
        ..Filter::default()
    };
    match op {
        Op::ListImageBuildVersions => {
            // Another account's version lists the builds it shares with this one: none when
            // it shares none, as a version with no builds.
            let arn = required(&input, "imageVersionArn")?;
            f = match query(principal, arn) {
                Err(e) if e.status == 404 => super::shared_images::builds_filter(principal, arn)?,
                other => {
                    let mut q = other?;
                    q.build = None;
                    kiln_core::record::filter_of(&q)
                }
            };
        }
        Op::ListImagePipelineImages => {
            let arn = required(&input, "imagePipelineArn")?;
            app.resources
                .get(principal, arn, &[Kind::ImagePipeline])
                .await?;
            f.pipeline = Some(arn.to_string());
        }
        _ => {}
    }
    let owner = text(&input, "owner").unwrap_or("Self");
    if owner == "Shared" && op == Op::ListImages {
        f.arn_prefix = None;
        f.shared_with = Some(principal.account.clone());
    }
    if op == Op::ListImages {
        if owner != "Self" && owner != "Shared" {
            let page = paging::page(
                Vec::new(),
                |v: &Value| v["arn"].as_str().unwrap_or(""),
                &input,
            )?;
            return Ok(json!({"imageVersionList": page.items, "nextToken": page.next}));
        }
        // Rows come in version order (name, then version, then build), so the first N rows give
        // the first versions of the whole list. The first page needs only its own versions and
        // one more (which says there is a next page): read a few rows, and more only when they
        // do not hold that many, instead of every image of the account (200 ms at 10,000).
        // A page after a token is found by its last item's key, so it reads the whole list.
        let mut limit = input
            .get("nextToken")
            .and_then(Value::as_str)
            .is_none()
            .then_some(FIRST_ROWS);
        loop {
            f.limit = limit;
            let summaries = app.records.summaries(&f).await.map_err(ApiError::service)?;
            let all_read = limit.is_none_or(|l| summaries.len() < l as usize);
            let versions = versions_of(summaries, principal, &input);
            let page = paging::page(versions, |v| v["arn"].as_str().unwrap_or(""), &input)?;
            if all_read || page.next.is_some() {
                return Ok(json!({"imageVersionList": page.items, "nextToken": page.next}));
            }
            limit = limit
                .map(|l| l.saturating_mul(8))
                .filter(|l| *l <= MAX_PREFIX_ROWS);
        }
    }
    let summaries = if owner == "Self" {
        app.records.summaries(&f).await.map_err(ApiError::service)?
    } else {
        Vec::new()
    };
    let page = paging::page(summaries, |s| s.arn.as_str(), &input)?;
    let mut items = Vec::new();
    for s in &page.items {
        if let Some(r) = app.records.get(&s.arn).await.map_err(ApiError::service)? {
            let v = view::image(&r);
            if matches(&v, &input) {
                items.push(v);
            }
        }
    }
    Ok(json!({"imageSummaryList": items, "nextToken": page.next}))
}

/// Rows the first page of ListImages reads first: a default page (25 versions) and one more,
/// with room for a few builds per version.
const FIRST_ROWS: u32 = 64;
/// Above this many rows the first page reads the whole list (filters that match few versions).
const MAX_PREFIX_ROWS: u32 = 32_768;

/// ListImages' entries: one per version (or per name, with `byName`), from the first build of it
/// that passes the request's filters, in the summaries' order.
fn versions_of(
    summaries: Vec<kiln_core::record::ImageSummary>,
    principal: &Principal,
    input: &Value,
) -> Vec<Value> {
    let by_name = input
        .get("byName")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut versions: Vec<Value> = Vec::new();
    // The version ARNs listed so far: looking each summary up in `versions` itself made a
    // list of 10,000 versions take 50 million comparisons (4.5 s).
    let mut listed: HashSet<String> = HashSet::new();
    for s in summaries {
        let arn = if by_name {
            format!(
                "{}image/{}/x.x.x",
                Principal::new(owner_of(&s.arn, principal), "").arn_prefix(),
                s.name.to_ascii_lowercase()
            )
        } else {
            view::version_arn(&s.arn)
        };
        if listed.contains(&arn) {
            continue;
        }
        let v = json!({
            "arn": arn,
            "name": s.name,
            "version": if by_name { "x.x.x".to_string() } else { s.version.to_string() },
            "platform": "Linux",
            "owner": owner_of(&s.arn, principal),
            "dateCreated": view::date(s.created),
            "buildType": s.build_type.as_str(),
            "imageSource": "CUSTOM",
        });
        // A build the filters leave out does not list its version: a later build may.
        if matches(&v, input) {
            listed.insert(arn);
            versions.push(v);
        }
    }
    versions
}

/// The account of an image ARN (a shared image's owner), or the principal's.
fn owner_of<'a>(arn: &'a str, principal: &'a Principal) -> &'a str {
    kiln_core::resources::sharing::account_of(arn).unwrap_or(&principal.account)
}

/// CancelImageCreation: asks the running build to stop (unless it is distributing, which
/// finishes so no region is left half-written).
pub async fn cancel(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let arn = required(&input, "imageBuildVersionArn")?;
    let rec = record(app, principal, arn).await?;
    if rec.state.is_final() {
        return Err(ApiError::new(
            "ResourceInUseException",
            format!(
                "image {} is {}: only a PENDING, BUILDING or TESTING image can be cancelled",
                rec.arn, rec.state
            ),
        ));
    }
    let notices = crate::notices::ImageNotices::new(app.records.store().clone());
    kiln_core::build::queued::cancel(app.records.store(), &rec.arn, Some(&notices))
        .await
        .map_err(ApiError::service)?;
    Ok(json!({"clientToken": text(&input, "clientToken"), "imageBuildVersionArn": rec.arn}))
}

/// DeleteImage: the image's artifacts leave every region it was distributed to (tags, disk
/// files, registry manifests), then its record goes. Refused while a recipe names it as its
/// parent or a running build started from it; when an artifact cannot be removed, the record
/// stays and says which are left.
pub async fn delete(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let arn = required(&input, "imageBuildVersionArn")?;
    let rec = record(app, principal, arn).await?;
    if !rec.state.is_final() {
        return Err(ApiError::new(
            "ResourceDependencyException",
            format!(
                "image {} is {}: cancel it (CancelImageCreation) or wait for it to end first",
                rec.arn, rec.state
            ),
        ));
    }
    let users = kiln_core::retire::users_of(&app.records, &rec)
        .await
        .map_err(ApiError::service)?;
    if !users.is_empty() {
        return Err(ApiError::new(
            "ResourceDependencyException",
            format!(
                "image {} is in use: {}; change or delete those first",
                rec.arn,
                users.join("; ")
            ),
        ));
    }
    let deletion = kiln_core::retire::delete_image(
        &app.records,
        rec,
        &app.builds.registry_access(),
        kiln_core::retire::Scope::default(),
        None,
        chrono::Utc::now(),
        None,
    )
    .await
    .map_err(ApiError::service)?;
    if !deletion.complete() {
        // kiln's failure, not the caller's (a retry may succeed once fixed): say what is left.
        return Err(ApiError::new(
            "ServiceException",
            format!(
                "image {} was not deleted: {}; the rest of it was removed",
                deletion.record.arn,
                deletion.failed.join("; ")
            ),
        ));
    }
    app.records
        .store()
        .db()
        .delete(&deletion.record.arn)
        .await
        .map_err(ApiError::service)?;
    Ok(json!({"imageBuildVersionArn": deletion.record.arn}))
}

/// DistributeImage: an AVAILABLE image goes to the regions a distribution configuration
/// names, nothing rebuilt (kiln's regions that are registries or buckets). The request is
/// checked at once (a client's mistake is a 4xx); the distribution then runs in the server and
/// GetImage shows the new outputs when it is done. Unlike AWS, no new image resource is made:
/// the answer names the source build, whose record gains the outputs.
pub async fn distribute(app: &App, principal: &Principal, input: Value) -> Result<Value, ApiError> {
    let source = required(&input, "sourceImage")?;
    let config_arn = required(&input, "distributionConfigurationArn")?;
    let rec = record(app, principal, source).await?;
    let config = app
        .resources
        .get(principal, config_arn, &[Kind::DistributionConfiguration])
        .await?;
    let regions: Vec<String> = config
        .request
        .get("distributions")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|x| x.get("region")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let (home, options) = app.builds.settings();
    kiln_core::build::again::check(&rec, &regions, options)
        .map_err(|e| ApiError::new("InvalidRequestException", format!("{e}")))?;
    let (home, options, records) = (home.clone(), options.clone(), app.records.clone());
    let arn = rec.arn.clone();
    tokio::spawn(async move {
        let quiet = |_: &str| {};
        let arn = rec.arn.clone();
        match kiln_core::build::again::distribute_again(
            &home, &records, &options, rec, &regions, &quiet,
        )
        .await
        {
            Ok(_) => tracing::info!(image = %arn, ?regions, "distributed again"),
            Err(e) => tracing::warn!(image = %arn, "distributing again failed: {e}"),
        }
    });
    Ok(json!({"clientToken": text(&input, "clientToken"), "imageBuildVersionArn": arn}))
}

/// The record of exactly the image build `arn` names (TagResource and its kin).
pub(crate) async fn record_for_tags(
    app: &App,
    principal: &Principal,
    arn: &str,
) -> Result<ImageRecord, ApiError> {
    let rec = record(app, principal, arn).await?;
    if rec.arn != arn {
        return Err(ApiError::not_found(format!("no image has the ARN `{arn}`")));
    }
    Ok(rec)
}
