//! The pipeline wizard: one form over six steps (recipe, components, build infrastructure,
//! distribution, pipeline and schedule, review).
//!
//! What was entered travels in the form's hidden fields, so Back and Edit lose nothing and
//! nothing is created before the review's Create. Create makes the infrastructure and
//! distribution configurations, the recipe and the pipeline, in that order, through the same
//! operations the API serves; when one is refused, what this submission made is deleted
//! again, so a refusal never leaves half a pipeline behind.

use askama::Template;
use serde_json::{json, Value};

use super::frame::{page, Frame, Nav};
use super::json::{link, list, s};
use super::{html, redirect, Ctx, Page};
use crate::error::ApiError;
use crate::ops::Op;
use axum::http::StatusCode;

/// The steps' titles, in order (step `n` is `STEPS[n - 1]`).
pub const STEPS: [&str; 6] = [
    "Recipe",
    "Components",
    "Build infrastructure",
    "Distribution",
    "Pipeline and schedule",
    "Review",
];

/// The parent images suggested (any other parent kiln reads may be typed).
const PARENTS: [&str; 3] = [
    "bootstrap:debian/bookworm",
    "docker.io/library/debian:bookworm",
    "docker.io/library/alpine:3.20",
];

/// A component of the recipe, with its parameters as `name=value; name=value`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pick {
    pub arn: String,
    pub parameters: String,
}

/// Everything the wizard has been told so far.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub step: usize,
    /// `container` or `disk`.
    pub kind: String,
    pub recipe_name: String,
    pub recipe_version: String,
    pub parent: String,
    pub repository: String,
    pub components: Vec<Pick>,
    /// `new` or `existing`.
    pub infra_mode: String,
    pub infra_arn: String,
    pub infra_name: String,
    /// `none`, `new` or `existing`.
    pub dist_mode: String,
    pub dist_arn: String,
    pub dist_name: String,
    pub dist_region: String,
    pub pipeline_name: String,
    pub description: String,
    pub expression: String,
    pub timezone: String,
    /// `EXPRESSION_MATCH_ONLY` or `EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE`.
    pub condition: String,
}

impl State {
    fn read(ctx: &Ctx) -> State {
        let v = |k: &str| ctx.f(k).unwrap_or("").trim().to_string();
        let or = |k: &str, d: &str| {
            let got = v(k);
            if got.is_empty() {
                d.to_string()
            } else {
                got
            }
        };
        let arns = ctx.fs("component");
        let params = ctx.fs("parameters");
        let mut components: Vec<Pick> = arns
            .iter()
            .enumerate()
            .map(|(i, a)| Pick {
                arn: a.trim().to_string(),
                parameters: params.get(i).map_or("", |p| p.trim()).to_string(),
            })
            .collect();
        if components.is_empty() {
            components.push(Pick::default());
        }
        State {
            step: v("step").parse().unwrap_or(1).clamp(1, STEPS.len()),
            kind: or("kind", "container"),
            recipe_name: v("recipeName"),
            recipe_version: or("recipeVersion", "1.0.0"),
            parent: v("parentImage"),
            repository: v("repository"),
            components,
            infra_mode: or("infraMode", "new"),
            infra_arn: v("infraArn"),
            infra_name: v("infraName"),
            dist_mode: or("distMode", "new"),
            dist_arn: v("distArn"),
            dist_name: v("distName"),
            dist_region: or("distRegion", "local"),
            pipeline_name: v("pipelineName"),
            description: v("description"),
            expression: v("scheduleExpression"),
            timezone: or("timezone", "UTC"),
            condition: or("startCondition", "EXPRESSION_MATCH_ONLY"),
        }
    }

