//! Resources with Image Builder's names and rules: components, image and container recipes,
//! infrastructure and distribution configurations, image pipelines. Each is made from a
//! [`Request`] (an operation and its fields, Image Builder's request shape) on behalf of a
//! [`Principal`], kept in the state store with its ARN in the principal's account, and referred
//! to by ARN (or `NAME[/VERSION]`, where VERSION may use `x`).
//!
//! Components and recipes are versioned and immutable; creating one without
//! `semanticVersion` takes the next patch version when the content changed and returns the
//! existing version when it did not. Creating the same thing twice returns what exists, so
//! infrastructure-as-code can re-apply files freely. Every failure has an [`ErrorCode`].

mod component;
mod configuration;
mod draft;
mod errors;
mod lifecycle_request;
mod pipeline_request;
pub mod policy;
mod recipe;
mod reference;
pub mod sharing;
#[cfg(test)]
mod sharing_tests;
#[cfg(test)]
mod tests;
mod write;

use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_store::{Filter, Kind, Row, StoreError as DbError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use errors::{ErrorCode, Invalid, Problem, ResourceError};
pub use reference::{arn, Reference};
pub use sharing::may_use;

use crate::principal::Principal;
use crate::request::Request;
use crate::state::Store;
use crate::store::{sha256_hex, StoreError};
use crate::version::{Version, VersionFilter};

/// What people call a kind.
pub fn kind_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Component => "component",
        Kind::ImageRecipe => "image recipe",
        Kind::ContainerRecipe => "container recipe",
        Kind::InfrastructureConfiguration => "infrastructure configuration",
        Kind::DistributionConfiguration => "distribution configuration",
        Kind::ImagePipeline => "image pipeline",
        Kind::Image => "image",
        Kind::LifecyclePolicy => "lifecycle policy",
        Kind::LifecycleExecution => "lifecycle execution",
        Kind::Topic => "topic",
        Kind::StepCacheEntry => "shared step cache entry",
    }
}

/// The CLI's word for a kind.
pub fn cli_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Component => "component",
        Kind::ImageRecipe | Kind::ContainerRecipe => "recipe",
        Kind::InfrastructureConfiguration => "infrastructure",
        Kind::DistributionConfiguration => "distribution",
        Kind::ImagePipeline => "pipeline",
        Kind::Image => "image",
        Kind::LifecyclePolicy | Kind::LifecycleExecution => "lifecycle",
        Kind::Topic => "topic",
        Kind::StepCacheEntry => "cache",
    }
}

fn versioned(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Component | Kind::ImageRecipe | Kind::ContainerRecipe | Kind::Image
    )
}

/// What a component does in a build (Image Builder's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ComponentType {
    /// Has a build or validate phase: it changes the image.
    Build,
    /// Only a test phase.
    Test,
}

impl ComponentType {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentType::Build => "BUILD",
            ComponentType::Test => "TEST",
        }
    }
}

impl std::fmt::Display for ComponentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whether a pipeline runs (Image Builder's `status` of a pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PipelineStatus {
    /// It runs on its schedule and when started.
    Enabled,
    /// It does not run.
    Disabled,
}

impl PipelineStatus {
    /// Image Builder's word for it, also the store row's state.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Enabled => "ENABLED",
            PipelineStatus::Disabled => "DISABLED",
        }
    }

    /// Reads Image Builder's word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ENABLED" => Some(PipelineStatus::Enabled),
            "DISABLED" => Some(PipelineStatus::Disabled),
            _ => None,
        }
    }
}

impl std::fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A stored resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Its ARN.
    pub arn: String,
    /// `component`, `image-recipe`, ...
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Its name, as created.
    pub name: String,
    /// Semantic version (components and recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Who created it.
    pub owner: String,
    /// When.
    pub date_created: DateTime<Utc>,
    /// When it last changed (configurations and pipelines can be updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_updated: Option<DateTime<Utc>>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// SHA-256 of its content (what auto-versioning and idempotency compare).
    pub digest: String,
    /// The request's fields as given (clientToken left out; semanticVersion as chosen; paths
    /// made absolute; component references as ARNs).
    pub request: Value,
    /// The file it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_file: Option<PathBuf>,
    /// Components: BUILD or TEST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<ComponentType>,
    /// Components: the platform (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Components: the document, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Pipelines and lifecycle policies: ENABLED or DISABLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PipelineStatus>,
    /// What it refers to (ARNs, some with `x`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
}

