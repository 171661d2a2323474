//! Checking a request: what every kind shares, and what a request becomes before it is stored.

use std::path::{Path, PathBuf};

use kiln_store::Kind;
use kiln_yaml::{Diagnostic, Map, Node, Reader};
use serde_json::Value;

use super::{kind_noun, ErrorCode, Invalid, Reference, ResourceError, Resources};
use crate::principal::Principal;
use crate::recipe::is_name;
use crate::request::{Document, Operation, Request};
use crate::version::Version;

/// A request's document while it is checked: every problem is collected.
pub(super) struct Checker<'d> {
    pub op: Operation,
    pub doc: &'d Document,
    pub reader: Reader,
    /// The resource an update names by ARN.
    pub target: Option<Reference>,
}

impl<'d> Checker<'d> {
    pub fn new(request: &'d Request) -> Self {
        let doc = &request.document;
        let mut reader = Reader::new();
        reader.diagnostics.extend(doc.diagnostics().iter().cloned());
        Checker {
            op: request.operation,
            doc,
            reader,
            target: None,
        }
    }

    pub fn root(&self) -> &'d Node {
        self.doc.root()
    }

    pub fn render(&self, diags: &[Diagnostic]) -> String {
        self.doc.render(diags)
    }

    /// The problems as an error of the request; `code` when the input problems do not say
    /// which error they are.
    pub fn invalid(&self, code: Option<ErrorCode>, diagnostics: Vec<Diagnostic>) -> ResourceError {
        let doc = self.doc;
        let mut i = Invalid::from_diagnostics(
            ErrorCode::InvalidParameterValue,
            doc.name(),
            doc.text(),
            Some(doc.root()),
            diagnostics,
        );
        i.code = code.unwrap_or_else(|| Invalid::code_of(&i.problems));
        i.into()
    }

    /// Errors → `Err` (every diagnostic rendered); else the rendered warnings.
    pub fn finish(&mut self) -> Result<String, ResourceError> {
        self.reader
            .diagnostics
            .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
        if self.reader.has_errors() {
            Err(self.invalid(None, self.reader.diagnostics.clone()))
        } else {
            Ok(self.render(&self.reader.diagnostics))
        }
    }

    pub fn error_at(&mut self, node: &Node, message: impl Into<String>, hint: Option<String>) {
        self.reader.error(node.span, message, hint);
    }

    /// A path on the machine kiln runs on: a request file may name one (relative to its
    /// folder); a request sent over the network may not, since kiln writes there as root.
    pub fn local_path(&mut self, node: &Node) {
        let Some(p) = node.as_text() else { return };
        if self.doc.dir().is_none() {
            self.error_at(
                node,
                format!("`{p}` is a path on the server, which a request over the API cannot name"),
                Some(
                    "leave it out: kiln keeps what the API makes under its own data directory"
                        .into(),
                ),
            );
        }
    }

    /// The request's folder, for relative paths (`local_path` refused them without one).
    pub fn dir(&self) -> PathBuf {
        self.doc
            .dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// Makes a relative path in a request absolute against the request's folder.
pub(super) fn resolve_path(value: &mut Value, dir: &Path) {
    if let Some(s) = value.as_str() {
        *value = Value::String(dir.join(s).display().to_string());
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
            "resourceTags",
            "instanceMetadataOptions",
            "placement",
        ],
        Kind::ImagePipeline => &[
            "enhancedImageMetadataEnabled",
            "workflows",
            "executionRole",
            "loggingConfiguration",
        ],
        _ => &[],
    }
}

