//! The components of a build, loaded and checked before the build gets a number: every
//! document valid, every parameter without a default given, no Windows-only action.

use kiln_toe::loader::{DocumentLoader, LoadError, Resolved};

use crate::recipe::{ComponentSource, Recipe};
use crate::store::sha256_hex;

use super::BuildError;

/// A component, loaded and checked.
pub(crate) struct Component {
    pub name: String,
    pub source: String,
    pub arn: Option<String>,
    pub resolved: Resolved,
    pub sha256: String,
    pub parameters: Vec<(String, String)>,
    pub cache: bool,
    /// It has a build or validate phase, so it makes a layer.
    pub has_layer: bool,
    /// It has a test phase.
    pub has_test: bool,
}

/// Loads every component of a recipe; the first bad one stops the build.
pub(crate) async fn load(
    loader: &DocumentLoader,
    recipe: &Recipe,
) -> Result<Vec<Component>, BuildError> {
    let mut out = Vec::new();
    for (i, c) in recipe.components.iter().enumerate() {
        let source = match &c.source {
            ComponentSource::Path(p) => p.display().to_string(),
            ComponentSource::Arn(a) => a.clone(),
        };
        let fail = |message: String| BuildError::Component {
            index: i + 1,
            source_name: source.clone(),
            message,
        };
        let resolved = match loader.load(&source, None, None).await {
            Ok(r) => r,
            Err(LoadError::Invalid(d)) => return Err(fail(d.to_string())),
            Err(LoadError::Unavailable(m)) => return Err(fail(m)),
        };
        let doc = &resolved.loaded.document;
        let missing = doc.missing_parameters(&c.parameters);
        if !missing.is_empty() {
            return Err(fail(format!(
                "{}: give {} under `parameters` in the recipe",
                kiln_toe::document::no_default_phrase(&missing),
                if missing.len() > 1 { "them" } else { "it" },
            )));
        }
        let windows: Vec<String> = doc
            .phases
            .iter()
            .filter(|p| matches!(p.name.as_str(), "build" | "validate" | "test"))
            .flat_map(|p| p.steps.iter().map(move |s| (p, s)))
            .filter(|(_, s)| s.action.windows_only())
            .map(|(p, s)| format!("{}/{} uses {}", p.name, s.name, s.action))
            .collect();
        if !windows.is_empty() {
            return Err(fail(format!(
                "{} (Windows-only actions cannot run in a Linux image)",
                windows.join("; ")
            )));
        }
        let name = if doc.name.is_empty() {
            std::path::Path::new(&source)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("component-{}", i + 1))
        } else {
            doc.name.clone()
        };
        out.push(Component {
            arn: matches!(c.source, ComponentSource::Arn(_)).then(|| doc.source.name.clone()),
            name,
            sha256: sha256_hex(doc.source.text.as_bytes()),
            has_layer: doc.phase("build").is_some() || doc.phase("validate").is_some(),
            has_test: doc.phase("test").is_some(),
            resolved,
            source,
            parameters: c.parameters.clone(),
            cache: c.cache,
        });
    }
    Ok(out)
}

/// One of kiln's own components, from its document text.
pub(crate) fn internal(text: &str) -> Result<Component, String> {
    let loaded = kiln_toe::load::parse(kiln_toe::document::Source {
        name: "kiln (built in)".into(),
        text: text.to_string(),
        dir: None,
    })
    .map_err(|d| d.to_string())?;
    let name = loaded.document.name.clone();
    Ok(Component {
        sha256: sha256_hex(text.as_bytes()),
        arn: None,
        source: format!("kiln:{name}"),
        resolved: Resolved {
            identity: format!("kiln:{name}"),
            loaded,
        },
        name,
        parameters: Vec::new(),
        cache: true,
        has_layer: true,
        has_test: false,
    })
}

/// A name usable as a file name: letters, digits, `.`, `_` and `-`; anything else becomes `-`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}
