//! Requests: an Image Builder operation and the document of its fields.
//!
//! A request arrives as text (a CLI user's request file, an HTTP body) and is kept as a
//! [`kiln_yaml::Node`] tree, so that each problem found while checking it can be shown at its
//! `FILE:LINE:COL` to a CLI user and named by its field (`components[1].componentArn`) to an
//! API user. The core never opens a request file: the caller reads it and says which folder
//! relative paths in it resolve against, if any.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_store::Kind;
use kiln_yaml::{Diagnostic, Node, NodeKind, Span};

use crate::resources::{ErrorCode, Invalid, ResourceError};

/// An Image Builder operation kiln takes as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `CreateComponent`.
    CreateComponent,
    /// `CreateImageRecipe`.
    CreateImageRecipe,
    /// `CreateContainerRecipe`.
    CreateContainerRecipe,
    /// `CreateInfrastructureConfiguration`.
    CreateInfrastructureConfiguration,
    /// `UpdateInfrastructureConfiguration`.
    UpdateInfrastructureConfiguration,
    /// `CreateDistributionConfiguration`.
    CreateDistributionConfiguration,
    /// `UpdateDistributionConfiguration`.
    UpdateDistributionConfiguration,
    /// `CreateImagePipeline`.
    CreateImagePipeline,
    /// `UpdateImagePipeline`.
    UpdateImagePipeline,
    /// `CreateLifecyclePolicy`.
    CreateLifecyclePolicy,
    /// `UpdateLifecyclePolicy`.
    UpdateLifecyclePolicy,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 11] = [
        Operation::CreateComponent,
        Operation::CreateImageRecipe,
        Operation::CreateContainerRecipe,
        Operation::CreateInfrastructureConfiguration,
        Operation::UpdateInfrastructureConfiguration,
        Operation::CreateDistributionConfiguration,
        Operation::UpdateDistributionConfiguration,
        Operation::CreateImagePipeline,
        Operation::UpdateImagePipeline,
        Operation::CreateLifecyclePolicy,
        Operation::UpdateLifecyclePolicy,
    ];

    /// The operation's name in the Image Builder API.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CreateComponent => "CreateComponent",
            Operation::CreateImageRecipe => "CreateImageRecipe",
            Operation::CreateContainerRecipe => "CreateContainerRecipe",
            Operation::CreateInfrastructureConfiguration => "CreateInfrastructureConfiguration",
            Operation::UpdateInfrastructureConfiguration => "UpdateInfrastructureConfiguration",
            Operation::CreateDistributionConfiguration => "CreateDistributionConfiguration",
            Operation::UpdateDistributionConfiguration => "UpdateDistributionConfiguration",
            Operation::CreateImagePipeline => "CreateImagePipeline",
            Operation::UpdateImagePipeline => "UpdateImagePipeline",
            Operation::CreateLifecyclePolicy => "CreateLifecyclePolicy",
            Operation::UpdateLifecyclePolicy => "UpdateLifecyclePolicy",
        }
    }

    /// The kind of resource it creates or updates.
    pub fn kind(self) -> Kind {
        match self {
            Operation::CreateComponent => Kind::Component,
            Operation::CreateImageRecipe => Kind::ImageRecipe,
            Operation::CreateContainerRecipe => Kind::ContainerRecipe,
            Operation::CreateInfrastructureConfiguration
            | Operation::UpdateInfrastructureConfiguration => Kind::InfrastructureConfiguration,
            Operation::CreateDistributionConfiguration
            | Operation::UpdateDistributionConfiguration => Kind::DistributionConfiguration,
            Operation::CreateImagePipeline | Operation::UpdateImagePipeline => Kind::ImagePipeline,
            Operation::CreateLifecyclePolicy | Operation::UpdateLifecyclePolicy => {
                Kind::LifecyclePolicy
            }
        }
    }

    /// True for the operations that change an existing resource.
    pub fn is_update(self) -> bool {
        matches!(
            self,
            Operation::UpdateInfrastructureConfiguration
                | Operation::UpdateDistributionConfiguration
                | Operation::UpdateImagePipeline
                | Operation::UpdateLifecyclePolicy
        )
    }

    /// The field an update names its resource by, as Image Builder's update requests do
    /// (`infrastructureConfigurationArn`, ...); `None` for creates, which take `name`.
    pub fn identity_key(self) -> Option<&'static str> {
        match self {
            Operation::UpdateInfrastructureConfiguration => Some("infrastructureConfigurationArn"),
            Operation::UpdateDistributionConfiguration => Some("distributionConfigurationArn"),
            Operation::UpdateImagePipeline => Some("imagePipelineArn"),
            Operation::UpdateLifecyclePolicy => Some("lifecyclePolicyArn"),
            _ => None,
        }
    }

    /// The operation creating a kind; `None` for images, which builds make.
    pub fn create(kind: Kind) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|o| o.kind() == kind && !o.is_update())
    }

    /// The operation updating a kind; `None` for the versioned kinds, which are immutable.
    pub fn update(kind: Kind) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|o| o.kind() == kind && o.is_update())
    }

    /// `CreateContainerRecipe` for a recipe document with a container recipe's fields
    /// (`containerType`, `dockerfileTemplateData`, `targetRepository`), else
    /// `CreateImageRecipe`: one `kiln recipe create` takes both.
    pub fn create_recipe(document: &Document) -> Operation {
        let container = document.root().as_map().is_some_and(|m| {
            [
                "containerType",
                "dockerfileTemplateData",
                "targetRepository",
            ]
            .iter()
            .any(|k| m.get(k).is_some())
        });
        if container {
            Operation::CreateContainerRecipe
        } else {
            Operation::CreateImageRecipe
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("kiln takes no {s} request"))
    }
}