    /// The fields of the steps other than the one shown, to carry along.
    fn carried(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |step: usize, name: &'static str, value: &str| {
            if step != self.step {
                out.push((name, value.to_string()));
            }
        };
        put(1, "kind", &self.kind);
        put(1, "recipeName", &self.recipe_name);
        put(1, "recipeVersion", &self.recipe_version);
        put(1, "parentImage", &self.parent);
        put(1, "repository", &self.repository);
        for c in &self.components {
            put(2, "component", &c.arn);
            put(2, "parameters", &c.parameters);
        }
        put(3, "infraMode", &self.infra_mode);
        put(3, "infraArn", &self.infra_arn);
        put(3, "infraName", &self.infra_name);
        put(4, "distMode", &self.dist_mode);
        put(4, "distArn", &self.dist_arn);
        put(4, "distName", &self.dist_name);
        put(4, "distRegion", &self.dist_region);
        put(5, "pipelineName", &self.pipeline_name);
        put(5, "description", &self.description);
        put(5, "scheduleExpression", &self.expression);
        put(5, "timezone", &self.timezone);
        put(5, "startCondition", &self.condition);
        out
    }

    fn container(&self) -> bool {
        self.kind == "container"
    }

    /// What is wrong with step `step`, field by field.
    fn check(&self, step: usize) -> Vec<Problem> {
        let mut p = Vec::new();
        // kiln-core's semantic version, which the create operations parse.
        let bad_version = self
            .recipe_version
            .parse::<kiln_core::version::Version>()
            .err()
            .map(|e| format!("The recipe's version: {e}."));
        let mut need = |ok: bool, field: &str, message: &str| {
            if !ok {
                p.push(Problem {
                    field: field.to_string(),
                    message: message.to_string(),
                });
            }
        };
        match step {
            1 => {
                need(
                    matches!(self.kind.as_str(), "container" | "disk"),
                    "kind-container",
                    "Choose a container image or a disk image.",
                );
                need(
                    name_ok(&self.recipe_name),
                    "recipeName",
                    "The recipe's name: 1 to 128 letters, digits, ., - or _, starting with a letter or digit.",
                );
                need(
                    bad_version.is_none(),
                    "recipeVersion",
                    bad_version.as_deref().unwrap_or(""),
                );
                need(
                    !self.parent.is_empty(),
                    "parentImage",
                    "Name the parent image the recipe starts from.",
                );
                need(
                    !self.container() || !self.repository.is_empty(),
                    "repository",
                    "A container image needs the repository it is pushed to.",
                );
            }
            2 => {
                need(
                    self.components.iter().any(|c| !c.arn.is_empty()),
                    "component-1",
                    "Add at least one component: a recipe with none has nothing to build.",
                );
                for (i, c) in self.components.iter().enumerate() {
                    need(
                        c.arn.is_empty() || c.arn.starts_with("arn:"),
                        &format!("component-{}", i + 1),
                        &format!("Component {} is not an ARN: pick one from the list.", i + 1),
                    );
                    need(
                        parameters(&c.parameters).is_some(),
                        &format!("parameters-{}", i + 1),
                        &format!(
                            "Component {}'s parameters are name=value pairs separated by ;.",
                            i + 1
                        ),
                    );
                }
            }
            3 => {
                if self.infra_mode == "existing" {
                    need(
                        self.infra_arn.starts_with("arn:"),
                        "infraArn",
                        "Choose an infrastructure configuration.",
                    );
                } else {
                    need(
                        name_ok(&self.infra_name),
                        "infraName",
                        "Name the new infrastructure configuration.",
                    );
                }
            }
            4 => match self.dist_mode.as_str() {
                "existing" => need(
                    self.dist_arn.starts_with("arn:"),
                    "distArn",
                    "Choose a distribution configuration.",
                ),
                "new" => {
                    need(
                        name_ok(&self.dist_name),
                        "distName",
                        "Name the new distribution configuration.",
                    );
                    need(
                        !self.dist_region.is_empty(),
                        "distRegion",
                        "Name the region it distributes to.",
                    );
                }
                _ => {}
            },
            5 => {
                need(
                    name_ok(&self.pipeline_name),
                    "pipelineName",
                    "The pipeline's name: 1 to 128 letters, digits, ., - or _, starting with a letter or digit.",
                );
                if !self.expression.is_empty() {
                    if let Err(e) = kiln_schedule::Schedule::parse(
                        &self.expression,
                        Some(self.timezone.as_str()).filter(|t| !t.is_empty()),
                    ) {
                        p.push(Problem {
                            field: "scheduleExpression".into(),
                            message: format!("The schedule: {e}"),
                        });
                    }
                }
            }
            _ => {}
        }
        p
    }
}

/// A resource name the API accepts: kiln-core's rule, which the create operations apply.
fn name_ok(n: &str) -> bool {
    kiln_core::recipe::is_name(n)
}

