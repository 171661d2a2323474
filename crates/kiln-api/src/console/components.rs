//! Components: the list with versions, a component's document, and a YAML editor that
//! validates as one types with kiln's own validator (the one every build runs), errors shown
//! at their line and column.

use askama::Template;
use serde_json::{json, Value};

use super::frame::{page, Frame, Nav};
use super::json::{link, list as items, owner, s};
use super::{encode, redirect, Ctx, Page, PREFIX};
use crate::ops::Op;

/// A component version in the list.
pub struct Row {
    pub href: String,
    pub name: String,
    pub version: String,
    pub platform: String,
    pub owner: String,
    pub description: String,
}

fn row(c: &Value, own: &str) -> Row {
    let arn = s(c, "arn");
    Row {
        href: link(&arn).unwrap_or_default(),
        name: s(c, "name"),
        version: s(c, "version"),
        platform: s(c, "platform"),
        owner: owner(&arn, own),
        description: s(c, "description"),
    }
}

#[derive(Template)]
#[template(path = "console/components.html")]
struct List {
    frame: Frame,
    rows: Vec<Row>,
}

/// `GET /console/components`: the account's and those shared with it.
pub async fn list(ctx: &Ctx) -> Page {
    let mut rows = Vec::new();
    for owner in ["Self", "Shared"] {
        let got = ctx
            .call(Op::ListComponents, json!({"owner": owner}))
            .await?;
        rows.extend(
            items(&got, "componentVersionList")
                .iter()
                .map(|c| row(c, &ctx.principal().account)),
        );
    }
    page(&List {
        frame: ctx.frame("Components", Nav::Components),
        rows,
    })
}

#[derive(Template)]
#[template(path = "console/component.html")]
struct Detail {
    frame: Frame,
    name: String,
    arn: String,
    fields: Vec<(String, String)>,
    document: String,
    builds: Vec<(String, String, String)>,
}