/// A request's fields, parsed, with where they came from.
#[derive(Debug, Clone)]
pub struct Document {
    name: String,
    text: String,
    root: Node,
    dir: Option<PathBuf>,
    file: Option<PathBuf>,
    diagnostics: Vec<Diagnostic>,
}

impl Document {
    /// Parses a request's text (YAML, or JSON, which YAML reads too). `name` names it in
    /// messages; relative paths in it resolve against `dir`. Without a folder (a request that
    /// came over the network) kiln reads no local file the request names.
    pub fn parse(
        name: impl Into<String>,
        text: impl Into<String>,
        dir: Option<PathBuf>,
    ) -> Result<Document, ResourceError> {
        let (name, text) = (name.into(), text.into());
        match kiln_yaml::parse(&text) {
            Ok(parsed) => Ok(Document {
                name,
                text,
                root: parsed.root,
                dir,
                file: None,
                diagnostics: parsed.diagnostics,
            }),
            Err(d) => Err(ResourceError::Invalid(Box::new(Invalid::from_diagnostics(
                ErrorCode::InvalidRequest,
                &name,
                &text,
                None,
                vec![d],
            )))),
        }
    }

    /// A request file's text, as the CLI read it: named as the user gave `path`, relative
    /// paths resolve against its folder, and resources made from it record it as their
    /// source file.
    pub fn from_file(path: &Path, text: impl Into<String>) -> Result<Document, ResourceError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = match abs.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("/"),
        };
        let mut doc = Document::parse(path.display().to_string(), text, Some(dir))?;
        doc.file = Some(abs);
        Ok(doc)
    }

    /// What messages call it: the file as given, or the request's operation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text, as received.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The root node (a mapping, for a request that can be valid).
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The folder relative paths resolve against; `None` when local files are out of reach.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The request file (absolute), when the request is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Problems the parser found that left the tree usable (duplicate keys).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Diagnostics rendered against this document, as the CLI prints them.
    pub fn render(&self, diagnostics: &[Diagnostic]) -> String {
        diagnostics
            .iter()
            .map(|d| d.render(&self.name, &self.text).to_string())
            .collect()
    }

    /// The field a span is about, as an API user names it (`components[1].componentArn`);
    /// `None` for the request as a whole.
    pub fn field_at(&self, span: Span) -> Option<String> {
        field_path(&self.root, span)
    }
}

/// An operation and its fields.
#[derive(Debug, Clone)]
pub struct Request {
    /// What is asked.
    pub operation: Operation,
    /// The request's fields.
    pub document: Document,
}

impl Request {
    /// A request.
    pub fn new(operation: Operation, document: Document) -> Self {
        Request {
            operation,
            document,
        }
    }
}

/// The path of the deepest field of `root` whose node covers `span`.
pub(crate) fn field_path(root: &Node, span: Span) -> Option<String> {
    let mut path = String::new();
    let mut node = root;
    loop {
        match &node.kind {
            NodeKind::Map(m) => {
                // The last entry that covers the span: a block node's end may reach the start
                // of the next one.
                let found = m
                    .entries
                    .iter()
                    .rev()
                    .find(|(k, v)| covers(k.span.start, v.span.end.max(k.span.end), span));
                let Some((k, v)) = found else { break };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k.as_scalar().map(|s| s.text.clone()).unwrap_or_default());
                if !covers(v.span.start, v.span.end, span) {
                    break;
                }
                node = v;
            }
            NodeKind::Seq(items) => {
                let found = items
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, item)| covers(item.span.start, item.span.end, span));
                let Some((i, item)) = found else { break };
                path.push_str(&format!("[{i}]"));
                node = item;
            }
            NodeKind::Scalar(_) => break,
        }
    }
    (!path.is_empty()).then_some(path)
}