/// `a=1; b=2` as the API's component parameters; `None` when it is not that.
fn parameters(text: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        out.push(json!({"name": name, "value": [value.trim()]}));
    }
    Some(out)
}

/// A field the wizard refuses, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The `id` of the input to fix.
    pub field: String,
    pub message: String,
}

/// A resource to pick from: its ARN and what the list shows.
pub struct Choice {
    pub arn: String,
    pub label: String,
}

/// The review's lines: a step, what it says, and where to edit it.
pub struct Line {
    pub step: usize,
    pub term: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "console/wizard.html")]
struct Wizard {
    frame: Frame,
    st: State,
    steps: Vec<(usize, &'static str)>,
    carried: Vec<(&'static str, String)>,
    problems: Vec<Problem>,
    refused: String,
    parents: Vec<&'static str>,
    components: Vec<Choice>,
    infras: Vec<Choice>,
    dists: Vec<Choice>,
    review: Vec<Line>,
    preview: Preview,
}

impl Wizard {
    fn invalid(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field == field)
    }

    /// `invalid("{prefix}-{n}")`, for the repeated component fields.
    fn invalid_at(&self, prefix: &str, n: &usize) -> bool {
        self.invalid(&format!("{prefix}-{n}"))
    }

    fn step_title(&self) -> &'static str {
        STEPS[self.st.step - 1]
    }
}

/// The schedule in words and its next runs (or why it is not one).
#[derive(Template, Default)]
#[template(path = "console/wizard_schedule.html")]
struct Preview {
    words: String,
    next: Vec<String>,
    error: String,
}

fn preview(expression: &str, timezone: &str) -> Preview {
    if expression.is_empty() {
        return Preview {
            words: "No schedule: the pipeline runs when it is started (Run now, or the API)."
                .into(),
            ..Preview::default()
        };
    }
    match kiln_schedule::Schedule::parse(expression, Some(timezone).filter(|t| !t.is_empty())) {
        Ok(s) => Preview {
            words: s.describe(),
            next: s
                .upcoming(chrono::Utc::now(), 5)
                .iter()
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .collect(),
            error: String::new(),
        },
        Err(e) => Preview {
            error: e.to_string(),
            ..Preview::default()
        },
    }
}

/// `POST /console/wizard/schedule`: the schedule preview, as the expression is typed.
pub async fn preview_schedule(ctx: &Ctx) -> Page {
    let p = preview(
        ctx.f("scheduleExpression").unwrap_or("").trim(),
        ctx.f("timezone").unwrap_or("").trim(),
    );
    Ok(html(StatusCode::OK, p.render()?))
}