impl Resource {
    /// A request field as text.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.request.get(key).and_then(Value::as_str)
    }
}

/// The short form lists show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSummary {
    /// ARN.
    pub arn: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Owner.
    pub owner: String,
    /// Created.
    pub date_created: DateTime<Utc>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// BUILD or TEST (components).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<ComponentType>,
    /// ENABLED or DISABLED (pipelines, lifecycle policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PipelineStatus>,
}

impl Resource {
    /// The short form lists show.
    pub fn summary(&self) -> ResourceSummary {
        ResourceSummary {
            arn: self.arn.clone(),
            kind: self.kind,
            name: self.name.clone(),
            version: self.version,
            owner: self.owner.clone(),
            date_created: self.date_created,
            description: self.description.clone(),
            component_type: self.component_type,
            status: self.status,
        }
    }
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The resource (new or changed, or the one that already had this content).
    pub resource: Resource,
    /// False when an existing resource was returned unchanged.
    pub created: bool,
    /// Warnings about the request, rendered.
    pub warnings: String,
}

/// What lists select.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Name (case-insensitive).
    pub name: Option<String>,
    /// Version filter.
    pub version: Option<VersionFilter>,
    /// Owner (a user name; the caller resolves words such as `self`).
    pub owner: Option<String>,
}

/// The resources of a store.
#[derive(Debug, Clone)]
pub struct Resources {
    store: Store,
    trust: crate::trust::TrustPolicy,
}

impl Resources {
    /// The resources of a store, under the default trust policy (untrusted components in
    /// VMs).
    pub fn new(store: Store) -> Self {
        Resources {
            store,
            trust: crate::trust::TrustPolicy::default(),
        }
    }

    /// Checks infrastructure configurations against the operator's trust policy: one whose
    /// `untrustedComponents` asks for less than the policy's floor is refused.
    pub fn with_trust(mut self, trust: crate::trust::TrustPolicy) -> Self {
        self.trust = trust;
        self
    }

