//! CreateComponent: a component document, inline (`data`) or from a file (`uri`).

use std::path::{Path, PathBuf};

use kiln_store::Kind;
use kiln_yaml::{Map, Node};
use serde_json::Value;

use super::draft::{common, unreported, Checker, Draft};
use super::{ErrorCode, Invalid, ResourceError, Resources};
use crate::store::sha256_hex;
use crate::version::Version;

/// A component's document: its text, how messages name it, the folder its references
/// resolve against, and the request field it came from.
struct Source {
    text: String,
    name: String,
    dir: Option<PathBuf>,
    field: &'static str,
}

impl Resources {
    pub(super) fn draft_component(
        &self,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let (name, description, token) = common(
            c,
            m,
            Kind::Component,
            &["semanticVersion", "platform", "data", "uri"],
        );
        let version = version_field(c, m);
        let platform = c
            .reader
            .string(m, "platform")
            .unwrap_or_else(|| "Linux".into());
        if platform != "Linux" {
            if let Some(n) = m.get("platform") {
                c.error_at(
                    n,
                    format!("kiln builds Linux images; a {platform} component cannot run in them"),
                    Some("use platform: Linux".into()),
                );
            }
        }
        let source = document_source(c, m);
        let warnings = c.finish()?;
        let (Some(name), Some(source)) = (name, source) else {
            return Err(unreported(c, "invalid"));
        };
        let loaded = kiln_toe::load::parse(kiln_toe::document::Source {
            name: source.name,
            text: source.text.clone(),
            dir: source.dir,
        })
        .map_err(|d| {
            let i = Invalid::from_diagnostics(
                ErrorCode::InvalidParameterValue,
                &d.source.name,
                &d.source.text,
                None,
                d.items,
            );
            ResourceError::from(
                i.about(source.field)
                    .with_heading("the component document is not valid:"),
            )
        })?;
        let doc = &loaded.document;
        let has_build = doc.phase("build").is_some() || doc.phase("validate").is_some();
        let component_type = if has_build || doc.phase("test").is_none() {
            super::ComponentType::Build
        } else {
            super::ComponentType::Test
        };
        let text = source.text;
        let mut request = c.root().to_json();
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
            component_type: Some(component_type),
            platform: Some(platform),
            data: Some(text),
            status: None,
            warnings,
            target: None,
        })
    }
}

/// The document a component request gives, `data` or `uri`; `None` after reporting why not.
fn document_source(c: &mut Checker, m: &Map) -> Option<Source> {
    match (m.get("data"), m.get("uri")) {
        (Some(d), None) => match d.as_text() {
            Some(t) => Some(Source {
                text: t.to_string(),
                name: format!("{} (`data`, line {})", c.doc.name(), d.span.start.line),
                dir: None,
                field: "data",
            }),
            None => {
                c.error_at(
                    d,
                    "`data` is the component document, as a string (use a YAML block: `data: |`)",
                    None,
                );
                None
            }
        },
        (None, Some(u)) => uri_source(c, u),
        (Some(d), Some(_)) => {
            c.error_at(d, "give `data` or `uri`, not both", None);
            None
        }
        (None, None) => {
            let at = c.root();
            c.error_at(
                at,
                "a component needs its document: `data` (inline) or `uri` (a file)",
                None,
            );
            None
        }
    }
}

/// The document a `uri` names: a file next to the request; never one for a request that came
/// over the network, whose sender must not make kiln read its own files.
fn uri_source(c: &mut Checker, u: &Node) -> Option<Source> {
    let uri = u.as_text().unwrap_or("").to_string();
    let local = uri.strip_prefix("file://").unwrap_or(&uri);
    if uri.starts_with("s3://") {
        c.error_at(
            u,
            "kiln reads component documents from files when creating components",
            Some("download it and give `uri: ./document.yaml`, or put it in `data`".into()),
        );
        return None;
    }
    let Some(dir) = c.doc.dir() else {
        c.error_at(
            u,
            format!("`{uri}` names a file, and kiln reads no files for a request sent to it"),
            Some("put the component document in `data`".into()),
        );
        return None;
    };
    let p = dir.join(local);
    match std::fs::read_to_string(&p) {
        Ok(text) => Some(Source {
            text,
            name: p.display().to_string(),
            dir: p.parent().map(Path::to_path_buf),
            field: "uri",
        }),
        Err(e) => {
            c.error_at(
                u,
                format!("cannot read {}: {e}", p.display()),
                Some("`uri` is relative to the request file's folder".into()),
            );
            None
        }
    }
}

/// `semanticVersion`: `Some(v)` given, `None` to pick one (or after reporting it).
pub(super) fn version_field(c: &mut Checker, m: &Map) -> Option<Version> {
    let node = m.get("semanticVersion")?;
    match node.as_text().map(str::parse::<Version>) {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            c.error_at(node, e.to_string(), Some("write MAJOR.MINOR.PATCH, such as 1.0.0, or leave it out and kiln picks the next version".into()));
            None
        }
        None => {
            c.error_at(node, "`semanticVersion` is a string such as 1.0.0", None);
            None
        }
    }
}