fn covers(start: kiln_yaml::Pos, end: kiln_yaml::Pos, span: Span) -> bool {
    start <= span.start && span.end <= end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(doc: &Document, line: u32, col: u32) -> Option<String> {
        let p = kiln_yaml::Pos { line, col };
        doc.field_at(Span { start: p, end: p })
    }

    #[test]
    fn operations_name_their_kind_and_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>(), Ok(op));
            let made = if op.is_update() {
                Operation::update(op.kind())
            } else {
                Operation::create(op.kind())
            };
            assert_eq!(made, Some(op));
            assert_eq!(op.identity_key().is_some(), op.is_update());
        }
        assert_eq!(Operation::update(Kind::Component), None);
        assert_eq!(Operation::create(Kind::Image), None);
        assert!("DeleteComponent".parse::<Operation>().is_err());
    }

    #[test]
    fn container_fields_make_a_container_recipe() {
        let image = Document::parse("r", "name: r\nparentImage: x\n", None).unwrap();
        assert_eq!(
            Operation::create_recipe(&image),
            Operation::CreateImageRecipe
        );
        let container = Document::parse("r", "name: r\ncontainerType: DOCKER\n", None).unwrap();
        assert_eq!(
            Operation::create_recipe(&container),
            Operation::CreateContainerRecipe
        );
    }

    #[test]
    fn spans_name_their_field() {
        let text = "name: x\ncomponents:\n  - componentArn: a\n    colour: blue\n  - componentArn: b\nschedule: {scheduleExpression: daily}\n";
        let doc = Document::parse("r.yaml", text, None).unwrap();
        assert_eq!(at(&doc, 1, 1).as_deref(), Some("name"));
        assert_eq!(at(&doc, 1, 7).as_deref(), Some("name"));
        assert_eq!(
            at(&doc, 3, 19).as_deref(),
            Some("components[0].componentArn")
        );
        assert_eq!(at(&doc, 4, 5).as_deref(), Some("components[0].colour"));
        assert_eq!(
            at(&doc, 5, 5).as_deref(),
            Some("components[1].componentArn")
        );
        assert_eq!(
            at(&doc, 6, 31).as_deref(),
            Some("schedule.scheduleExpression")
        );
        // The whole request, and a whole list item.
        assert_eq!(doc.field_at(doc.root().span), None);
        let items = doc.root().as_map().unwrap().get("components").unwrap();
        let first = &items.as_seq().unwrap()[0];
        assert_eq!(doc.field_at(first.span).as_deref(), Some("components[0]"));
        assert_eq!(doc.field_at(items.span).as_deref(), Some("components"));
    }

    #[test]
    fn json_fields_have_paths_too() {
        let text =
            r#"{"name": "x", "distributions": [{"region": "a"}, {"region": "b", "path": 1}]}"#;
        let doc = Document::parse("the request", text, None).unwrap();
        let col = text.find("\"path\"").unwrap() as u32 + 1;
        assert_eq!(at(&doc, 1, col).as_deref(), Some("distributions[1].path"));
    }

    #[test]
    fn json_bodies_read_as_json() {
        // Escapes YAML shares with JSON, and tab indentation inside braces.
        let text =
            "{\n\t\"name\": \"caf\\u00e9\",\n\t\"uri\": \"s3:\\/\\/b\\/k\",\n\t\"n\": 1.5e3\n}";
        let doc = Document::parse("the request", text, None).unwrap();
        assert!(doc.diagnostics().is_empty());
        assert_eq!(
            doc.root().to_json(),
            serde_json::json!({"name": "caf\u{e9}", "uri": "s3://b/k", "n": 1500.0})
        );
    }

    #[test]
    fn a_syntax_error_is_an_invalid_request() {
        let e = Document::parse("c.json", "{\"name\": ", None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
        assert!(e.to_string().starts_with("c.json:"), "{e}");
    }

    #[test]
    fn request_files_resolve_against_their_folder() {
        let d = Document::from_file(Path::new("/srv/requests/c.yaml"), "name: c\n").unwrap();
        assert_eq!(d.dir(), Some(Path::new("/srv/requests")));
        assert_eq!(d.file(), Some(Path::new("/srv/requests/c.yaml")));
        assert_eq!(d.name(), "/srv/requests/c.yaml");
        let api = Document::parse("the CreateComponent request", "{}", None).unwrap();
        assert_eq!((api.dir(), api.file()), (None, None));
    }
}