/// `GET` and `POST /console/wizard`.
pub async fn serve(ctx: &Ctx) -> Page {
    let mut st = State::read(ctx);
    let mut problems = Vec::new();
    let mut refused = String::new();
    let action = ctx.f("action").unwrap_or("");
    match action {
        "next" => {
            problems = st.check(st.step);
            if problems.is_empty() {
                st.step = (st.step + 1).min(STEPS.len());
            }
        }
        "back" => st.step = st.step.saturating_sub(1).max(1),
        "add" => st.components.push(Pick::default()),
        "create" => {
            // Every step again: hidden fields may have been changed by hand.
            for step in 1..STEPS.len() {
                problems = st.check(step);
                if !problems.is_empty() {
                    st.step = step;
                    break;
                }
            }
            if problems.is_empty() {
                match create(ctx, &st).await {
                    Ok(pipeline) => {
                        return Ok(redirect(&link(&pipeline).unwrap_or_default()));
                    }
                    Err((step, e)) => {
                        refused = format!(
                            "{} was refused ({}): {}. Nothing was created.",
                            STEPS[step - 1],
                            e.code,
                            e.message
                        );
                    }
                }
            }
        }
        a => {
            if let Some(n) = numbered(a, "goto-") {
                st.step = n.clamp(1, STEPS.len());
            } else if let Some(i) = numbered(a, "remove-") {
                if i < st.components.len() {
                    st.components.remove(i);
                }
                if st.components.is_empty() {
                    st.components.push(Pick::default());
                }
            } else if let Some(i) = numbered(a, "up-") {
                if i > 0 && i < st.components.len() {
                    st.components.swap(i - 1, i);
                }
            }
        }
    }
    // Each list is asked for only on the steps that show it (the review names the chosen
    // configurations).
    let step = st.step;
    let components = if step == 2 {
        let versions = choices(
            ctx,
            Op::ListComponents,
            json!({"owner": "Self"}),
            "componentVersionList",
        )
        .await;
        latest_builds(ctx, versions).await
    } else {
        Vec::new()
    };
    let infras = if step == 3 || step == STEPS.len() {
        choices(
            ctx,
            Op::ListInfrastructureConfigurations,
            json!({}),
            "infrastructureConfigurationSummaryList",
        )
        .await
    } else {
        Vec::new()
    };
    let dists = if step == 4 || step == STEPS.len() {
        choices(
            ctx,
            Op::ListDistributionConfigurations,
            json!({}),
            "distributionConfigurationSummaryList",
        )
        .await
    } else {
        Vec::new()
    };
    let review = if step == STEPS.len() {
        review(&st, &infras, &dists)
    } else {
        Vec::new()
    };
    let preview = preview(&st.expression, &st.timezone);
    let status = if problems.is_empty() && refused.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = page(&Wizard {
        frame: ctx.frame(
            format!("Create pipeline: {}", STEPS[st.step - 1]),
            Nav::Wizard,
        ),
        carried: st.carried(),
        steps: STEPS.iter().enumerate().map(|(i, t)| (i + 1, *t)).collect(),
        st,
        problems,
        refused,
        parents: PARENTS.to_vec(),
        components,
        infras,
        dists,
        review,
        preview,
    })?;
    *r.status_mut() = status;
    Ok(r)
}

/// `N` of an action `PREFIXN` (`remove-2`).
fn numbered(action: &str, prefix: &str) -> Option<usize> {
    action.strip_prefix(prefix)?.parse().ok()
}

async fn choices(ctx: &Ctx, op: Op, input: Value, member: &str) -> Vec<Choice> {
    let Ok(got) = ctx.call(op, input).await else {
        return Vec::new();
    };
    list(&got, member)
        .iter()
        .map(|v| Choice {
            arn: s(v, "arn"),
            label: format!("{} {}", s(v, "name"), s(v, "version"))
                .trim()
                .to_string(),
        })
        .collect()
}

/// Components as their newest build version's ARN (what a recipe names).
async fn latest_builds(ctx: &Ctx, versions: Vec<Choice>) -> Vec<Choice> {
    let mut out = Vec::new();
    for v in versions {
        let got = ctx
            .call(
                Op::ListComponentBuildVersions,
                json!({"componentVersionArn": v.arn}),
            )
            .await;
        let builds = got.ok();
        let newest = builds
            .as_ref()
            .and_then(|b| list(b, "componentSummaryList").last().map(|c| s(c, "arn")));
        out.push(Choice {
            arn: newest.unwrap_or(v.arn),
            label: v.label,
        });
    }
    out
}

fn label_of(choices: &[Choice], arn: &str) -> String {
    choices
        .iter()
        .find(|c| c.arn == arn)
        .map_or_else(|| arn.to_string(), |c| c.label.clone())
}

fn review(st: &State, infras: &[Choice], dists: &[Choice]) -> Vec<Line> {
    let line = |step: usize, term: &str, value: String| Line {
        step,
        term: term.to_string(),
        value,
    };
    let mut out = vec![line(
        1,
        "Recipe",
        format!(
            "{} image {} {} from {}",
            if st.container() { "Container" } else { "Disk" },
            st.recipe_name,
            st.recipe_version,
            st.parent
        ),
    )];
    if st.container() {
        out.push(line(1, "Repository", st.repository.clone()));
    }
    for (i, c) in st
        .components
        .iter()
        .filter(|c| !c.arn.is_empty())
        .enumerate()
    {
        let params = if c.parameters.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.parameters)
        };
        out.push(line(
            2,
            &format!("Component {}", i + 1),
            format!("{}{params}", c.arn),
        ));
    }
    out.push(line(
        3,
        "Build infrastructure",
        if st.infra_mode == "existing" {
            label_of(infras, &st.infra_arn)
        } else {
            format!("new: {}", st.infra_name)
        },
    ));
    out.push(line(
        4,
        "Distribution",
        match st.dist_mode.as_str() {
            "existing" => label_of(dists, &st.dist_arn),
            "new" => format!("new: {} to region {}", st.dist_name, st.dist_region),
            _ => "none: the image stays in this server's store".into(),
        },
    ));
    out.push(line(5, "Pipeline", st.pipeline_name.clone()));
    out.push(line(
        5,
        "Schedule",
        if st.expression.is_empty() {
            "none: runs when started".into()
        } else {
            let words = preview(&st.expression, &st.timezone).words;
            if st.condition == "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE" {
                format!("{words}, when its components or parent changed")
            } else {
                words
            }
        },
    ));
    out
}

