//! CreateImageRecipe and CreateContainerRecipe: the recipe file's checks, with components
//! named by ARN and required to exist.

use kiln_store::Kind;
use kiln_yaml::{Map, Node};
use serde_json::Value;

use super::draft::{Checker, Draft};
use super::{content_digest, Reference, ResourceError, Resources};
use crate::principal::Principal;
use crate::recipe::{self, ComponentSource, Flavor, ParentImage, Recipe, RecipeSource};

impl Resources {
    pub(super) async fn draft_recipe(
        &self,
        principal: &Principal,
        kind: Kind,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let flavor = if kind == Kind::ContainerRecipe {
            Flavor::ContainerRecipe
        } else {
            Flavor::ImageRecipe
        };
        // `parse_as` reads the text again and reports the parser's problems itself.
        c.reader.diagnostics.clear();
        if let Some(p) = m.get("parentImage") {
            local_parent(c, p);
        }
        // Relative paths (an `oci:` parent) resolve against the request's folder, and are
        // stored resolved.
        let parsed = recipe::parse_as(
            RecipeSource {
                path: c.dir().join("request"),
                text: c.doc.text().to_string(),
            },
            flavor,
        );
        let recipe = match parsed {
            Ok(r) => r,
            Err(e) => {
                let mut all = c.reader.diagnostics.clone();
                all.extend(e.diagnostics);
                all.sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
                return Err(c.invalid(None, all));
            }
        };
        let mut warnings = c.render(&recipe.warnings);
        let version = m
            .get("semanticVersion")
            .is_some()
            .then_some(recipe.semantic_version);
        let (mut uses, component_arns) = self.recipe_components(principal, c, &recipe).await?;
        if let ParentImage::Image {
            name,
            version,
            build,
            account,
        } = &recipe.parent
        {
            let r = Reference {
                kind: Kind::Image,
                account: account.clone(),
                name: name.clone(),
                version: Some(*version),
                build: *build,
            };
            let arn = r.to_arn(principal);
            // Another account's image is a parent only once its owner shares a build of it.
            if !r.visible_to(principal) && !self.may_get(&principal.account, &arn).await? {
                if let Some(node) = m.get("parentImage") {
                    c.error_at(
                        node,
                        super::errors::missing("image", &arn),
                        Some("an image of another account is a parent once its owner shares a build of it with your account (PutImagePolicy)".into()),
                    );
                }
            }
            uses.push(arn);
        }
        warnings.push_str(&c.finish()?);
        let mut request = c.root().to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            o.insert(
                "parentImage".into(),
                Value::String(recipe.parent.to_string()),
            );
            if let Some(Value::Array(items)) = o.get_mut("components") {
                for (item, a) in items.iter_mut().zip(&component_arns) {
                    if let Some(im) = item.as_object_mut() {
                        im.insert("componentArn".into(), Value::String(a.clone()));
                    }
                }
            }
        }
        let digest = content_digest(&request, &["semanticVersion", "description"]);
        Ok(Draft {
            kind,
            name: recipe.name.clone(),
            version,
            description: recipe.description.clone(),
            digest,
            request,
            token: m
                .get("clientToken")
                .and_then(Node::as_text)
                .map(str::to_string),
            uses,
            component_type: None,
            platform: Some("Linux".into()),
            data: None,
            status: None,
            warnings,
            target: None,
        })
    }

    /// Components are resources too: named by ARN, and they must exist. Returns what the
    /// recipe uses and each component's ARN as stored.
    async fn recipe_components(
        &self,
        principal: &Principal,
        c: &mut Checker<'_>,
        recipe: &Recipe,
    ) -> Result<(Vec<String>, Vec<String>), ResourceError> {
        let mut uses = Vec::new();
        let mut component_arns = Vec::new();
        for rc in &recipe.components {
            match &rc.source {
                ComponentSource::Path(p) => c.reader.error(
                    rc.span,
                    format!("a stored recipe names its components by ARN, not by path ({})", p.display()),
                    Some(format!("create the component first (kiln component create FILE) and write `componentArn: {}component/NAME/x.x.x`", principal.arn_prefix())),
                ),
                ComponentSource::Arn(a) => match Reference::parse(a, &[Kind::Component]) {
                    Err(e) => c.reader.error(rc.span, e, None),
                    Ok(r) => match self.newest(principal, &r).await? {
                        None => c.reader.error(
                            rc.span,
                            super::errors::missing("component", a),
                            Some("`kiln component list` shows the components kiln has".into()),
                        ),
                        Some(found) => {
                            // An exact reference is to the component itself; a wildcard one
                            // stays a wildcard, resolved at each build.
                            let a = if r.version.is_none_or(|v| v.is_exact()) {
                                found.arn.clone()
                            } else {
                                r.to_arn(principal)
                            };
                            uses.push(a.clone());
                            component_arns.push(a);
                        }
                    },
                },
            }
        }
        Ok((uses, component_arns))
    }
}

/// An `oci:` or `rootfs:` parent is a folder on the machine kiln runs on: a request file's
/// to name (relative to its folder), never a request that came over the network, whose
/// sender may not read the server's files.
fn local_parent(c: &mut Checker, node: &Node) {
    let Some(text) = node.as_text() else { return };
    let path = ["oci:", "rootfs:"]
        .iter()
        .find_map(|scheme| text.strip_prefix(scheme));
    if path.is_some() && c.doc.dir().is_none() {
        c.error_at(
            node,
            format!("`{text}` names a folder on the server, which a request over the API cannot"),
            Some("use a registry (docker://HOST/NAME:TAG), bootstrap:debian/bookworm, or an image ARN".into()),
        );
    }
}
