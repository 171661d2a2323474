//! Resources with Image Builder's names and rules: components, image and container recipes,
//! infrastructure and distribution configurations, image pipelines. Each is created from a
//! YAML or JSON file whose fields are Image Builder's request shape, kept in the state store
//! with its ARN, and referred to by ARN (or `NAME[/VERSION]`, where VERSION may use `x`).
//!
//! Components and recipes are versioned and immutable; creating one without
//! `semanticVersion` takes the next patch version when the content changed and returns the
//! existing version when it did not. Creating the same thing twice returns what exists, so
//! infrastructure-as-code can re-apply files freely.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_store::{Created, Filter, Kind, Row, StoreError as DbError, Update};
use kiln_yaml::{Diagnostic, Map, Node, Reader};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::recipe::{self, is_name, ComponentSource, Flavor, RecipeSource};
use crate::record::{LOCAL_ACCOUNT, LOCAL_REGION};
use crate::state::{to_json, Store};
use crate::store::{sha256_hex, StoreError};
use crate::version::{Version, VersionFilter};

/// Every ARN kiln makes starts so.
pub fn arn_prefix() -> String {
    format!("arn:kiln:imagebuilder:{LOCAL_REGION}:{LOCAL_ACCOUNT}:")
}

/// A resource's ARN: names are lower-cased, as Image Builder does.
pub fn arn(kind: Kind, name: &str, version: Option<&Version>, build: Option<u32>) -> String {
    let mut a = format!(
        "{}{}/{}",
        arn_prefix(),
        kind.as_str(),
        name.to_ascii_lowercase()
    );
    if let Some(v) = version {
        a.push_str(&format!("/{v}"));
    }
    if let Some(b) = build {
        a.push_str(&format!("/{b}"));
    }
    a
}

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
    }
}

fn versioned(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Component | Kind::ImageRecipe | Kind::ContainerRecipe | Kind::Image
    )
}

/// A reference to resources: an ARN, or `NAME[/VERSION[/BUILD]]` (VERSION may use `x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The kind (from the ARN, or the command).
    pub kind: Kind,
    /// The name.
    pub name: String,
    /// A version filter.
    pub version: Option<VersionFilter>,
    /// A build number.
    pub build: Option<u32>,
}

impl Reference {
    /// Parses a reference to one of `kinds` (the first is assumed for a plain name).
    pub fn parse(text: &str, kinds: &[Kind]) -> Result<Reference, String> {
        let expected = || {
            kinds
                .iter()
                .map(|k| kind_noun(*k))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let (kind, rest) = if let Some(rest) = text.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, _region, _account, resource] = parts.as_slice() else {
                return Err(format!(
                    "`{text}` is not an ARN (arn:kiln:imagebuilder:REGION:ACCOUNT:TYPE/NAME/...)"
                ));
            };
            if *partition != "kiln" || *service != "imagebuilder" {
                return Err(format!(
                    "`{text}` is not a kiln ARN: kiln keeps its own resources; create it in kiln \
                     (kiln component create, ...) and use the ARN kiln prints"
                ));
            }
            let (ty, rest) = resource
                .split_once('/')
                .ok_or_else(|| format!("`{text}` has no TYPE/NAME part"))?;
            let kind: Kind = ty
                .parse()
                .map_err(|_| format!("`{text}`: unknown resource type `{ty}`"))?;
            if !kinds.contains(&kind) {
                return Err(format!(
                    "`{text}` names a {}, not a {}",
                    kind_noun(kind),
                    expected()
                ));
            }
            (kind, rest)
        } else {
            let first = *kinds.first().ok_or("no kind")?;
            (first, text)
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let bad = || {
            format!(
                "`{text}`: name a {} as an ARN or NAME{}",
                expected(),
                if versioned(kind) {
                    "[/VERSION[/BUILD]]"
                } else {
                    ""
                }
            )
        };
        let version = |v: &str| v.parse::<VersionFilter>().map_err(|e| e.to_string());
        let (name, version, build) = match parts.as_slice() {
            [n] if !n.is_empty() => (*n, None, None),
            [n, v] if versioned(kind) && !n.is_empty() => (*n, Some(version(v)?), None),
            [n, v, b] if versioned(kind) && !n.is_empty() => {
                (*n, Some(version(v)?), Some(b.parse().map_err(|_| bad())?))
            }
            _ => return Err(bad()),
        };
        Ok(Reference {
            kind,
            name: name.to_string(),
            version,
            build,
        })
    }

    /// The store filter selecting what it names, newest first.
    pub fn filter(&self) -> Filter {
        Filter {
            kind: Some(self.kind),
            name: Some(self.name.clone()),
            version: self.version.map(|v| v.nodes()).unwrap_or([None; 3]),
            build: self.build,
            ..Filter::default()
        }
    }