/// What Create made so far, to delete again if a later step is refused.
#[derive(Default)]
struct Made(Vec<(Op, &'static str, String)>);

impl Made {
    async fn undo(self, ctx: &Ctx) {
        for (op, member, arn) in self.0.into_iter().rev() {
            if let Err(e) = ctx.call(op, json!({ member: arn })).await {
                tracing::warn!(%arn, code = %e.code, "the wizard could not delete what it made");
            }
        }
    }
}

fn token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Creates the pipeline; on a refusal, the step it concerns and the refusal.
async fn create(ctx: &Ctx, st: &State) -> Result<String, (usize, ApiError)> {
    let mut made = Made::default();
    let result = create_in(ctx, st, &mut made).await;
    if result.is_err() {
        made.undo(ctx).await;
    }
    result
}

async fn create_in(ctx: &Ctx, st: &State, made: &mut Made) -> Result<String, (usize, ApiError)> {
    let infra = if st.infra_mode == "existing" {
        st.infra_arn.clone()
    } else {
        let got = ctx
            .call(
                Op::CreateInfrastructureConfiguration,
                json!({"name": st.infra_name, "instanceProfileName": "kiln-builder", "clientToken": token()}),
            )
            .await
            .map_err(|e| (3, e))?;
        let arn = s(&got, "infrastructureConfigurationArn");
        made.0.push((
            Op::DeleteInfrastructureConfiguration,
            "infrastructureConfigurationArn",
            arn.clone(),
        ));
        arn
    };
    let dist = match st.dist_mode.as_str() {
        "existing" => Some(st.dist_arn.clone()),
        "new" => {
            let mut d = json!({"region": st.dist_region});
            if st.container() {
                d["containerDistributionConfiguration"] = json!({"targetRepository": {"service": "ECR", "repositoryName": st.repository}});
            }
            let got = ctx
                .call(
                    Op::CreateDistributionConfiguration,
                    json!({"name": st.dist_name, "distributions": [d], "clientToken": token()}),
                )
                .await
                .map_err(|e| (4, e))?;
            let arn = s(&got, "distributionConfigurationArn");
            made.0.push((
                Op::DeleteDistributionConfiguration,
                "distributionConfigurationArn",
                arn.clone(),
            ));
            Some(arn)
        }
        _ => None,
    };
    let components: Vec<Value> = st
        .components
        .iter()
        .filter(|c| !c.arn.is_empty())
        .map(|c| {
            let params = parameters(&c.parameters).unwrap_or_default();
            if params.is_empty() {
                json!({"componentArn": c.arn})
            } else {
                json!({"componentArn": c.arn, "parameters": params})
            }
        })
        .collect();
    let (recipe_member, recipe) = if st.container() {
        let got = ctx
            .call(
                Op::CreateContainerRecipe,
                json!({
                    "containerType": "DOCKER",
                    "name": st.recipe_name,
                    "semanticVersion": st.recipe_version,
                    "parentImage": st.parent,
                    "components": components,
                    "targetRepository": {"service": "ECR", "repositoryName": st.repository},
                    "clientToken": token(),
                }),
            )
            .await
            .map_err(|e| (1, e))?;
        let arn = s(&got, "containerRecipeArn");
        made.0
            .push((Op::DeleteContainerRecipe, "containerRecipeArn", arn.clone()));
        ("containerRecipeArn", arn)
    } else {
        let got = ctx
            .call(
                Op::CreateImageRecipe,
                json!({
                    "name": st.recipe_name,
                    "semanticVersion": st.recipe_version,
                    "parentImage": st.parent,
                    "components": components,
                    "clientToken": token(),
                }),
            )
            .await
            .map_err(|e| (1, e))?;
        let arn = s(&got, "imageRecipeArn");
        made.0
            .push((Op::DeleteImageRecipe, "imageRecipeArn", arn.clone()));
        ("imageRecipeArn", arn)
    };
    let mut input = json!({
        "name": st.pipeline_name,
        recipe_member: recipe,
        "infrastructureConfigurationArn": infra,
        "clientToken": token(),
    });
    if !st.description.is_empty() {
        input["description"] = json!(st.description);
    }
    if let Some(d) = dist {
        input["distributionConfigurationArn"] = json!(d);
    }
    if !st.expression.is_empty() {
        input["schedule"] = json!({
            "scheduleExpression": st.expression,
            "timezone": st.timezone,
            "pipelineExecutionStartCondition": st.condition,
        });
    }
    let got = ctx
        .call(Op::CreateImagePipeline, input)
        .await
        .map_err(|e| (5, e))?;
    Ok(s(&got, "imagePipelineArn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            step: 1,
            kind: "container".into(),
            recipe_name: "web".into(),
            recipe_version: "1.0.0".into(),
            parent: "bootstrap:debian/bookworm".into(),
            repository: "web".into(),
            components: vec![Pick {
                arn: "arn:kiln:imagebuilder:local:1:component/a/1.0.0/1".into(),
                parameters: "greeting=hi; n=2".into(),
            }],
            infra_mode: "new".into(),
            infra_arn: String::new(),
            infra_name: "builders".into(),
            dist_mode: "none".into(),
            dist_arn: String::new(),
            dist_name: String::new(),
            dist_region: "local".into(),
            pipeline_name: "web".into(),
            description: String::new(),
            expression: "cron(0 6 * * ? *)".into(),
            timezone: "UTC".into(),
            condition: "EXPRESSION_MATCH_ONLY".into(),
        }
    }

    #[test]
    fn a_complete_state_passes_every_step() {
        let st = state();
        for step in 1..=6 {
            assert_eq!(st.check(step), vec![], "step {step}");
        }
    }

    #[test]
    fn each_step_names_the_field_to_fix() {
        let mut st = state();
        st.recipe_version = "1.0".into();
        st.repository.clear();
        let fields: Vec<String> = st.check(1).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["recipeVersion", "repository"]);
        st.components = vec![Pick {
            arn: "web".into(),
            parameters: "novalue".into(),
        }];
        let fields: Vec<String> = st.check(2).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["component-1", "parameters-1"]);
        st.expression = "cron(every day)".into();
        let p = st.check(5);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "scheduleExpression");
    }

    #[test]
    fn names_and_versions_follow_the_apis_rules() {
        let mut st = state();
        // What CreateContainerRecipe refuses, the first step refuses too.
        st.recipe_name = "my web".into();
        st.recipe_version = "01.0.0".into();
        let fields: Vec<String> = st.check(1).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["recipeName", "recipeVersion"]);
        st.recipe_name = "web.v2".into();
        st.recipe_version = "1.10.0".into();
        assert_eq!(st.check(1), vec![]);
    }

    #[test]
    fn fields_of_other_steps_are_carried_and_the_shown_ones_are_not() {
        let mut st = state();
        st.step = 2;
        let carried = st.carried();
        assert!(carried
            .iter()
            .any(|(n, v)| *n == "recipeName" && v == "web"));
        assert!(!carried.iter().any(|(n, _)| *n == "component"));
    }

    #[test]
    fn parameters_read_as_the_apis() {
        assert_eq!(
            parameters("a=1; b = two").unwrap(),
            vec![
                json!({"name": "a", "value": ["1"]}),
                json!({"name": "b", "value": ["two"]})
            ]
        );
        assert_eq!(parameters("").unwrap(), Vec::<Value>::new());
        assert!(parameters("a").is_none());
        assert!(parameters("=1").is_none());
    }

    #[test]
    fn the_preview_lists_the_next_runs_or_the_error() {
        let p = preview("rate(1 day)", "UTC");
        assert_eq!(p.next.len(), 5, "{:?}", p.error);
        let p = preview("cron(nonsense)", "UTC");
        assert!(!p.error.is_empty());
        assert!(p.next.is_empty());
    }
}
