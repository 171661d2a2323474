//! Image Builder's default start condition: a scheduled run builds only when the pipeline's
//! recipe now resolves to something its last image did not use: a newer recipe version, a
//! newer component version matching a `x` filter, a newer build of a kiln parent image.

use kiln_store::Kind;

use crate::pipeline::Plan;
use crate::principal::Principal;
use crate::recipe::{ComponentSource, ParentImage};
use crate::record::{ImageQuery, ImageRecord, Records};
use crate::resources::{Reference, ResourceError, Resources};
use crate::updates::DependencyChange;

/// What the last image had where it had nothing of the kind.
const NONE: &str = "none";

/// The name part of a component ARN (`.../component/NAME/1.0.0/1` gives `NAME`).
fn component_name(arn: &str) -> &str {
    arn.split_once(":component/")
        .map_or(arn, |(_, rest)| rest.split('/').next().unwrap_or(rest))
}

/// What resolves differently for `plan` (the pipeline's next build) than for `last`.
pub async fn changes(
    resources: &Resources,
    records: &Records,
    principal: &Principal,
    plan: &Plan,
    last: &ImageRecord,
) -> Result<Vec<DependencyChange>, ResourceError> {
    let mut out = Vec::new();
    if last.recipe_arn.as_deref() != Some(plan.recipe.arn.as_str()) {
        out.push(DependencyChange {
            reference: "recipe".into(),
            was: last.recipe_arn.clone().unwrap_or_else(|| NONE.into()),
            now: plan.recipe.arn.clone(),
        });
    }
    let used: Vec<&str> = last
        .components
        .iter()
        .filter_map(|c| c.arn.as_deref())
        .collect();
    for c in &plan.build_recipe.components {
        let ComponentSource::Arn(reference) = &c.source else {
            continue;
        };
        let r =
            Reference::parse(reference, &[Kind::Component]).map_err(ResourceError::BadReference)?;
        let Some(found) = resources.newest(principal, &r).await? else {
            // The build itself will say that nothing matches; a run is due to find out.
            out.push(DependencyChange {
                reference: format!("component {reference}"),
                was: NONE.into(),
                now: "nothing matches".into(),
            });
            continue;
        };
        if !used.contains(&found.arn.as_str()) {
            let name = component_name(&found.arn);
            out.push(DependencyChange {
                reference: format!("component {name}"),
                was: used
                    .iter()
                    .find(|u| component_name(u) == name)
                    .map_or_else(|| NONE.into(), |u| u.to_string()),
                now: found.arn.clone(),
            });
        }
    }
    if let ParentImage::Image {
        name,
        version,
        build,
        account,
    } = &plan.build_recipe.parent
    {
        let q = ImageQuery {
            account: Some(account.clone().unwrap_or_else(|| principal.account.clone())),
            name: name.clone(),
            version: Some(*version),
            build: *build,
        };
        if let Some(newest) = records.newest_available(&q).await? {
            let now = newest.build_version();
            let was = last.parent.as_ref().map(|p| p.resolved.clone());
            if was.as_deref() != Some(now.as_str()) {
                out.push(DependencyChange {
                    reference: format!("parent image {name}"),
                    was: was.unwrap_or_else(|| NONE.into()),
                    now,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_come_from_their_arns() {
        assert_eq!(
            component_name("arn:kiln:imagebuilder:local:000000000000:component/hello/1.0.0/1"),
            "hello"
        );
        assert_eq!(component_name("hello"), "hello");
    }
}