/// `GET /console/component?arn=`: a version ARN shows its builds; a build ARN its document.
pub async fn detail(ctx: &Ctx) -> Page {
    let arn = ctx.q("arn").unwrap_or("").to_string();
    // A version ARN (NAME/X.Y.Z) lists its builds; the newest one's document is shown.
    let builds = ctx
        .call(
            Op::ListComponentBuildVersions,
            json!({"componentVersionArn": version_arn(&arn)}),
        )
        .await
        .map(|v| {
            items(&v, "componentSummaryList")
                .iter()
                .map(|b| {
                    let a = s(b, "arn");
                    (link(&a).unwrap_or_default(), a, s(b, "dateCreated"))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let build_arn = if arn.split('/').count() >= 4 {
        arn.clone()
    } else {
        builds.last().map(|b| b.1.clone()).unwrap_or(arn.clone())
    };
    let got = ctx
        .call(
            Op::GetComponent,
            json!({"componentBuildVersionArn": build_arn}),
        )
        .await?;
    let c = got.get("component").cloned().unwrap_or(Value::Null);
    let fields = [
        ("Version", "version"),
        ("Platform", "platform"),
        ("Type", "type"),
        ("Owner", "owner"),
        ("Created", "dateCreated"),
        ("Description", "description"),
        ("Change description", "changeDescription"),
    ]
    .iter()
    .map(|(label, key)| (label.to_string(), s(&c, key)))
    .filter(|(_, v)| !v.is_empty())
    .collect();
    page(&Detail {
        frame: ctx.frame(s(&c, "name"), Nav::Components),
        name: s(&c, "name"),
        arn: s(&c, "arn"),
        fields,
        document: s(&c, "data"),
        builds,
    })
}

/// The version ARN of a component build ARN (`.../component/NAME/X.Y.Z/BUILD`).
fn version_arn(arn: &str) -> String {
    let parts: Vec<&str> = arn.split('/').collect();
    if parts.len() >= 4 {
        parts[..3].join("/")
    } else {
        arn.to_string()
    }
}

/// A problem in the editor's document.
pub struct Problem {
    pub severity: &'static str,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub context: String,
    pub hint: String,
}

/// The document's problems, as kiln's validator finds them.
pub fn problems(text: &str) -> Vec<Problem> {
    let source = kiln_toe::document::Source {
        name: "the document".into(),
        text: text.to_string(),
        dir: None,
    };
    let items = match kiln_toe::load::parse(source) {
        Ok(loaded) => loaded.warnings.items,
        Err(d) => d.items,
    };
    items
        .into_iter()
        .map(|d| Problem {
            severity: if d.is_error() { "error" } else { "warning" },
            line: d.span.map_or(0, |s| s.start.line as usize),
            col: d.span.map_or(0, |s| s.start.col as usize),
            message: d.message,
            context: d.context.unwrap_or_default(),
            hint: d.hint.unwrap_or_default(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "console/diagnostics.html")]
struct Diagnostics {
    problems: Vec<Problem>,
    checked: bool,
}

#[derive(Template)]
#[template(path = "console/component_new.html")]
struct Editor {
    frame: Frame,
    name: String,
    version: String,
    description: String,
    data: String,
    problems: Vec<Problem>,
    checked: bool,
    refused: String,
}

const STARTER: &str = "name: hello\ndescription: Says hello\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Hello\n        action: ExecuteBash\n        inputs:\n          commands:\n            - echo hello\n";

/// `GET /console/components/new`.
pub async fn new(ctx: &Ctx) -> Page {
    page(&Editor {
        frame: ctx.frame("Create component", Nav::Components),
        name: String::new(),
        version: "1.0.0".into(),
        description: String::new(),
        data: STARTER.into(),
        problems: problems(STARTER),
        checked: true,
        refused: String::new(),
    })
}

/// `POST /console/components/validate` (htmx, as one types): the problems, as a fragment.
pub async fn validate(ctx: &Ctx) -> Page {
    let text = ctx.f("data").unwrap_or("");
    page(&Diagnostics {
        problems: problems(text),
        checked: true,
    })
}

/// `POST /console/components/new`: CreateComponent; its page on success, the editor again
/// with the refusal otherwise (nothing typed is lost).
pub async fn create(ctx: &Ctx) -> Page {
    let name = ctx.f("name").unwrap_or("").trim().to_string();
    let version = ctx.f("version").unwrap_or("").trim().to_string();
    let description = ctx.f("description").unwrap_or("").to_string();
    let data = ctx.f("data").unwrap_or("").to_string();
    let mut input = json!({
        "name": name,
        "semanticVersion": version,
        "platform": "Linux",
        "data": data,
        "clientToken": uuid::Uuid::new_v4().to_string(),
    });
    if !description.is_empty() {
        input["description"] = json!(description);
    }
    match ctx.call(Op::CreateComponent, input).await {
        Ok(v) => {
            let arn = s(&v, "componentBuildVersionArn");
            Ok(redirect(&format!(
                "{PREFIX}/component?arn={}",
                encode(&arn)
            )))
        }
        Err(e) => {
            let mut p = page(&Editor {
                frame: ctx.frame("Create component", Nav::Components),
                problems: problems(&data),
                checked: true,
                name,
                version,
                description,
                data,
                refused: format!("{}: {}", e.code, e.message),
            })?;
            *p.status_mut() = axum::http::StatusCode::from_u16(e.status)
                .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
            Ok(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_point_at_their_line_and_column() {
        assert!(problems(STARTER).iter().all(|p| p.severity != "error"));
        let broken = STARTER.replace("action: ExecuteBash", "action: ExecuteBsh");
        let p = problems(&broken);
        let e = p.iter().find(|p| p.severity == "error").unwrap();
        assert_eq!((e.line, e.col), (8, 17), "{}", e.message);
        assert!(e.message.contains("ExecuteBsh"), "{}", e.message);
    }

    #[test]
    fn build_arns_name_their_version() {
        assert_eq!(
            version_arn("arn:kiln:imagebuilder:local:1:component/a/1.0.0/1"),
            "arn:kiln:imagebuilder:local:1:component/a/1.0.0"
        );
    }
}