    /// As an ARN (with `x` where the filter has it).
    pub fn to_arn(&self) -> String {
        let mut a = format!(
            "{}{}/{}",
            arn_prefix(),
            self.kind.as_str(),
            self.name.to_ascii_lowercase()
        );
        if let Some(v) = self.version {
            a.push_str(&format!("/{v}"));
        }
        if let Some(b) = self.build {
            a.push_str(&format!("/{b}"));
        }
        a
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
    pub kind: String,
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
    pub component_type: Option<String>,
    /// Components: the platform (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Components: the document, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Pipelines: ENABLED or DISABLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// What it refers to (ARNs, some with `x`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
}

impl Resource {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind.parse().unwrap_or(Kind::Component)
    }

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
    pub kind: String,
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
    pub component_type: Option<String>,
    /// ENABLED or DISABLED (pipelines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Resource {
    fn summary(&self) -> ResourceSummary {
        ResourceSummary {
            arn: self.arn.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            version: self.version,
            owner: self.owner.clone(),
            date_created: self.date_created,
            description: self.description.clone(),
            component_type: self.component_type.clone(),
            status: self.status.clone(),
        }
    }
}

/// Why a resource operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The request file has errors (rendered, with file:line:col).
    #[error("{0}")]
    Invalid(String),
    /// Nothing matches a reference.
    #[error("{0}")]
    NotFound(String),
    /// A versioned resource exists with other content.
    #[error("{0}")]
    Immutable(String),
    /// Others use it.
    #[error("{0}")]
    InUse(String),
    /// A configuration or pipeline with that name exists (use update).
    #[error("{0}")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbError> for ResourceError {
    fn from(e: DbError) -> Self {
        ResourceError::Store(StoreError::from(e))
    }
}

/// What `create` did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The resource (new, or the one that already had this content).
    pub resource: Resource,
    /// False when an existing resource was returned.
    pub created: bool,
    /// Warnings about the request, rendered.
    pub warnings: String,
}

/// The login name of whoever runs kiln (`SUDO_USER` first: sudo runs kiln as root for them).
pub fn current_owner() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "root".into())
        })
}

/// An owner as lists filter by it: `self` is whoever runs kiln.
pub fn owner_filter(owner: &str) -> String {
    if owner.eq_ignore_ascii_case("self") {
        current_owner()
    } else {
        owner.to_string()
    }
}

/// Makes a relative path in a request absolute against the request's folder.
fn resolve_path(value: &mut Value, dir: &Path) {
    if let Some(s) = value.as_str() {
        *value = Value::String(dir.join(s).display().to_string());
    }
}

/// A request file, parsed.
struct Request {
    path: PathBuf,
    text: String,
    root: Node,
    reader: Reader,
}

impl Request {
    fn read(path: &Path) -> Result<Request, ResourceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ResourceError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let mut reader = Reader::new();
        let parsed = kiln_yaml::parse(&text).map_err(|d| {
            ResourceError::Invalid(d.render(&path.display().to_string(), &text).to_string())
        })?;
        reader.diagnostics.extend(parsed.diagnostics);
        Ok(Request {
            path: path.to_path_buf(),
            text,
            root: parsed.root,
            reader,
        })
    }

    /// The file's folder, absolute: relative paths in a request are stored resolved.
    fn dir(&self) -> PathBuf {
        let abs = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        match abs.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("/"),
        }
    }

    fn render(&self, diags: &[Diagnostic]) -> String {
        let name = self.path.display().to_string();
        diags
            .iter()
            .map(|d| d.render(&name, &self.text).to_string())
            .collect()
    }

    /// Errors → `Err` (every diagnostic rendered); else the rendered warnings.
    fn finish(&mut self) -> Result<String, ResourceError> {
        self.reader
            .diagnostics
            .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
        let text = self.render(&self.reader.diagnostics);
        if self.reader.has_errors() {
            Err(ResourceError::Invalid(text))
        } else {
            Ok(text)
        }
    }

    fn error_at(&mut self, node: &Node, message: impl Into<String>, hint: Option<String>) {
        self.reader.error(node.span, message, hint);
    }
}

/// Keys of Image Builder's requests that kiln accepts and ignores, per kind.
fn ignored_keys(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Component => &["kmsKeyId", "supportedOsVersions", "changeDescription"],
        Kind::InfrastructureConfiguration => &[
            "instanceTypes",
            "instanceProfileName",
            "securityGroupIds",
            "subnetId",
            "keyPair",
            "snsTopicArn",
            "resourceTags",
            "instanceMetadataOptions",
            "placement",
        ],
        Kind::ImagePipeline => &[
            "enhancedImageMetadataEnabled",
            "imageScanningConfiguration",
            "workflows",
            "executionRole",
            "loggingConfiguration",
        ],
        _ => &[],
    }
}

/// The resources of a store.
#[derive(Debug, Clone)]
pub struct Resources {
    store: Store,
}

/// What lists select.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Name (case-insensitive).
    pub name: Option<String>,
    /// Version filter.
    pub version: Option<VersionFilter>,
    /// Owner (`self` is whoever runs kiln).
    pub owner: Option<String>,
}