    /// The trust policy configurations are checked against.
    pub fn trust(&self) -> &crate::trust::TrustPolicy {
        &self.trust
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A stored resource.
    fn parse(&self, row: &Row) -> Result<Resource, StoreError> {
        self.store
            .decode(&row.body, &format!("the resource {}", row.arn))
    }

    /// Carries out a create or update request on behalf of `principal`: checks every field,
    /// then stores the resource in the principal's account, owned by the principal's user.
    pub async fn apply(
        &self,
        principal: &Principal,
        request: Request,
    ) -> Result<Outcome, ResourceError> {
        let draft = self.draft(principal, &request).await?;
        if request.operation.is_update() {
            self.replace(principal, draft, &request.document).await
        } else {
            self.store_draft(principal, draft, &request.document).await
        }
    }

    /// Checks a create or update request as [`Resources::apply`] would, storing nothing (a
    /// dry run): every field, and that what it refers to exists.
    pub async fn check(
        &self,
        principal: &Principal,
        request: &Request,
    ) -> Result<(), ResourceError> {
        self.draft(principal, request).await.map(|_| ())
    }

    /// The newest resource a reference names that `principal` can see.
    pub async fn newest(
        &self,
        principal: &Principal,
        r: &Reference,
    ) -> Result<Option<Resource>, ResourceError> {
        if crate::managed::is_managed(r) {
            return Ok(crate::managed::find(r));
        }
        // Another account's ARN finds what that account shares with this one (the filter
        // says so), and nothing else.
        let mut f = r.filter(principal);
        f.limit = Some(1);
        let Some(row) = self.store.db().list(&f).await?.into_iter().next() else {
            return Ok(None);
        };
        match self.store.db().get(&row.arn).await? {
            Some(row) => Ok(Some(self.parse(&row)?)),
            None => Ok(None),
        }
    }

    /// The newest resource a reference names, or an error saying what exists.
    pub async fn get(
        &self,
        principal: &Principal,
        reference: &str,
        kinds: &[Kind],
    ) -> Result<Resource, ResourceError> {
        let parsed = Reference::parse(reference, kinds).map_err(ResourceError::BadReference)?;
        // An ARN says its kind; a plain name may be any of them (image or container recipe).
        let candidates = if reference.starts_with("arn:") {
            vec![parsed.kind]
        } else {
            kinds.to_vec()
        };
        let mut last = None;
        for kind in candidates {
            let r = Reference {
                kind,
                ..parsed.clone()
            };
            if let Some(found) = self.newest(principal, &r).await? {
                return Ok(found);
            }
            last = Some(r);
        }
        let noun = kinds.first().map(|k| kind_noun(*k)).unwrap_or("resource");
        Err(ResourceError::NotFound(match last {
            Some(r) => format!(
                "no {noun} matches `{reference}` (`kiln {} list{}` shows what exists)",
                cli_noun(r.kind),
                if versioned(r.kind) {
                    format!(" --name {}", r.name)
                } else {
                    String::new()
                }
            ),
            None => format!("no {noun} matches `{reference}`"),
        }))
    }

    /// Summaries of `principal`'s account, by name then newest version first.
    pub async fn list(
        &self,
        principal: &Principal,
        kinds: &[Kind],
        o: &ListOptions,
    ) -> Result<Vec<ResourceSummary>, ResourceError> {
        let mut out = Vec::new();
        for k in kinds {
            let f = Filter {
                kind: Some(*k),
                name: o.name.clone(),
                version: o.version.map(|v| v.nodes()).unwrap_or([None; 3]),
                owner: o.owner.clone(),
                arn_prefix: Some(principal.arn_prefix()),
                ..Filter::default()
            };
            for row in self.store.db().list(&f).await? {
                out.push(
                    self.store
                        .decode(&row.summary, &format!("the summary of {}", row.arn))?,
                );
            }
        }
        Ok(out)
    }

    /// Changes the tags of the resource `arn` names exactly, in `principal`'s account
    /// (TagResource, UntagResource): tags are not content, so its digest and version stay.
    pub async fn set_tags(
        &self,
        principal: &Principal,
        arn: &str,
        change: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<Resource, ResourceError> {
        let missing = || ResourceError::NotFound(format!("no resource has the ARN `{arn}`"));
        if !arn.starts_with(&principal.arn_prefix()) {
            return Err(self.refuse_write(principal, arn, missing()).await?);
        }
        let row = self.store.db().get(arn).await?.ok_or_else(missing)?;
        let mut found = self.parse(&row)?;
        let mut tags = found
            .request
            .get("tags")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        change(&mut tags);
        if found.kind == Kind::InfrastructureConfiguration {
            let tag = crate::trust::UNTRUSTED_COMPONENTS_TAG;
            if let Some(v) = tags.get(tag) {
                let checked = v
                    .as_str()
                    .ok_or_else(|| "it must be text".to_string())
                    .and_then(|t| self.untrusted_tag(t));
                if let Err(e) = checked {
                    return Err(Invalid::message(
                        ErrorCode::InvalidParameterValue,
                        format!("tag `{tag}`: {e}"),
                    )
                    .into());
                }
            }
        }
        if found.kind == Kind::ImagePipeline {
            let tag = crate::scheduler::spec::REBUILD_WHEN_TAG;
            if let Some(v) = tags.get(tag) {
                let checked = v
                    .as_str()
                    .ok_or_else(|| "it must be text".to_string())
                    .and_then(crate::scheduler::RebuildWhen::parse_tag);
                if let Err(e) = checked {
                    return Err(Invalid::message(
                        ErrorCode::InvalidParameterValue,
                        format!("tag `{tag}`: {e}"),
                    )
                    .into());
                }
            }
        }
        if let Some(o) = found.request.as_object_mut() {
            if tags.is_empty() {
                o.remove("tags");
            } else {
                o.insert("tags".into(), Value::Object(tags));
            }
        }
        let body = serde_json::to_string(&found)
            .map_err(|e| StoreError::Encode(format!("the resource {arn}: {e}")))?;
        self.store
            .db()
            .update(
                arn,
                kiln_store::Update {
                    body: Some(body),
                    ..Default::default()
                },
            )
            .await?;
        Ok(found)
    }

    /// Deletes one resource (an exact reference), unless others use it: then the error names
    /// them.
    pub async fn delete(
        &self,
        principal: &Principal,
        reference: &str,
        kinds: &[Kind],
    ) -> Result<Resource, ResourceError> {
        let found = self.get(principal, reference, kinds).await?;
        if !found.arn.starts_with(&principal.arn_prefix()) {
            let missing = ResourceError::NotFound(format!("no resource has the ARN `{reference}`"));
            return Err(self.refuse_write(principal, &found.arn, missing).await?);
        }
        let r = Reference::parse(reference, kinds).map_err(ResourceError::BadReference)?;
        if versioned(found.kind) && (r.version.is_none_or(|v| !v.is_exact())) {
            return Err(ResourceError::BadReference(format!(
                "name one version to delete, such as {}/{} (`{reference}` could mean several)",
                found.name,
                found.version.map(|v| v.to_string()).unwrap_or_default()
            )));
        }
        // Users that name it through a wildcard block it only when it is the last match.
        let mut users = Vec::new();
        let prefix = format!(
            "{}{}/{}/",
            principal.arn_prefix(),
            found.kind,
            found.name.to_ascii_lowercase()
        );
        for (from, to) in self.store.db().referrers(&prefix).await? {
            if to == found.arn {
                continue; // the store checks exact references itself
            }
            let Ok(r) = Reference::parse(&to, &[found.kind]) else {
                continue;
            };
            if !r
                .version
                .is_some_and(|v| found.version.is_some_and(|fv| v.matches(&fv)))
            {
                continue;
            }
            let others = self.store.db().list(&r.filter(principal)).await?;
            if others.iter().all(|o| o.arn == found.arn) {
                users.push(from);
            }
        }
        if !users.is_empty() {
            return Err(in_use(&found, users));
        }
        match self.store.db().delete(&found.arn).await {
            Ok(()) => Ok(found),
            Err(DbError::InUse { users, .. }) => Err(in_use(&found, users)),
            Err(e) => Err(e.into()),
        }
    }
}

fn in_use(found: &Resource, users: Vec<String>) -> ResourceError {
    ResourceError::InUse(format!(
        "{} {} is used by {}: delete or change {} first",
        kind_noun(found.kind),
        found.arn,
        users.join(", "),
        if users.len() == 1 { "it" } else { "them" }
    ))
}

/// SHA-256 of a request's JSON (keys sorted), leaving out fields that are not content.
fn content_digest(request: &Value, skip: &[&str]) -> String {
    let mut v = request.clone();
    if let Some(o) = v.as_object_mut() {
        for k in skip {
            o.remove(*k);
        }
    }
    sha256_hex(v.to_string().as_bytes())
}

/// Finds components by ARN in the store (for recipes and ExecuteDocument), as a principal
/// sees them.
pub struct StoreResolver {
    resources: Resources,
    principal: Principal,
}

impl StoreResolver {
    /// A resolver over a store, for what `principal` may use.
    pub fn new(store: Store, principal: Principal) -> Self {
        StoreResolver {
            resources: Resources::new(store),
            principal,
        }
    }
}

#[async_trait]
impl kiln_toe::loader::ComponentResolver for StoreResolver {
    async fn resolve(&self, reference: &str) -> Result<Option<kiln_toe::document::Source>, String> {
        if !reference.starts_with("arn:") {
            return Ok(None);
        }
        let r = Reference::parse(reference, &[Kind::Component])?;
        match self
            .resources
            .newest(&self.principal, &r)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Err(format!(
                "no component matches {reference} (`kiln component list` shows what kiln has)"
            )),
            Some(c) => Ok(Some(kiln_toe::document::Source {
                name: c.arn,
                text: c.data.unwrap_or_default(),
                dir: None,
            })),
        }
    }
}
