//! Recipes, configurations, lifecycle policies and notification topics: a list and a detail
//! page for each, over their List and Get operations.

use askama::Template;
use serde_json::{json, Value};

use super::frame::{page, Frame, Nav};
use super::json::{link, list as items, s, to_html};
use super::{Ctx, Page, PageError};
use crate::ops::Op;
use crate::topics::TopicOp;

/// A kind of resource the console lists.
struct Kind {
    /// Its list page (`/console/PATH`).
    path: &'static str,
    title: &'static str,
    /// The list operations and the member holding their items.
    lists: &'static [(Op, &'static str)],
}

const KINDS: [Kind; 4] = [
    Kind {
        path: "recipes",
        title: "Recipes",
        lists: &[
            (Op::ListImageRecipes, "imageRecipeSummaryList"),
            (Op::ListContainerRecipes, "containerRecipeSummaryList"),
        ],
    },
    Kind {
        path: "infrastructure-configurations",
        title: "Infrastructure configurations",
        lists: &[(
            Op::ListInfrastructureConfigurations,
            "infrastructureConfigurationSummaryList",
        )],
    },
    Kind {
        path: "distribution-configurations",
        title: "Distribution configurations",
        lists: &[(
            Op::ListDistributionConfigurations,
            "distributionConfigurationSummaryList",
        )],
    },
    Kind {
        path: "lifecycle-policies",
        title: "Lifecycle policies",
        lists: &[(Op::ListLifecyclePolicies, "lifecyclePolicySummaryList")],
    },
];

/// A detail page: its path, the Get operation (`None`: a topic, which kiln's topics module
/// answers), the ARN member, the member holding the answer.
const DETAILS: [(&str, Option<Op>, &str, &str); 6] = [
    (
        "recipe",
        Some(Op::GetImageRecipe),
        "imageRecipeArn",
        "imageRecipe",
    ),
    (
        "container-recipe",
        Some(Op::GetContainerRecipe),
        "containerRecipeArn",
        "containerRecipe",
    ),
    (
        "infrastructure-configuration",
        Some(Op::GetInfrastructureConfiguration),
        "infrastructureConfigurationArn",
        "infrastructureConfiguration",
    ),
    (
        "distribution-configuration",
        Some(Op::GetDistributionConfiguration),
        "distributionConfigurationArn",
        "distributionConfiguration",
    ),
    (
        "lifecycle-policy",
        Some(Op::GetLifecyclePolicy),
        "lifecyclePolicyArn",
        "lifecyclePolicy",
    ),
    ("topic", None, "topicArn", "topic"),
];

/// The tabs over the kinds, on every list page.
pub struct Tab {
    pub href: String,
    pub title: &'static str,
    pub current: bool,
}

fn tabs(current: &str) -> Vec<Tab> {
    KINDS
        .iter()
        .map(|k| (k.path, k.title))
        .chain([("topics", "Notification topics")])
        .map(|(path, title)| Tab {
            href: format!("/console/{path}"),
            title,
            current: path == current,
        })
        .collect()
}

/// One row of a list.
pub struct Row {
    pub href: String,
    pub name: String,
    pub detail: String,
    pub arn: String,
}

#[derive(Template)]
#[template(path = "console/resources.html")]
struct List {
    frame: Frame,
    title: &'static str,
    tabs: Vec<Tab>,
    rows: Vec<Row>,
}

#[derive(Template)]
#[template(path = "console/resource.html")]
struct Detail {
    frame: Frame,
    name: String,
    kind: String,
    body: String,
}

/// Serves `/console/KIND` (a list) or `/console/KIND?arn=` (a detail page), when KIND is one
/// of these.
pub async fn route(ctx: &Ctx, get: bool, kind: &str) -> Option<Page> {
    if !get {
        return None;
    }
    if kind == "topics" {
        return Some(topics(ctx).await);
    }
    if let Some(k) = KINDS.iter().find(|k| k.path == kind) {
        return Some(list(ctx, k).await);
    }
    let d = DETAILS.iter().find(|d| d.0 == kind)?;
    Some(detail(ctx, d).await)
}

async fn list(ctx: &Ctx, k: &Kind) -> Page {
    let mut rows = Vec::new();
    for (op, member) in k.lists {
        let got = ctx.call(*op, json!({})).await?;
        for r in items(&got, member) {
            let arn = s(r, "arn");
            rows.push(Row {
                href: link(&arn).unwrap_or_default(),
                name: s(r, "name"),
                detail: [s(r, "description"), s(r, "status"), s(r, "version")]
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>()
                    .join(" · "),
                arn,
            });
        }
    }
    page(&List {
        frame: ctx.frame(k.title, Nav::Resources),
        title: k.title,
        tabs: tabs(k.path),
        rows,
    })
}

async fn detail(ctx: &Ctx, d: &(&str, Option<Op>, &str, &str)) -> Page {
    let (kind, op, key, member) = *d;
    let arn = ctx.q("arn").unwrap_or("").to_string();
    let got = match op {
        Some(op) => ctx.call(op, json!({ key: arn })).await?,
        None => {
            let q = format!("{key}={}", super::encode(&arn));
            crate::topics::serve(&ctx.app, ctx.principal(), TopicOp::Get, &q, b"").await?
        }
    };
    let v = got
        .get(member)
        .cloned()
        .ok_or_else(|| PageError::NotFound(format!("no {kind} {arn}")))?;
    page(&Detail {
        frame: ctx.frame(s(&v, "name"), Nav::Resources),
        name: s(&v, "name"),
        kind: kind.replace('-', " "),
        body: to_html(&v),
    })
}

async fn topics(ctx: &Ctx) -> Page {
    let got = crate::topics::serve(&ctx.app, ctx.principal(), TopicOp::List, "", b"{}").await?;
    let rows = items(&got, "topics")
        .iter()
        .map(|t: &Value| {
            let arn = s(t, "arn");
            Row {
                href: format!("/console/topic?arn={}", super::encode(&arn)),
                name: s(t, "name"),
                detail: s(t, "webhookUrl"),
                arn,
            }
        })
        .collect();
    page(&List {
        frame: ctx.frame("Notification topics", Nav::Resources),
        title: "Notification topics",
        tabs: tabs("topics"),
        rows,
    })
}