impl ListOptions {
    /// The owner filter with `self` resolved.
    pub fn owner(&self) -> Option<String> {
        self.owner.as_deref().map(owner_filter)
    }
}

impl Resources {
    /// A stored resource.
    fn parse(&self, row: &Row) -> Result<Resource, StoreError> {
        self.store
            .decode(&row.body, &format!("the resource {}", row.arn))
    }

    /// The resources of a store.
    pub fn new(store: Store) -> Self {
        Resources { store }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a resource from a request file. `kind` is `ImageRecipe` for both recipe
    /// kinds unless `container` says otherwise (or the file has `containerType`).
    pub async fn create(&self, kind: Kind, file: &Path) -> Result<Outcome, ResourceError> {
        let mut req = Request::read(file)?;
        let draft = self.draft(kind, &mut req).await?;
        self.store_draft(draft, &req).await
    }

    /// Replaces a configuration or pipeline (they are not versioned) with a request file's
    /// content; its ARN stays.
    pub async fn update(&self, kind: Kind, file: &Path) -> Result<Outcome, ResourceError> {
        if versioned(kind) {
            return Err(ResourceError::Immutable(format!(
                "{}s are immutable: create a new version instead",
                kind_noun(kind)
            )));
        }
        let mut req = Request::read(file)?;
        let draft = self.draft(kind, &mut req).await?;
        let arn = arn(kind, &draft.name, None, None);
        let Some(old) = self.store.db().get(&arn).await? else {
            return Err(ResourceError::NotFound(format!(
                "no {} named {} to update: create it first",
                kind_noun(kind),
                draft.name
            )));
        };
        let mut old: Resource = self.parse(&old)?;
        if old.digest == draft.digest {
            return Ok(Outcome {
                resource: old,
                created: false,
                warnings: draft.warnings,
            });
        }
        old.request = draft.request;
        old.digest = draft.digest;
        old.description = draft.description;
        old.status = draft.status;
        old.uses = draft.uses.clone();
        old.source_file = Some(req.path.clone());
        old.date_updated = Some(Utc::now());
        self.store
            .db()
            .update(
                &arn,
                Update {
                    state: old.status.clone(),
                    summary: Some(to_json(&old.summary())?),
                    body: Some(to_json(&old)?),
                    digest: Some(old.digest.clone()),
                    refs: Some(draft.uses),
                },
            )
            .await?;
        Ok(Outcome {
            resource: old,
            created: true,
            warnings: draft.warnings,
        })
    }

    /// Checks a request and turns it into what would be stored.
    async fn draft(&self, kind: Kind, req: &mut Request) -> Result<Draft, ResourceError> {
        let root = req.root.clone();
        let Some(m) = req.reader.map(&root, "a request") else {
            req.finish()?;
            return Err(ResourceError::Invalid(format!(
                "{}: a request is a mapping of Image Builder's fields",
                req.path.display()
            )));
        };
        let m = m.clone();
        match kind {
            Kind::Component => self.draft_component(req, &m).await,
            Kind::ImageRecipe | Kind::ContainerRecipe => {
                let kind = if m.get("containerType").is_some()
                    || m.get("dockerfileTemplateData").is_some()
                    || m.get("targetRepository").is_some()
                {
                    Kind::ContainerRecipe
                } else {
                    kind
                };
                self.draft_recipe(kind, req, &m).await
            }
            Kind::InfrastructureConfiguration => self.draft_infrastructure(req, &m),
            Kind::DistributionConfiguration => self.draft_distribution(req, &m),
            Kind::ImagePipeline => self.draft_pipeline(req, &m).await,
            Kind::Image => Err(ResourceError::Invalid(
                "images are made by builds (kiln build, kiln pipeline start), not created".into(),
            )),
        }
    }

    fn common(
        req: &mut Request,
        m: &Map,
        kind: Kind,
        own: &[&str],
    ) -> (Option<String>, String, Option<String>) {
        let mut keys: Vec<&str> = vec!["name", "description", "tags", "clientToken"];
        keys.extend_from_slice(own);
        keys.extend_from_slice(ignored_keys(kind));
        req.reader
            .known_keys(m, &keys, &format!("a {}", kind_noun(kind)));
        for k in ignored_keys(kind) {
            if let Some(n) = m.get(k) {
                req.reader.warn(
                    n.span,
                    format!("`{k}` is an AWS setting kiln does not use; it is kept but ignored"),
                    None,
                );
            }
        }
        let at = req.root.span;
        let name = req
            .reader
            .required_string(m, "name", at, &format!("a {}", kind_noun(kind)));
        if let (Some(n), Some(node)) = (&name, m.get("name")) {
            if !is_name(n) {
                req.reader.error(
                    node.span,
                    format!("`{n}` is not a valid name"),
                    Some("use up to 128 letters, digits, `-`, `_` and `.`, starting with a letter or digit".into()),
                );
            }
        }
        let description = req.reader.string(m, "description").unwrap_or_default();
        if let Some(t) = m.get("tags") {
            if let Some(tm) = req.reader.map(t, "`tags`") {
                for (k, v) in &tm.entries {
                    if k.as_text().is_none() || v.as_text().is_none() {
                        req.reader
                            .error(k.span, "`tags` maps names to strings", None);
                    }
                }
            }
        }
        let token = req.reader.string(m, "clientToken");
        (name, description, token)
    }

    async fn draft_component(&self, req: &mut Request, m: &Map) -> Result<Draft, ResourceError> {
        let (name, description, token) = Self::common(
            req,
            m,
            Kind::Component,
            &["semanticVersion", "platform", "data", "uri"],
        );
        let version = self.version_field(req, m);
        let platform = req
            .reader
            .string(m, "platform")
            .unwrap_or_else(|| "Linux".into());
        if platform != "Linux" {
            let node = m.get("platform").cloned();
            if let Some(n) = node {
                req.error_at(
                    &n,
                    format!("kiln builds Linux images; a {platform} component cannot run in them"),
                    Some("use platform: Linux".into()),
                );
            }
        }
        let data = match (m.get("data"), m.get("uri")) {
            (Some(d), None) => match d.as_text() {
                Some(t) => Some((
                    t.to_string(),
                    format!(
                        "{} (`data`, line {})",
                        req.path.display(),
                        d.span.start.line
                    ),
                    None,
                )),
                None => {
                    req.error_at(d, "`data` is the component document, as a string (use a YAML block: `data: |`)", None);
                    None
                }
            },
            (None, Some(u)) => {
                let uri = u.as_text().unwrap_or("").to_string();
                let local = uri.strip_prefix("file://").unwrap_or(&uri);
                if uri.starts_with("s3://") {
                    req.error_at(
                        u,
                        "kiln reads component documents from files when creating components",
                        Some(
                            "download it and give `uri: ./document.yaml`, or put it in `data`"
                                .into(),
                        ),
                    );
                    None
                } else {
                    let p = req.dir().join(local);
                    match std::fs::read_to_string(&p) {
                        Ok(t) => Some((
                            t,
                            p.display().to_string(),
                            p.parent().map(Path::to_path_buf),
                        )),
                        Err(e) => {
                            req.error_at(
                                u,
                                format!("cannot read {}: {e}", p.display()),
                                Some("`uri` is relative to the request file's folder".into()),
                            );
                            None
                        }
                    }
                }
            }
            (Some(d), Some(_)) => {
                req.error_at(d, "give `data` or `uri`, not both", None);
                None
            }
            (None, None) => {
                let at = req.root.clone();
                req.error_at(
                    &at,
                    "a component needs its document: `data` (inline) or `uri` (a file)",
                    None,
                );
                None
            }
        };
        let warnings = req.finish()?;
        let (Some(name), Some((text, doc_name, dir))) = (name, data) else {
            return Err(ResourceError::Invalid(format!(
                "{}: invalid",
                req.path.display()
            )));
        };
        let loaded = kiln_toe::load::parse(kiln_toe::document::Source {
            name: doc_name,
            text: text.clone(),
            dir,
        })
        .map_err(|d| {
            ResourceError::Invalid(format!("the component document is not valid:\n{d}"))
        })?;
        let doc = &loaded.document;
        let has_build = doc.phase("build").is_some() || doc.phase("validate").is_some();
        let component_type = if has_build || doc.phase("test").is_none() {
            "BUILD"
        } else {
            "TEST"
        };
        let mut request = req.root.to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            o.remove("uri");
            o.insert("data".into(), Value::String(text.clone()));
        }
        Ok(Draft {
            kind: Kind::Component,
            name,
            version,
            description,
            digest: sha256_hex(format!("{platform}\n{text}").as_bytes()),
            request,
            token,
            uses: Vec::new(),
            component_type: Some(component_type.into()),
            platform: Some(platform),
            data: Some(text),
            status: None,
            warnings,
        })
    }

