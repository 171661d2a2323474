//! kiln's resources and image records as the model's shapes. Each view may hold more than the
//! shape has: responses are cut down to the model afterwards.

use chrono::{DateTime, Utc};
use kiln_core::record::{ImageRecord, State};
use kiln_core::resources::Resource;
use kiln_store::Kind;
use serde_json::{json, Map, Value};

/// Times as Image Builder writes them (`DateTime` is a string in the model).
pub fn date(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The account an ARN is in.
pub fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or("")
}

/// A build-version ARN without its build number (`.../NAME/1.0.0/1` -> `.../NAME/1.0.0`).
pub fn version_arn(arn: &str) -> String {
    let parts: Vec<&str> = arn.rsplitn(2, '/').collect();
    match parts.as_slice() {
        [last, rest]
            if last.chars().all(|c| c.is_ascii_digit()) && rest.matches('/').count() >= 2 =>
        {
            rest.to_string()
        }
        _ => arn.to_string(),
    }
}

/// A resource as its kind's shape (`Component`, `ImageRecipe`, ...).
pub fn resource(r: &Resource) -> Value {
    let mut o: Map<String, Value> = r.request.as_object().cloned().unwrap_or_default();
    o.insert("arn".into(), json!(r.arn));
    o.insert("name".into(), json!(r.name));
    if let Some(v) = r.version {
        o.insert("version".into(), json!(v.to_string()));
    }
    let owner = match account_of(&r.arn) {
        kiln_core::managed::MANAGED_ACCOUNT => "Amazon",
        account => account,
    };
    o.insert("owner".into(), json!(owner));
    o.insert("dateCreated".into(), json!(date(r.date_created)));
    if let Some(u) = r.date_updated {
        o.insert("dateUpdated".into(), json!(date(u)));
    }
    if !r.description.is_empty() {
        o.insert("description".into(), json!(r.description));
    }
    match r.kind {
        Kind::Component => {
            if let Some(t) = r.component_type {
                o.insert("type".into(), json!(t.as_str()));
            }
            o.insert(
                "platform".into(),
                json!(r.platform.clone().unwrap_or_else(|| "Linux".into())),
            );
            if let Some(d) = &r.data {
                o.insert("data".into(), json!(d));
            }
            o.insert("state".into(), json!({"status": "ACTIVE"}));
            o.insert("status".into(), json!("ACTIVE"));
            o.insert("encrypted".into(), json!(false));
        }
        Kind::ImageRecipe | Kind::ContainerRecipe => {
            o.insert("platform".into(), json!("Linux"));
            if r.kind == Kind::ImageRecipe {
                o.insert("type".into(), json!("AMI"));
            }
            o.insert("encrypted".into(), json!(false));
        }
        Kind::DistributionConfiguration => {
            if !o.contains_key("timeoutMinutes") {
                o.insert("timeoutMinutes".into(), json!(720));
            }
            let regions: Vec<Value> = o
                .get("distributions")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|i| i.get("region").cloned()).collect())
                .unwrap_or_default();
            o.insert("regions".into(), Value::Array(regions));
        }
        Kind::ImagePipeline => {
            if let Some(s) = r.status {
                o.insert("status".into(), json!(s.as_str()));
            }
            o.insert("platform".into(), json!("Linux"));
        }
        _ => {}
    }
    Value::Object(o)
}

/// A pipeline's runs as GetImagePipeline shows them (`dateNextRun`, `dateLastRun`,
/// `lastRunStatus`, `consecutiveFailures`).
pub fn pipeline_runs(v: &mut Value, s: &kiln_core::scheduler::RunStatus) {
    let Some(o) = v.as_object_mut() else { return };
    if let Some(t) = s.date_next_run {
        o.insert("dateNextRun".into(), json!(date(t)));
    }
    if let Some(t) = s.date_last_run {
        o.insert("dateLastRun".into(), json!(date(t)));
    }
    if let Some(st) = s.last_run_status {
        o.insert("lastRunStatus".into(), json!(st.as_str()));
    }
    o.insert("consecutiveFailures".into(), json!(s.consecutive_failures));
}

/// Whether an image record holds a container image (else it is a disk: `AMI`).
fn image_type(r: &ImageRecord) -> &'static str {
    let disk = r.disk.is_some()
        || r.outputs
            .iter()
            .any(|o| o.kind.to_string().starts_with("disk"));
    if disk && !r.outputs.iter().any(|o| o.kind.is_image()) {
        "AMI"
    } else {
        "DOCKER"
    }
}

