//! Pipelines: the list (status, schedule in words, next run, last run) and a pipeline's page
//! (recipe, configurations, its images; Run now, Enable and Disable).

use askama::Template;
use kiln_store::{Filter, Order};
use serde_json::{json, Value};

use super::frame::{page, Frame, Nav};
use super::json::{link, s};
use super::{encode, redirect, Ctx, Page, PageError, PREFIX};
use crate::error::ApiError;
use crate::ops::Op;

/// A pipeline as the pages show it.
pub struct Row {
    pub arn: String,
    pub href: String,
    pub name: String,
    pub status: String,
    pub schedule: String,
    pub next_run: String,
    pub last_run: String,
    pub last_state: String,
}

/// A schedule in words: "every day at 06:00 UTC, when its components changed".
pub fn schedule_words(p: &Value) -> String {
    let Some(sch) = p.get("schedule") else {
        return "runs when started".into();
    };
    let expr = s(sch, "scheduleExpression");
    if expr.is_empty() {
        return "runs when started".into();
    }
    let tz = s(sch, "timezone");
    let words = match kiln_schedule::Schedule::parse(&expr, (!tz.is_empty()).then_some(tz.as_str()))
    {
        Ok(schedule) => schedule.describe(),
        Err(e) => format!("{expr} (not a schedule kiln reads: {e})"),
    };
    match s(sch, "pipelineExecutionStartCondition").as_str() {
        "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE" => {
            format!("{words}, when its components or parent changed")
        }
        _ => words,
    }
}

fn row(p: &Value) -> Row {
    let arn = s(p, "arn");
    Row {
        href: link(&arn).unwrap_or_default(),
        name: s(p, "name"),
        status: s(p, "status"),
        schedule: schedule_words(p),
        next_run: s(p, "dateNextRun"),
        last_run: s(p, "dateLastRun"),
        last_state: s(p, "lastRunStatus"),
        arn,
    }
}

#[derive(Template)]
#[template(path = "console/pipelines.html")]
struct List {
    frame: Frame,
    rows: Vec<Row>,
}

/// `GET /console/pipelines`.
pub async fn list(ctx: &Ctx) -> Page {
    let all = ctx.call(Op::ListImagePipelines, json!({})).await?;
    let mut rows = Vec::new();
    for p in super::json::list(&all, "imagePipelineList") {
        // The list leaves out the runs; each pipeline's own answer has them.
        let got = ctx
            .call(
                Op::GetImagePipeline,
                json!({"imagePipelineArn": s(p, "arn")}),
            )
            .await;
        let p = match &got {
            Ok(g) => g.get("imagePipeline").unwrap_or(p),
            Err(_) => p,
        };
        rows.push(row(p));
    }
    page(&List {
        frame: ctx.frame("Pipelines", Nav::Pipelines),
        rows,
    })
}

#[derive(Template)]
#[template(path = "console/pipeline.html")]
struct Detail {
    frame: Frame,
    p: Row,
    description: String,
    recipe: (String, String),
    infrastructure: (String, String),
    distribution: (String, String),
    images: Vec<super::images::Row>,
    notice: String,
}

/// `GET /console/pipeline?arn=`.
pub async fn detail(ctx: &Ctx) -> Page {
    let arn = ctx.q("arn").unwrap_or("").to_string();
    let got = ctx
        .call(Op::GetImagePipeline, json!({"imagePipelineArn": arn}))
        .await?;
    let p = got
        .get("imagePipeline")
        .ok_or_else(|| PageError::NotFound(format!("no pipeline {arn}")))?;
    let refer = |key: &str| {
        let a = s(p, key);
        (link(&a).unwrap_or_default(), a)
    };
    let recipe = match s(p, "imageRecipeArn") {
        r if !r.is_empty() => refer("imageRecipeArn"),
        _ => refer("containerRecipeArn"),
    };
    let history = ctx
        .app
        .records
        .summaries(&Filter {
            pipeline: Some(s(p, "arn")),
            order: Order::Newest,
            limit: Some(50),
            ..Filter::default()
        })
        .await
        .map_err(ApiError::service)?;
    let images = history
        .iter()
        .map(|i| super::images::row(i, &ctx.principal().account))
        .collect();
    page(&Detail {
        frame: ctx.frame(s(p, "name"), Nav::Pipelines),
        description: s(p, "description"),
        infrastructure: refer("infrastructureConfigurationArn"),
        distribution: refer("distributionConfigurationArn"),
        recipe,
        p: row(p),
        images,
        notice: ctx.q("notice").unwrap_or("").to_string(),
    })
}

/// A duration in seconds, one decimal.
pub fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// `POST /console/pipeline/run`: starts the pipeline and opens the image's page.
pub async fn run(ctx: &Ctx) -> Page {
    let arn = ctx.f("arn").unwrap_or("");
    let started = ctx
        .call(
            Op::StartImagePipelineExecution,
            json!({"imagePipelineArn": arn, "clientToken": uuid::Uuid::new_v4().to_string()}),
        )
        .await?;
    let image = s(&started, "imageBuildVersionArn");
    Ok(redirect(&format!("{PREFIX}/image?arn={}", encode(&image))))
}

/// `POST /console/pipeline/status`: enables or disables the pipeline (an UpdateImagePipeline
/// with everything else as it is).
pub async fn set_status(ctx: &Ctx) -> Page {
    let arn = ctx.f("arn").unwrap_or("").to_string();
    let status = match ctx.f("status") {
        Some("ENABLED") => "ENABLED",
        Some("DISABLED") => "DISABLED",
        _ => {
            return Err(ApiError::invalid("status: must be ENABLED or DISABLED").into());
        }
    };
    let got = ctx
        .call(Op::GetImagePipeline, json!({"imagePipelineArn": arn}))
        .await?;
    let current = got.get("imagePipeline").cloned().unwrap_or(Value::Null);
    let mut update = crate::model::Model::get().project("UpdateImagePipelineRequest", current);
    if let Some(o) = update.as_object_mut() {
        o.insert("imagePipelineArn".into(), json!(arn));
        o.insert("status".into(), json!(status));
        o.insert(
            "clientToken".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
    }
    ctx.call(Op::UpdateImagePipeline, update).await?;
    let notice = if status == "ENABLED" {
        "Enabled: it runs on its schedule again."
    } else {
        "Disabled: its schedule starts nothing until it is enabled."
    };
    Ok(redirect(&format!(
        "{PREFIX}/pipeline?arn={}&notice={}",
        encode(&arn),
        encode(notice)
    )))
}