    /// `semanticVersion`: `Some(Ok(v))` given, `None` to pick one.
    fn version_field(&self, req: &mut Request, m: &Map) -> Option<Version> {
        let node = m.get("semanticVersion")?.clone();
        match node.as_text().map(str::parse::<Version>) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                req.error_at(&node, e.to_string(), Some("write MAJOR.MINOR.PATCH, such as 1.0.0, or leave it out and kiln picks the next version".into()));
                None
            }
            None => {
                req.error_at(&node, "`semanticVersion` is a string such as 1.0.0", None);
                None
            }
        }
    }

    async fn draft_recipe(
        &self,
        kind: Kind,
        req: &mut Request,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let flavor = if kind == Kind::ContainerRecipe {
            Flavor::ContainerRecipe
        } else {
            Flavor::ImageRecipe
        };
        // Relative paths (an `oci:` parent) resolve against the file's folder, and are stored
        // resolved.
        let parsed = recipe::parse_as(
            RecipeSource {
                path: req.dir().join(req.path.file_name().unwrap_or_default()),
                text: req.text.clone(),
            },
            flavor,
        );
        let recipe = match parsed {
            Ok(r) => r,
            Err(e) => return Err(ResourceError::Invalid(e.to_string())),
        };
        let mut warnings = req.render(&recipe.warnings);
        let version = m
            .get("semanticVersion")
            .is_some()
            .then_some(recipe.semantic_version);
        // Components are resources too: named by ARN, and they must exist.
        let mut uses = Vec::new();
        let mut component_arns = Vec::new();
        for c in &recipe.components {
            match &c.source {
                ComponentSource::Path(p) => req.reader.error(
                    c.span,
                    format!("a stored recipe names its components by ARN, not by path ({})", p.display()),
                    Some(format!("create the component first (kiln component create FILE) and write `componentArn: {}component/NAME/x.x.x`", arn_prefix())),
                ),
                ComponentSource::Arn(a) => match Reference::parse(a, &[Kind::Component]) {
                    Err(e) => req.reader.error(c.span, e, None),
                    Ok(r) => match self.newest(&r).await? {
                        None => req.reader.error(
                            c.span,
                            format!("no component matches {a}"),
                            Some("`kiln component list` shows the components kiln has".into()),
                        ),
                        Some(found) => {
                            // An exact reference is to the component itself; a wildcard one
                            // stays a wildcard, resolved at each build.
                            let a = if r.version.is_none_or(|v| v.is_exact()) {
                                found.arn.clone()
                            } else {
                                r.to_arn()
                            };
                            uses.push(a.clone());
                            component_arns.push(a);
                        }
                    },
                },
            }
        }
        if let crate::recipe::ParentImage::Image {
            name,
            version,
            build,
        } = &recipe.parent
        {
            let r = Reference {
                kind: Kind::Image,
                name: name.clone(),
                version: Some(*version),
                build: *build,
            };
            uses.push(r.to_arn());
        }
        warnings.push_str(&req.finish()?);
        let mut request = req.root.to_json();
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
        })
    }

    fn draft_infrastructure(&self, req: &mut Request, m: &Map) -> Result<Draft, ResourceError> {
        let mut own: Vec<&str> = crate::recipe::INFRA_KEYS.to_vec();
        own.push("logging");
        let (name, description, token) =
            Self::common(req, m, Kind::InfrastructureConfiguration, &own);
        let _ = crate::recipe::infrastructure_settings(&mut req.reader, m);
        if let Some(l) = m.get("logging") {
            if let Some(lm) = req.reader.map(l, "`logging`") {
                req.reader
                    .known_keys(lm, &["s3Logs", "localPath"], "`logging`");
                if let Some(s3) = lm.get("s3Logs") {
                    if let Some(sm) = req.reader.map(s3, "`s3Logs`") {
                        req.reader
                            .known_keys(sm, &["s3BucketName", "s3KeyPrefix"], "`s3Logs`");
                        req.reader
                            .required_string(sm, "s3BucketName", s3.span, "`s3Logs`");
                    }
                }
            }
        }
        let warnings = req.finish()?;
        let name = name.ok_or_else(|| ResourceError::Invalid("no name".into()))?;
        let mut request = req.root.to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            // A relative local log folder is relative to the request file.
            if let Some(p) = o.get_mut("logging").and_then(|l| l.get_mut("localPath")) {
                resolve_path(p, &req.dir());
            }
        }
        let digest = content_digest(&request, &[]);
        Ok(Draft::plain(
            Kind::InfrastructureConfiguration,
            name,
            description,
            digest,
            request,
            token,
            warnings,
        ))
    }

    fn draft_distribution(&self, req: &mut Request, m: &Map) -> Result<Draft, ResourceError> {
        let (name, description, token) =
            Self::common(req, m, Kind::DistributionConfiguration, &["distributions"]);
        let aws = [
            "amiDistributionConfiguration",
            "containerDistributionConfiguration",
            "licenseConfigurationArns",
            "launchTemplateConfigurations",
            "s3ExportConfiguration",
            "fastLaunchConfigurations",
            "ssmParameterConfigurations",
        ];
        let mut regions: Vec<String> = Vec::new();
        match m.get("distributions") {
            None => {
                let at = req.root.clone();
                req.error_at(
                    &at,
                    "a distribution configuration needs `distributions`: a list of regions",
                    Some("for example `distributions: [{region: local}]`".into()),
                );
            }
            Some(d) => {
                let items = req
                    .reader
                    .list(d, "`distributions`")
                    .unwrap_or_default()
                    .to_vec();
                if items.is_empty() {
                    req.error_at(d, "`distributions` is empty", None);
                }
                for item in &items {
                    let Some(dm) = req.reader.map(item, "a distribution") else {
                        continue;
                    };
                    let mut keys = vec!["region", "path"];
                    keys.extend(aws);
                    req.reader.known_keys(dm, &keys, "a distribution");
                    for k in aws {
                        if let Some(n) = dm.get(k) {
                            req.reader.warn(n.span, format!("`{k}` is an AWS setting kiln does not use; it is kept but ignored"), Some("kiln writes each region's images to its folder (`path`, or $KILN_HOME/regions/REGION)".into()));
                        }
                    }
                    if let Some(region) =
                        req.reader
                            .required_string(dm, "region", item.span, "a distribution")
                    {
                        if !is_name(&region) {
                            req.reader.error(
                                item.span,
                                format!("`{region}` is not a valid region name"),
                                None,
                            );
                        } else if regions.contains(&region) {
                            req.reader.error(
                                item.span,
                                format!("region `{region}` is listed twice"),
                                None,
                            );
                        }
                        regions.push(region);
                    }
                    req.reader.string(dm, "path");
                }
            }
        }
        let warnings = req.finish()?;
        let name = name.ok_or_else(|| ResourceError::Invalid("no name".into()))?;
        let mut request = req.root.to_json();
        let dir = req.dir();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            if let Some(Value::Array(items)) = o.get_mut("distributions") {
                for item in items {
                    if let Some(p) = item.get_mut("path") {
                        resolve_path(p, &dir);
                    }
                }
            }
        }
        let digest = content_digest(&request, &[]);
        Ok(Draft::plain(
            Kind::DistributionConfiguration,
            name,
            description,
            digest,
            request,
            token,
            warnings,
        ))
    }

    async fn draft_pipeline(&self, req: &mut Request, m: &Map) -> Result<Draft, ResourceError> {
        let (name, description, token) = Self::common(
            req,
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
        let mut uses = Vec::new();
        let mut normalized: Vec<(&str, String)> = Vec::new();
        let recipe_keys = match (m.get("imageRecipeArn"), m.get("containerRecipeArn")) {
            (Some(_), Some(c)) => {
                req.error_at(
                    c,
                    "a pipeline has `imageRecipeArn` or `containerRecipeArn`, not both",
                    None,
                );
                vec![]
            }
            (None, None) => {
                let at = req.root.clone();
                req.error_at(
                    &at,
                    "a pipeline needs `imageRecipeArn` or `containerRecipeArn`",
                    None,
                );
                vec![]
            }
            (Some(_), None) => vec![("imageRecipeArn", Kind::ImageRecipe)],
            (None, Some(_)) => vec![("containerRecipeArn", Kind::ContainerRecipe)],
        };
        let mut refs: Vec<(&str, Kind, bool)> = recipe_keys
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
        for (key, kind, required) in refs {
            let Some(node) = m.get(key).cloned() else {
                if required {
                    let at = req.root.clone();
                    req.error_at(&at, format!("a pipeline needs `{key}`"), None);
                }
                continue;
            };
            let Some(text) = node.as_text() else {
                req.error_at(&node, format!("`{key}` is an ARN"), None);
                continue;
            };
            match Reference::parse(text, &[kind]) {
                Err(e) => req.error_at(&node, e, None),
                Ok(r) => match self.newest(&r).await? {
                    None => req.error_at(
                        &node,
                        format!("no {} matches {text}", kind_noun(kind)),
                        Some(format!("`kiln {} list` shows what exists", cli_noun(kind))),
                    ),
                    Some(found) => {
                        let a = if r.version.is_some() || !versioned(kind) {
                            r.to_arn()
                        } else {
                            found.arn.clone()
                        };
                        uses.push(a.clone());
                        normalized.push((key, a));
                    }
                },
            }
        }
        if let Some(t) = m.get("imageTestsConfiguration") {
            if let Some(tm) = req.reader.map(t, "`imageTestsConfiguration`") {
                req.reader.known_keys(
                    tm,
                    &["imageTestsEnabled", "timeoutMinutes"],
                    "`imageTestsConfiguration`",
                );
                req.reader.boolean(tm, "imageTestsEnabled");
                if let Some(mins) = req.reader.integer(tm, "timeoutMinutes") {
                    if !(60..=1440).contains(&mins) {
                        if let Some(n) = tm.get("timeoutMinutes") {
                            req.reader.error(
                                n.span,
                                "`timeoutMinutes` must be between 60 and 1440",
                                None,
                            );
                        }
                    }
                }
            }
        }
        if let Some(s) = m.get("schedule") {
            if let Some(sm) = req.reader.map(s, "`schedule`") {
                req.reader.known_keys(
                    sm,
                    &[
                        "scheduleExpression",
                        "timezone",
                        "pipelineExecutionStartCondition",
                    ],
                    "`schedule`",
                );
                if let Some(e) = req.reader.string(sm, "scheduleExpression") {
                    let ok = e
                        .strip_prefix("cron(")
                        .and_then(|r| r.strip_suffix(')'))
                        .is_some_and(|f| (5..=6).contains(&f.split_whitespace().count()))
                        || e.strip_prefix("rate(")
                            .and_then(|r| r.strip_suffix(')'))
                            .is_some();
                    if !ok {
                        if let Some(n) = sm.get("scheduleExpression") {
                            req.reader.error(n.span, format!("`{e}` is not a schedule expression"), Some("write cron(MIN HOUR DAY MONTH WEEKDAY YEAR), as Image Builder does, e.g. cron(0 3 ? * sun *)".into()));
                        }
                    }
                }
                if let Some(c) = req.reader.string(sm, "pipelineExecutionStartCondition") {
                    if !matches!(
                        c.as_str(),
                        "EXPRESSION_MATCH_ONLY"
                            | "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
                    ) {
                        if let Some(n) = sm.get("pipelineExecutionStartCondition") {
                            req.reader.error(n.span, format!("unknown start condition `{c}`"), Some("use EXPRESSION_MATCH_ONLY or EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE".into()));
                        }
                    }
                }
                req.reader.string(sm, "timezone");
            }
        }
        let status = req
            .reader
            .string(m, "status")
            .unwrap_or_else(|| "ENABLED".into());
        if !matches!(status.as_str(), "ENABLED" | "DISABLED") {
            if let Some(n) = m.get("status").cloned() {
                req.error_at(
                    &n,
                    format!("unknown status `{status}`"),
                    Some("use ENABLED or DISABLED".into()),
                );
            }
        }
        let warnings = req.finish()?;
        let name = name.ok_or_else(|| ResourceError::Invalid("no name".into()))?;
        let mut request = req.root.to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            o.insert("status".into(), Value::String(status.clone()));
            for (k, a) in normalized {
                o.insert(k.into(), Value::String(a));
            }
        }
        let digest = content_digest(&request, &[]);
        let mut d = Draft::plain(
            Kind::ImagePipeline,
            name,
            description,
            digest,
            request,
            token,
            warnings,
        );
        d.uses = uses;
        d.status = Some(status);
        Ok(d)
    }

    /// Stores a draft: picks a version, returns what exists when the content is the same.
    async fn store_draft(&self, d: Draft, req: &Request) -> Result<Outcome, ResourceError> {
        let now = Utc::now();
        let mut version = d.version;
        if versioned(d.kind) {
            let r = Reference {
                kind: d.kind,
                name: d.name.clone(),
                version: None,
                build: None,
            };
            let newest = self.newest(&r).await?;
            match (version, &newest) {
                // No version: the newest when unchanged, else the next patch.
                (None, Some(n)) if n.digest == d.digest => {
                    return Ok(Outcome {
                        resource: n.clone(),
                        created: false,
                        warnings: d.warnings,
                    });
                }
                (None, Some(n)) => version = Some(n.version.unwrap_or_default().next_patch()),
                (None, None) => {
                    version = Some(Version {
                        major: 1,
                        minor: 0,
                        patch: 0,
                    })
                }
                (Some(_), _) => {}
            }
        }
        let build = (d.kind == Kind::Component).then_some(1);
        let arn = arn(d.kind, &d.name, version.as_ref(), build);
        let mut request = d.request.clone();
        if let (Some(v), Some(o)) = (version, request.as_object_mut()) {
            o.insert("semanticVersion".into(), Value::String(v.to_string()));
        }
        let resource = Resource {
            arn: arn.clone(),
            kind: d.kind.as_str().to_string(),
            name: d.name.clone(),
            version,
            owner: current_owner(),
            date_created: now,
            date_updated: None,
            description: d.description.clone(),
            digest: d.digest.clone(),
            request,
            source_file: Some(std::path::absolute(&req.path).unwrap_or(req.path.clone())),
            component_type: d.component_type.clone(),
            platform: d.platform.clone(),
            data: d.data.clone(),
            status: d.status.clone(),
            uses: d.uses.clone(),
        };
        let mut row = crate::state::row(d.kind, arn.clone(), d.name.clone());
        row.version = version.as_ref().map(crate::state::nodes);
        row.build = build;
        row.owner = resource.owner.clone();
        row.state = d.status.clone();
        row.digest = d.digest.clone();
        row.created_ms = crate::state::millis(now);
        row.summary = to_json(&resource.summary())?;
        row.body = to_json(&resource)?;
        match self
            .store
            .db()
            .create(row, d.uses.clone(), d.token.clone())
            .await
        {
            Ok(Created::New(_)) => Ok(Outcome {
                resource,
                created: true,
                warnings: d.warnings,
            }),
            Ok(Created::Existing(row)) => Ok(Outcome {
                resource: self.parse(&row)?,
                created: false,
                warnings: d.warnings,
            }),
            Err(DbError::AlreadyExists { existing }) => {
                let existing: Resource = self.parse(&existing)?;
                if existing.digest == d.digest {
                    return Ok(Outcome {
                        resource: existing,
                        created: false,
                        warnings: d.warnings,
                    });
                }
                Err(if versioned(d.kind) {
                    let next = self
                        .newest(&Reference {
                            kind: d.kind,
                            name: d.name.clone(),
                            version: None,
                            build: None,
                        })
                        .await?
                        .and_then(|n| n.version)
                        .map(|v| v.next_patch().to_string())
                        .unwrap_or_default();
                    ResourceError::Immutable(format!(
                        "{} {} {} already exists with different content, and {}s are immutable: \
                         give a new semanticVersion (the next free one is {next}), or leave \
                         semanticVersion out and kiln takes the next version",
                        kind_noun(d.kind),
                        d.name,
                        version.map(|v| v.to_string()).unwrap_or_default(),
                        kind_noun(d.kind),
                    ))
                } else {
                    ResourceError::Exists(format!(
                        "{} {} already exists with different content: change it with `kiln {} update {}`",
                        kind_noun(d.kind),
                        d.name,
                        cli_noun(d.kind),
                        req.path.display()
                    ))
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The newest resource a reference names.
    pub async fn newest(&self, r: &Reference) -> Result<Option<Resource>, ResourceError> {
        let mut f = r.filter();
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
    pub async fn get(&self, text: &str, kinds: &[Kind]) -> Result<Resource, ResourceError> {
        let parsed = Reference::parse(text, kinds).map_err(ResourceError::NotFound)?;
        // An ARN says its kind; a plain name may be any of them (image or container recipe).
        let candidates = if text.starts_with("arn:") {
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
            if let Some(found) = self.newest(&r).await? {
                return Ok(found);
            }
            last = Some(r);
        }
        let noun = kinds.first().map(|k| kind_noun(*k)).unwrap_or("resource");
        Err(ResourceError::NotFound(match last {
            Some(r) => format!(
                "no {noun} matches `{text}` (`kiln {} list{}` shows what exists)",
                cli_noun(r.kind),
                if versioned(r.kind) {
                    format!(" --name {}", r.name)
                } else {
                    String::new()
                }
            ),
            None => format!("no {noun} matches `{text}`"),
        }))
    }

    /// Summaries, by name then newest version first.
    pub async fn list(
        &self,
        kinds: &[Kind],
        o: &ListOptions,
    ) -> Result<Vec<ResourceSummary>, ResourceError> {
        let mut out = Vec::new();
        for k in kinds {
            let f = Filter {
                kind: Some(*k),
                name: o.name.clone(),
                version: o.version.map(|v| v.nodes()).unwrap_or([None; 3]),
                owner: o.owner(),
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

    /// Deletes one resource (an exact reference), unless others use it: then the error names
    /// them.
    pub async fn delete(&self, text: &str, kinds: &[Kind]) -> Result<Resource, ResourceError> {
        let found = self.get(text, kinds).await?;
        let r = Reference::parse(text, kinds).map_err(ResourceError::NotFound)?;
        if versioned(found.kind()) && (r.version.is_none_or(|v| !v.is_exact())) {
            return Err(ResourceError::NotFound(format!(
                "name one version to delete, such as {}/{} (`{text}` could mean several)",
                found.name,
                found.version.map(|v| v.to_string()).unwrap_or_default()
            )));
        }
        // Users that name it through a wildcard block it only when it is the last match.
        let mut users = Vec::new();
        let prefix = format!(
            "{}{}/{}/",
            arn_prefix(),
            found.kind,
            found.name.to_ascii_lowercase()
        );
        for (from, to) in self.store.db().referrers(&prefix).await? {
            if to == found.arn {
                continue; // the store checks exact references itself
            }
            let Ok(r) = Reference::parse(&to, &[found.kind()]) else {
                continue;
            };
            if !r
                .version
                .is_some_and(|v| found.version.is_some_and(|fv| v.matches(&fv)))
            {
                continue;
            }
            let others = self.store.db().list(&r.filter()).await?;
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
        kind_noun(found.kind()),
        found.arn,
        users.join(", "),
        if users.len() == 1 { "it" } else { "them" }
    ))
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
    }
}

/// What a request becomes before it is stored.
struct Draft {
    kind: Kind,
    name: String,
    version: Option<Version>,
    description: String,
    digest: String,
    request: Value,
    token: Option<String>,
    uses: Vec<String>,
    component_type: Option<String>,
    platform: Option<String>,
    data: Option<String>,
    status: Option<String>,
    warnings: String,
}

impl Draft {
    fn plain(
        kind: Kind,
        name: String,
        description: String,
        digest: String,
        request: Value,
        token: Option<String>,
        warnings: String,
    ) -> Draft {
        Draft {
            kind,
            name,
            version: None,
            description,
            digest,
            request,
            token,
            uses: Vec::new(),
            component_type: None,
            platform: None,
            data: None,
            status: None,
            warnings,
        }
    }
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

/// Finds components by ARN in the store (for recipes and ExecuteDocument).
pub struct StoreResolver {
    resources: Resources,
}

impl StoreResolver {
    /// A resolver over a store.
    pub fn new(store: Store) -> Self {
        StoreResolver {
            resources: Resources::new(store),
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
        match self.resources.newest(&r).await.map_err(|e| e.to_string())? {
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
