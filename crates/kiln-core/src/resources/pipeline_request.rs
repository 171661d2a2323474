//! CreateImagePipeline and UpdateImagePipeline: a recipe, configurations that must exist,
//! tests, a schedule and a status.

use kiln_store::Kind;
use kiln_yaml::Map;
use serde_json::Value;

use super::draft::{common, unreported, Checker, Draft};
use super::{cli_noun, kind_noun, versioned, PipelineStatus, Reference, ResourceError, Resources};
use crate::principal::Principal;

/// What a pipeline names: the resources it uses and each reference as stored.
#[derive(Default)]
struct Named {
    uses: Vec<String>,
    normalized: Vec<(&'static str, String)>,
}

impl Resources {
    pub(super) async fn draft_pipeline(
        &self,
        principal: &Principal,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let (name, description, token) = common(
            c,
            m,
            Kind::ImagePipeline,
            &[
                "imageRecipeArn",
                "containerRecipeArn",
                "infrastructureConfigurationArn",
                "distributionConfigurationArn",
                "imageTestsConfiguration",
                "schedule",
                "status",
            ],
        );
        let named = self.pipeline_references(principal, c, m).await?;
        tests_configuration(c, m);
        schedule(c, m);
        let written = c
            .reader
            .string(m, "status")
            .unwrap_or_else(|| "ENABLED".into());
        let status = PipelineStatus::parse(&written);
        if status.is_none() {
            if let Some(n) = m.get("status") {
                c.error_at(
                    n,
                    format!("unknown status `{written}`"),
                    Some("use ENABLED or DISABLED".into()),
                );
            }
        }
        let warnings = c.finish()?;
        let name = name.ok_or_else(|| unreported(c, "no name"))?;
        let mut request = c.root().to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            let status = status.unwrap_or(PipelineStatus::Enabled);
            o.insert("status".into(), Value::String(status.as_str().into()));
            for (k, a) in named.normalized {
                o.insert(k.into(), Value::String(a));
            }
        }
        let mut d = Draft::plain(
            Kind::ImagePipeline,
            name,
            description,
            request,
            token,
            warnings,
        );
        d.uses = named.uses;
        d.status = status;
        Ok(d)
    }

    /// The recipe and configurations a pipeline names: each must exist.
    async fn pipeline_references(
        &self,
        principal: &Principal,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Named, ResourceError> {
        let recipe_keys = match (m.get("imageRecipeArn"), m.get("containerRecipeArn")) {
            (Some(_), Some(n)) => {
                c.error_at(
                    n,
                    "a pipeline has `imageRecipeArn` or `containerRecipeArn`, not both",
                    None,
                );
                vec![]
            }
            (None, None) => {
                let at = c.root();
                c.error_at(
                    at,
                    "a pipeline needs `imageRecipeArn` or `containerRecipeArn`",
                    None,
                );
                vec![]
            }
            (Some(_), None) => vec![("imageRecipeArn", Kind::ImageRecipe)],
            (None, Some(_)) => vec![("containerRecipeArn", Kind::ContainerRecipe)],
        };
        let mut refs: Vec<(&'static str, Kind, bool)> = recipe_keys
            .into_iter()
            .map(|(k, kind)| (k, kind, true))
            .collect();
        refs.push((
            "infrastructureConfigurationArn",
            Kind::InfrastructureConfiguration,
            true,
        ));
        refs.push((
            "distributionConfigurationArn",
            Kind::DistributionConfiguration,
            false,
        ));
        let mut named = Named::default();
        for (key, kind, required) in refs {
            let Some(node) = m.get(key) else {
                if required {
                    let at = c.root();
                    c.error_at(at, format!("a pipeline needs `{key}`"), None);
                }
                continue;
            };
            let Some(text) = node.as_text() else {
                c.error_at(node, format!("`{key}` is an ARN"), None);
                continue;
            };
            match Reference::parse(text, &[kind]) {
                Err(e) => c.error_at(node, e, None),
                Ok(r) => match self.newest(principal, &r).await? {
                    None => c.error_at(
                        node,
                        super::errors::missing(kind_noun(kind), text),
                        Some(format!("`kiln {} list` shows what exists", cli_noun(kind))),
                    ),
                    Some(found) => {
                        let a = if r.version.is_some() || !versioned(kind) {
                            r.to_arn(principal)
                        } else {
                            found.arn.clone()
                        };
                        named.uses.push(a.clone());
                        named.normalized.push((key, a));
                    }
                },
            }
        }
        Ok(named)
    }
}

/// `imageTestsConfiguration`: whether tests run, for how long at most, and how long the test
/// VM may take to boot (the build's recipe gets it as it is).
fn tests_configuration(c: &mut Checker, m: &Map) {
    let Some(t) = m.get("imageTestsConfiguration") else {
        return;
    };
    let Some(tm) = c.reader.map(t, "`imageTestsConfiguration`") else {
        return;
    };
    crate::recipe::tests_config(&mut c.reader, tm);
}

/// `schedule`: a cron or rate expression, a timezone and a start condition.
fn schedule(c: &mut Checker, m: &Map) {
    let Some(s) = m.get("schedule") else { return };
    let Some(sm) = c.reader.map(s, "`schedule`") else {
        return;
    };
    c.reader.known_keys(
        sm,
        &[
            "scheduleExpression",
            "timezone",
            "pipelineExecutionStartCondition",
        ],
        "`schedule`",
    );
    if let Some(e) = c.reader.string(sm, "scheduleExpression") {
        let ok = e
            .strip_prefix("cron(")
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|f| (5..=6).contains(&f.split_whitespace().count()))
            || e.strip_prefix("rate(")
                .and_then(|r| r.strip_suffix(')'))
                .is_some();
        if !ok {
            if let Some(n) = sm.get("scheduleExpression") {
                c.reader.error(n.span, format!("`{e}` is not a schedule expression"), Some("write cron(MIN HOUR DAY MONTH WEEKDAY YEAR), as Image Builder does, e.g. cron(0 3 ? * sun *)".into()));
            }
        }
    }
    if let Some(cond) = c.reader.string(sm, "pipelineExecutionStartCondition") {
        if !matches!(
            cond.as_str(),
            "EXPRESSION_MATCH_ONLY" | "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
        ) {
            if let Some(n) = sm.get("pipelineExecutionStartCondition") {
                c.reader.error(
                    n.span,
                    format!("unknown start condition `{cond}`"),
                    Some(
                        "use EXPRESSION_MATCH_ONLY or EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
                            .into(),
                    ),
                );
            }
        }
    }
    c.reader.string(sm, "timezone");
}