/// The model's `state` of an image: status, reason, and for a failure its context.
fn state(r: &ImageRecord) -> Value {
    let mut s = json!({"status": r.state.as_str()});
    let reason = r
        .history
        .iter()
        .rev()
        .find_map(|h| h.reason.clone())
        .or_else(|| r.failure.as_ref().map(|f| f.reason.clone()));
    if let Some(reason) = reason.filter(|x| !x.is_empty()) {
        s["reason"] = json!(reason);
    }
    if let Some(f) = &r.failure {
        let mut ctx = json!({"imageStatus": f.stage.as_str()});
        if let Some(c) = &f.component {
            let arn = r
                .components
                .iter()
                .find(|x| &x.name == c)
                .and_then(|x| x.arn.clone());
            let (phase, step) = match f.step.as_deref().and_then(|s| s.split_once('/')) {
                Some((p, s)) => (Some(p.to_string()), Some(s.to_string())),
                None => (None, f.step.clone()),
            };
            let action = r.components.iter().find(|x| &x.name == c).and_then(|x| {
                x.steps
                    .iter()
                    .find(|t| Some(t.step.as_str()) == f.step.as_deref())
                    .map(|t| t.action.clone())
            });
            let mut message = f.reason.clone();
            if !f.output_tail.is_empty() {
                message.push('\n');
                message.push_str(&f.output_tail.join("\n"));
            }
            let message: String = message.chars().take(1024).collect();
            ctx["componentFailure"] = json!({
                "componentArn": arn,
                "phaseName": phase,
                "stepName": step,
                "action": action,
                "errorMessage": message,
            });
        }
        s["failureContext"] = ctx;
    }
    s
}

/// What an image's regions hold, as `outputResources`: container images by a reference skopeo
/// reads, disks by their file.
fn outputs(r: &ImageRecord) -> Value {
    let mut containers: Vec<(String, Vec<String>)> = Vec::new();
    let mut amis = Vec::new();
    for o in &r.outputs {
        if o.kind.is_image() {
            // A registry or bucket output has every tag it was given; a layout one, one each.
            let uris: Vec<String> = if o.tags.is_empty() {
                vec![o.reference()]
            } else {
                o.tags
                    .iter()
                    .map(|t| format!("{}:{t}", o.location))
                    .collect()
            };
            match containers
                .iter_mut()
                .find(|(region, _)| region == &o.region)
            {
                Some((_, all)) => all.extend(uris),
                None => containers.push((o.region.clone(), uris)),
            }
        } else {
            amis.push(json!({
                "region": o.region,
                "image": o.reference(),
                "name": format!("{} {}", r.name, r.build_version()),
                "state": {"status": "AVAILABLE"},
                "accountId": r.account,
            }));
        }
    }
    let mut out = Map::new();
    if !containers.is_empty() {
        out.insert(
            "containers".into(),
            Value::Array(
                containers
                    .into_iter()
                    .map(|(region, uris)| json!({"region": region, "imageUris": uris}))
                    .collect(),
            ),
        );
    }
    if !amis.is_empty() {
        out.insert("amis".into(), Value::Array(amis));
    }
    Value::Object(out)
}

/// An image record as `Image` (GetImage) or `ImageSummary` (lists): the caller adds the
/// recipe and configurations it resolved.
pub fn image(r: &ImageRecord) -> Value {
    let mut o = json!({
        "arn": r.arn,
        "type": image_type(r),
        "name": r.name,
        "version": format!("{}/{}", r.version, r.build),
        "platform": "Linux",
        "state": state(r),
        "owner": r.account,
        "dateCreated": date(r.created),
        "buildType": r.build_type.as_str(),
        "imageSource": "CUSTOM",
        "tags": r.tags,
    });
    if r.state == State::Available || !r.outputs.is_empty() {
        o["outputResources"] = outputs(r);
    }
    if let Some(t) = r.deprecation_time() {
        o["deprecationTime"] = json!(t.timestamp_millis() as f64 / 1000.0);
    }
    if let Some(e) = r.lifecycle_execution() {
        o["lifecycleExecutionId"] = json!(e);
    }
    if let Some(p) = &r.pipeline {
        o["sourcePipelineArn"] = json!(p);
        o["sourcePipelineName"] = json!(p.rsplit('/').next().unwrap_or(p));
    }
    if r.tags.is_empty() {
        if let Some(m) = o.as_object_mut() {
            m.remove("tags");
        }
    }
    o
}