/// What a request becomes before it is stored.
pub(super) struct Draft {
    pub kind: Kind,
    pub name: String,
    pub version: Option<Version>,
    pub description: String,
    pub digest: String,
    pub request: Value,
    pub token: Option<String>,
    pub uses: Vec<String>,
    pub component_type: Option<super::ComponentType>,
    pub platform: Option<String>,
    pub data: Option<String>,
    pub status: Option<super::PipelineStatus>,
    pub warnings: String,
    /// For an update that names its resource by ARN: the field, and what it names.
    pub target: Option<(&'static str, Reference)>,
}

impl Draft {
    /// A resource that is not versioned (a configuration, a pipeline): its digest is its whole
    /// request's.
    pub fn plain(
        kind: Kind,
        name: String,
        description: String,
        request: Value,
        token: Option<String>,
        warnings: String,
    ) -> Draft {
        Draft {
            kind,
            name,
            version: None,
            description,
            digest: super::content_digest(&request, &[]),
            request,
            token,
            uses: Vec::new(),
            component_type: None,
            platform: None,
            data: None,
            status: None,
            warnings,
            target: None,
        }
    }
}

/// The fields every kind has: `(name, description, clientToken)`.
pub(super) fn common(
    c: &mut Checker,
    m: &Map,
    kind: Kind,
    own: &[&str],
) -> (Option<String>, String, Option<String>) {
    let mut keys: Vec<&str> = vec!["name", "description", "tags", "clientToken"];
    keys.extend_from_slice(own);
    keys.extend_from_slice(ignored_keys(kind));
    let identity = c.op.identity_key();
    keys.extend(identity);
    c.reader
        .known_keys(m, &keys, &format!("a {}", kind_noun(kind)));
    for k in ignored_keys(kind) {
        if let Some(n) = m.get(k) {
            c.reader.warn(
                n.span,
                format!("`{k}` is an AWS setting kiln does not use; it is kept but ignored"),
                None,
            );
        }
    }
    let at = c.root().span;
    let name = match identity.and_then(|k| m.get(k).map(|n| (k, n))) {
        Some((key, node)) => target_name(c, m, key, node),
        None => c
            .reader
            .required_string(m, "name", at, &format!("a {}", kind_noun(kind))),
    };
    if let (Some(n), Some(node)) = (&name, m.get("name")) {
        if !is_name(n) {
            c.reader.error(
                node.span,
                format!("`{n}` is not a valid name"),
                Some("use up to 128 letters, digits, `-`, `_` and `.`, starting with a letter or digit".into()),
            );
        }
    }
    let description = c.reader.string(m, "description").unwrap_or_default();
    if let Some(t) = m.get("tags") {
        if let Some(tm) = c.reader.map(t, "`tags`") {
            for (k, v) in &tm.entries {
                if k.as_text().is_none() || v.as_text().is_none() {
                    c.reader.error(k.span, "`tags` maps names to strings", None);
                }
            }
        }
    }
    let token = c.reader.string(m, "clientToken");
    (name, description, token)
}

/// The name of the resource an update names by ARN, as Image Builder's update requests do.
fn target_name(c: &mut Checker, m: &Map, key: &str, node: &Node) -> Option<String> {
    if m.get("name").is_some() {
        c.error_at(node, format!("give `name` or `{key}`, not both"), None);
        return None;
    }
    let Some(text) = node.as_text().filter(|t| t.starts_with("arn:")) else {
        c.error_at(node, format!("`{key}` is an ARN"), None);
        return None;
    };
    match Reference::parse(text, &[c.op.kind()]) {
        Ok(r) => {
            let name = r.name.clone();
            c.target = Some(r);
            Some(name)
        }
        Err(e) => {
            c.error_at(node, e, None);
            None
        }
    }
}

/// An error for a draft that cannot be made although no error was reported (a bug).
pub(super) fn unreported(c: &Checker, what: &str) -> ResourceError {
    Invalid::message(
        ErrorCode::InvalidParameterValue,
        format!("{}: {what}", c.doc.name()),
    )
    .into()
}

impl Resources {
    /// Checks a request and turns it into what would be stored.
    pub(super) async fn draft(
        &self,
        principal: &Principal,
        request: &Request,
    ) -> Result<Draft, ResourceError> {
        let mut c = Checker::new(request);
        let Some(m) = c.reader.map(c.root(), "a request") else {
            c.reader
                .diagnostics
                .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
            return Err(c.invalid(
                Some(ErrorCode::InvalidRequest),
                c.reader.diagnostics.clone(),
            ));
        };
        let mut draft = match request.operation {
            Operation::CreateComponent => self.draft_component(&mut c, m),
            Operation::CreateImageRecipe => {
                self.draft_recipe(principal, Kind::ImageRecipe, &mut c, m)
                    .await
            }
            Operation::CreateContainerRecipe => {
                self.draft_recipe(principal, Kind::ContainerRecipe, &mut c, m)
                    .await
            }
            Operation::CreateInfrastructureConfiguration
            | Operation::UpdateInfrastructureConfiguration => {
                self.draft_infrastructure(principal, &mut c, m).await
            }
            Operation::CreateDistributionConfiguration
            | Operation::UpdateDistributionConfiguration => self.draft_distribution(&mut c, m),
            Operation::CreateImagePipeline | Operation::UpdateImagePipeline => {
                self.draft_pipeline(principal, &mut c, m).await
            }
            Operation::CreateLifecyclePolicy | Operation::UpdateLifecyclePolicy => {
                self.draft_lifecycle(&mut c, m)
            }
        }?;
        draft.target = request.operation.identity_key().zip(c.target.take());
        Ok(draft)
    }
}
