//! A SLSA provenance v1 predicate in an in-toto v1 statement: who built the image (kiln and
//! its version), from what (the recipe, every component document with its sha256, the parent
//! image and its digest, the parameters), when (start and finish) and as which build (its
//! ARN).

use serde_json::{json, Value};

use super::{hex_of, time, Subject, KILN_VERSION};
use crate::record::ImageRecord;

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What kind of build this is (the `buildType` its parameters follow).
pub const BUILD_TYPE: &str = "https://kiln.invalid/buildtypes/image-build/v1";
/// The builder's identity.
pub const BUILDER_ID: &str = "https://kiln.invalid/builder/kiln";

/// A digest set from `sha256:HEX` (or bare hex).
fn digest_set(d: &str) -> Value {
    json!({ "sha256": hex_of(d) })
}

/// The statement.
pub fn statement(
    rec: &ImageRecord,
    recipe: &crate::recipe::Recipe,
    subjects: &[Subject],
    finished: chrono::DateTime<chrono::Utc>,
) -> Value {
    let subject: Vec<Value> = subjects
        .iter()
        .map(|s| json!({"name": s.name, "digest": digest_set(&s.digest)}))
        .collect();
    let mut deps: Vec<Value> = rec
        .components
        .iter()
        .map(|c| {
            json!({
                "uri": c.arn.clone().unwrap_or_else(|| c.source.clone()),
                "name": c.name,
                "digest": digest_set(&c.document_sha256),
                "annotations": {"kind": "component"},
            })
        })
        .collect();
    if let Some(p) = &rec.parent {
        let digest = p.digest.clone().unwrap_or_else(|| p.resolved.clone());
        let mut dep = json!({
            "uri": p.reference,
            "name": "parent",
            "annotations": {"kind": "parent", "resolved": p.resolved},
        });
        if digest.starts_with("sha256:") {
            dep["digest"] = digest_set(&digest);
        } else if let Some(chain) = p.chain_id() {
            // A bootstrap parent has no manifest: its layers' chain id names its content.
            dep["digest"] = digest_set(&chain);
        }
        deps.push(dep);
    }
    let parameters: Vec<Value> = rec
        .components
        .iter()
        .map(|c| {
            let params: serde_json::Map<String, Value> = c
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({"component": c.arn.clone().unwrap_or_else(|| c.name.clone()), "parameters": params})
        })
        .collect();
    let mut recipe_ref = json!({
        "name": recipe.name,
        "version": recipe.semantic_version.to_string(),
        "sha256": rec.recipe_sha256,
        "definition": serde_json::to_value(recipe).unwrap_or(Value::Null),
    });
    if let Some(arn) = &rec.recipe_arn {
        recipe_ref["arn"] = json!(arn);
    }
    let mut internal = json!({"account": rec.account, "buildType": rec.build_type.as_str()});
    if let Some(b) = &rec.builder {
        internal["builder"] = serde_json::to_value(b).unwrap_or(Value::Null);
    }
    if let Some(p) = &rec.pipeline {
        internal["pipeline"] = json!(p);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": recipe_ref, "components": parameters},
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"kiln": KILN_VERSION}},
                "metadata": {
                    "invocationId": rec.arn,
                    "startedOn": time(rec.created),
                    "finishedOn": time(finished),
                },
            },
        },
    })
}

/// Whether a provenance statement names `digest` among its subjects (what `kiln image verify`
/// checks).
pub fn names_subject(statement: &Value, digest: &str) -> bool {
    let hex = hex_of(digest);
    statement["_type"] == STATEMENT_TYPE
        && statement["predicateType"] == PREDICATE_TYPE
        && statement["subject"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["digest"]["sha256"] == hex))
}
