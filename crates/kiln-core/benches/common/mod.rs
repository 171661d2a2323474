//! What the scheduler benches share: COUNT daily pipelines of one container recipe, all due
//! at 03:00, stored through the resource layer as requests would be.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use kiln_core::principal::Principal;
use kiln_core::request::{Document, Operation, Request};
use kiln_core::resources::Resources;
use serde_json::json;

const DOC: &str = "name: t\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: [echo a]\n";
const P: &str = "arn:kiln:imagebuilder:local:000000000000";

async fn apply(res: &Resources, dir: &std::path::Path, op: Operation, body: serde_json::Value) {
    let doc = Document::parse("bench", body.to_string(), Some(dir.to_path_buf())).unwrap();
    res.apply(&Principal::local("bench"), Request::new(op, doc))
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"));
}

/// Stores a component, a container recipe, an infrastructure configuration and `count`
/// pipelines `p0`, `p1`, ... scheduled daily at 03:00 UTC.
pub async fn daily_pipelines(res: &Resources, dir: &std::path::Path, count: usize) {
    apply(
        res,
        dir,
        Operation::CreateComponent,
        json!({"name": "c", "semanticVersion": "1.0.0", "platform": "Linux", "data": DOC}),
    )
    .await;
    apply(
        res,
        dir,
        Operation::CreateContainerRecipe,
        json!({"name": "r", "semanticVersion": "1.0.0", "containerType": "DOCKER",
                 "parentImage": "bootstrap:debian/bookworm",
                 "components": [{"componentArn": format!("{P}:component/c/x.x.x")}]}),
    )
    .await;
    apply(
        res,
        dir,
        Operation::CreateInfrastructureConfiguration,
        json!({"name": "i"}),
    )
    .await;
    for i in 0..count {
        apply(res, dir, Operation::CreateImagePipeline,
              json!({"name": format!("p{i}"),
                     "containerRecipeArn": format!("{P}:container-recipe/r/1.0.0"),
                     "infrastructureConfigurationArn": format!("{P}:infrastructure-configuration/i"),
                     "schedule": {"scheduleExpression": "cron(0 3 * * ? *)",
                                  "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}})).await;
    }
}

/// The next 03:00 UTC after `now`: when every pipeline is due.
pub fn next_due(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let d = now.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
    if d > now {
        d
    } else {
        d + chrono::Duration::days(1)
    }
}
