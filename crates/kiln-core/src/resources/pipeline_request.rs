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
                "imageScanningConfiguration",
                "schedule",
                "status",
                "rebuildWhen",
            ],
        );
        let named = self.pipeline_references(principal, c, m).await?;
        tests_configuration(c, m);
        scanning_configuration(c, m);
        schedule(c, m);
        rebuild_when(c, m);
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

/// `imageScanningConfiguration`: whether the tested image is scanned (the build's recipe gets
/// it as it is; the scanner is kiln's configuration's).
fn scanning_configuration(c: &mut Checker, m: &Map) {
    let Some(s) = m.get("imageScanningConfiguration") else {
        return;
    };
    let Some(sm) = c.reader.map(s, "`imageScanningConfiguration`") else {
        return;
    };
    crate::recipe::scanning_config(&mut c.reader, sm);
}

/// `schedule`: a cron or rate expression (checked by `kiln-schedule`, which names the field
/// of the expression and the rule broken), a time zone, a start condition and an
/// auto-disable policy.
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
            "autoDisablePolicy",
        ],
        "`schedule`",
    );
    let timezone = c.reader.string(sm, "timezone");
    if let Some(e) = c.reader.string(sm, "scheduleExpression") {
        if let Err(err) = kiln_schedule::Schedule::parse(&e, timezone.as_deref()) {
            let key = match err.kind() {
                kiln_schedule::Field::Timezone => "timezone",
                _ => "scheduleExpression",
            };
            if let Some(n) = sm.get(key) {
                c.reader.error(
                    n.span,
                    err.to_string(),
                    Some(
                        "write cron(MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK YEAR) with `?` in one \
                         of the day fields, e.g. cron(0 3 ? * SUN *), or rate(N UNITS), e.g. \
                         rate(12 hours); docs/schedules.md has the rules"
                            .into(),
                    ),
                );
            }
        }
    } else if let Some(n) = sm.get("timezone") {
        c.reader.error(
            n.span,
            "a timezone without a scheduleExpression",
            Some("add scheduleExpression, or remove the timezone".into()),
        );
    }
    if let Some(cond) = c.reader.string(sm, "pipelineExecutionStartCondition") {
        if crate::scheduler::StartCondition::parse(&cond).is_none() {
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
    if let Some(a) = sm.get("autoDisablePolicy") {
        if let Some(am) = c.reader.map(a, "`autoDisablePolicy`") {
            c.reader
                .known_keys(am, &["failureCount"], "`autoDisablePolicy`");
            match (c.reader.integer(am, "failureCount"), am.get("failureCount")) {
                (Some(n), Some(node)) if !(1..=10).contains(&n) => c.reader.error(
                    node.span,
                    format!("failureCount {n} is out of range"),
                    Some(
                        "failed scheduled runs in a row before the pipeline is disabled: 1 to 10"
                            .into(),
                    ),
                ),
                (None, None) => c.reader.error(
                    a.span,
                    "`autoDisablePolicy` needs failureCount",
                    Some(
                        "failed scheduled runs in a row before the pipeline is disabled: 1 to 10"
                            .into(),
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// kiln's `rebuildWhen` (a list of conditions) and the `kiln:rebuildWhen` tag, which says the
/// same through the API.
fn rebuild_when(c: &mut Checker, m: &Map) {
    let hint = || {
        Some(format!(
            "kiln rebuilds on a schedule also when: {}",
            crate::scheduler::RebuildWhen::WORDS.join(", ")
        ))
    };
    if let Some(n) = m.get("rebuildWhen") {
        if let Some(words) = c.reader.strings(m, "rebuildWhen", true) {
            if let Err(e) = crate::scheduler::RebuildWhen::parse(words.iter().map(String::as_str)) {
                c.reader.error(n.span, e, hint());
            }
        }
    }
    let tag = crate::scheduler::spec::REBUILD_WHEN_TAG;
    if let Some(tags) = m.get("tags").and_then(|t| t.as_map()) {
        if let Some(v) = tags.get(tag) {
            if let Some(text) = v.as_text() {
                if let Err(e) = crate::scheduler::RebuildWhen::parse_tag(text) {
                    c.reader.error(v.span, format!("tag `{tag}`: {e}"), hint());
                }
            }
        }
    }
}
