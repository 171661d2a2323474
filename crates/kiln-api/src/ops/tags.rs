//! TagResource, UntagResource, ListTagsForResource: tags of resources (kept in their request)
//! and of images (kept in their record).

use kiln_core::principal::Principal;
use serde_json::{json, Map, Value};

use super::{images, required, Op};
use crate::error::ApiError;
use crate::App;

/// The three tag operations; `resourceArn` is the decoded path segment.
pub async fn run(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    // The model gives the tag operations no ForbiddenException: tagging a resource another
    // account shares is the caller's mistake about that resource, an invalid parameter.
    tags(app, principal, op, input).await.map_err(|e| {
        if e.code == "ForbiddenException" {
            ApiError::new(
                "InvalidParameterException",
                format!("resourceArn: {}", e.message),
            )
        } else {
            e
        }
    })
}

async fn tags(app: &App, principal: &Principal, op: Op, input: Value) -> Result<Value, ApiError> {
    let arn = required(&input, "resourceArn")?.to_string();
    let add: Map<String, Value> = input
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let remove = crate::model::strings(input.get("tagKeys"));
    if let Some(k) = add
        .keys()
        .find(|k| k.to_ascii_lowercase().starts_with("aws:"))
    {
        return Err(ApiError::new(
            "InvalidParameterException",
            format!("tags: `{k}`: keys starting with aws: are reserved"),
        ));
    }
    let change = |tags: &mut Map<String, Value>| match op {
        Op::TagResource => tags.extend(add.clone()),
        Op::UntagResource => tags.retain(|k, _| !remove.contains(k)),
        _ => {}
    };
    if arn.contains(":image/") {
        let mut rec = images::record_for_tags(app, principal, &arn).await?;
        let mut tags: Map<String, Value> = rec
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        change(&mut tags);
        if op != Op::ListTagsForResource {
            rec.tags = tags
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect();
            app.records.save(&rec).await.map_err(ApiError::service)?;
        }
        return Ok(answer(op, tags));
    }
    if !arn.starts_with("arn:") {
        return Err(ApiError::new(
            "InvalidParameterException",
            format!("resourceArn: `{arn}` is not an ARN"),
        ));
    }
    let r = if op == Op::ListTagsForResource {
        let kind: kiln_store::Kind = arn
            .split(':')
            .nth(5)
            .and_then(|r| r.split('/').next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    "InvalidParameterException",
                    format!("resourceArn: `{arn}` names no kind of resource kiln has"),
                )
            })?;
        app.resources.get(principal, &arn, &[kind]).await?
    } else {
        app.resources.set_tags(principal, &arn, change).await?
    };
    let tags = r
        .request
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(answer(op, tags))
}

fn answer(op: Op, tags: Map<String, Value>) -> Value {
    match op {
        Op::ListTagsForResource => json!({ "tags": tags }),
        _ => json!({}),
    }
}
