//! Finding documents: local files, `s3://` objects and components kiln knows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_s3::S3Client;

use crate::document::Source;
use crate::load::{self, Diagnostics, Loaded};

/// Looks up components by reference (an ARN, or `name/version`) in a store.
#[async_trait]
pub trait ComponentResolver: Send + Sync {
    /// The component's document, `Ok(None)` when this resolver does not know it.
    async fn resolve(&self, reference: &str) -> Result<Option<Source>, String>;
}

/// Why a document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// It was found but is not a valid document.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// It could not be fetched.
    #[error("{0}")]
    Unavailable(String),
}

/// A loaded document with a stable identity (to detect cycles of ExecuteDocument).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Canonical path, URL or ARN.
    pub identity: String,
    /// The document.
    pub loaded: Loaded,
}

/// Loads documents from the places AWSTOE accepts.
#[derive(Clone, Default)]
pub struct DocumentLoader {
    s3: Option<Arc<S3Client>>,
    resolvers: Vec<Arc<dyn ComponentResolver>>,
}

impl DocumentLoader {
    /// A loader for local files only.
    pub fn new() -> Self {
        DocumentLoader::default()
    }

    /// Also load `s3://` documents through this client.
    pub fn with_s3(mut self, s3: Arc<S3Client>) -> Self {
        self.s3 = Some(s3);
        self
    }

    /// Also ask this resolver for components by ARN or name.
    pub fn with_resolver(mut self, r: Arc<dyn ComponentResolver>) -> Self {
        self.resolvers.push(r);
        self
    }

    /// Loads a reference. Relative paths resolve against `relative_to` (the folder of the
    /// document that refers to them), then the working directory.
    pub async fn load(
        &self,
        reference: &str,
        relative_to: Option<&Path>,
        _bucket_owner: Option<&str>,
    ) -> Result<Resolved, LoadError> {
        if reference.starts_with("s3://") {
            let s3 = self.s3.as_ref().ok_or_else(|| {
                LoadError::Unavailable(format!(
                    "cannot fetch {reference}: no S3 endpoint is configured (set AWS_ENDPOINT_URL \
                     or s3.endpoint in kiln's configuration)"
                ))
            })?;
            let (bucket, key) =
                kiln_s3::parse_url(reference).map_err(|e| LoadError::Unavailable(e.to_string()))?;
            let bytes = s3
                .get_object(&bucket, &key)
                .await
                .map_err(|e| LoadError::Unavailable(e.to_string()))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| LoadError::Unavailable(format!("{reference} is not UTF-8 text")))?;
            let loaded = load::parse(Source {
                name: reference.to_string(),
                text,
                dir: None,
            })
            .map_err(LoadError::Invalid)?;
            return Ok(Resolved {
                identity: reference.to_string(),
                loaded,
            });
        }
        let path = local_path(reference, relative_to);
        if !reference.starts_with("arn:") && path.exists() {
            let loaded = load::load_file(&path).map_err(LoadError::Invalid)?;
            let identity = std::fs::canonicalize(&path)
                .unwrap_or(path)
                .display()
                .to_string();
            return Ok(Resolved { identity, loaded });
        }
        for r in &self.resolvers {
            if let Some(source) = r.resolve(reference).await.map_err(LoadError::Unavailable)? {
                let loaded = load::parse(source).map_err(LoadError::Invalid)?;
                return Ok(Resolved {
                    identity: reference.to_string(),
                    loaded,
                });
            }
        }
        Err(LoadError::Unavailable(if reference.starts_with("arn:") {
            format!(
                "no component `{reference}` is known to kiln; give a document path instead, or \
                 create the component first"
            )
        } else {
            format!(
                "document `{reference}` not found (looked for {}{})",
                path.display(),
                if self.resolvers.is_empty() {
                    ""
                } else {
                    " and among kiln's components"
                }
            )
        }))
    }
}

fn local_path(reference: &str, relative_to: Option<&Path>) -> PathBuf {
    let p = Path::new(reference);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match relative_to {
        Some(dir) if dir.join(p).exists() => dir.join(p),
        _ => p.to_path_buf(),
    }
}
