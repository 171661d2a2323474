//! A region in an OCI registry: repositories `HOST/NAMESPACE/NAME` (and `/disk`,
//! `/containerdisk`) through kiln-image's blob-level registry client, which skips blobs the
//! registry has, mounts them from sibling repositories, resumes interrupted uploads and retries
//! transient failures.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_image::registry::{self as reg, Deleted, RegistryOptions, Repository, Sent};

use crate::remote::Place;
use crate::repo::{Fetched, Moved, Removed, Repo, RepoError};

/// How to reach the registries and buckets kiln distributes to: options per `HOST[:PORT]`, and
/// the S3 settings of bucket regions.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    hosts: Vec<(String, RegistryOptions)>,
    s3: Option<kiln_s3::S3Config>,
}

impl RegistryAccess {
    /// Access with these options per host.
    pub fn new(hosts: Vec<(String, RegistryOptions)>) -> Self {
        RegistryAccess { hosts, s3: None }
    }

    /// The same, with the S3 settings bucket regions are reached with.
    pub fn with_s3(mut self, s3: Option<kiln_s3::S3Config>) -> Self {
        self.s3 = s3;
        self
    }

    /// The options for a host (anonymous, HTTPS unless loopback, when none are configured).
    pub fn options_for(&self, host: &str) -> RegistryOptions {
        self.hosts
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }

    /// A client for bucket regions (the environment's AWS settings when none are configured).
    pub fn s3_client(&self) -> kiln_s3::S3Client {
        kiln_s3::S3Client::new(self.s3.clone().unwrap_or_else(kiln_s3::S3Config::from_env))
    }
}

/// A registry, under a namespace.
pub struct RegistryPlace {
    /// `HOST[:PORT]`.
    host: String,
    /// `NAMESPACE` (may be empty).
    namespace: String,
    options: RegistryOptions,
}

impl RegistryPlace {
    /// The registry `host` (`HOST[:PORT]`), under `namespace` when given.
    pub fn new(host: &str, namespace: Option<&str>, options: RegistryOptions) -> Self {
        RegistryPlace {
            host: host.to_string(),
            namespace: namespace
                .map(|n| n.trim_matches('/').to_string())
                .unwrap_or_default(),
            options,
        }
    }

    /// `HOST[:PORT]`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Place for RegistryPlace {
    fn repo(&self, path: &str) -> Result<Arc<dyn Repo>, RepoError> {
        let name = if self.namespace.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.namespace)
        };
        let repository = Repository::open(&format!("{}/{name}", self.host), &self.options)
            .map_err(|e| RepoError::Registry(Box::new(e)))?;
        Ok(Arc::new(RegistryRepo {
            repository,
            host: self.host.clone(),
            name,
            options: self.options.clone(),
        }))
    }

    fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("docker://{}", self.host)
        } else {
            format!("docker://{}/{}", self.host, self.namespace)
        }
    }

    fn is_registry(&self) -> bool {
        true
    }
}

/// One repository of a registry.
pub struct RegistryRepo {
    repository: Repository,
    host: String,
    name: String,
    options: RegistryOptions,
}

fn boxed(e: kiln_image::RegistryError) -> RepoError {
    RepoError::Registry(Box::new(e))
}

fn moved(s: Sent) -> Moved {
    match s {
        Sent::Present => Moved::Present,
        Sent::Mounted { .. } => Moved::Mounted,
        Sent::Uploaded { bytes } => Moved::Uploaded(bytes),
    }
}

#[async_trait]
impl Repo for RegistryRepo {
    fn location(&self) -> String {
        format!("docker://{}/{}", self.host, self.name)
    }

    fn mount_name(&self) -> Option<String> {
        Some(self.name.clone())
    }

    fn registry(&self) -> Option<String> {
        Some(self.host.clone())
    }

    async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
        mount_from: &[String],
    ) -> Result<Moved, RepoError> {
        self.repository
            .put_blob(digest, size, path, mount_from)
            .await
            .map(moved)
            .map_err(boxed)
    }

    async fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<Moved, RepoError> {
        self.repository
            .put_blob_bytes(digest, bytes)
            .await
            .map(moved)
            .map_err(boxed)
    }

    async fn read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, RepoError> {
        self.repository
            .read_range(digest, offset, length)
            .await
            .map_err(boxed)
    }

    async fn put_manifest(
        &self,
        tag: Option<&str>,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RepoError> {
        let digest = crate::repo::digest_of(bytes);
        let reference = tag.unwrap_or(&digest);
        self.repository
            .put_manifest(reference, bytes, media_type)
            .await
            .map_err(boxed)
    }

    async fn manifest(&self, reference: &str) -> Result<Option<Fetched>, RepoError> {
        Ok(self
            .repository
            .get_manifest(reference)
            .await
            .map_err(boxed)?
            .map(|(bytes, media_type, digest)| Fetched {
                bytes,
                media_type,
                digest,
            }))
    }

    async fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.repository.referrers(digest).await.map_err(boxed)
    }

    async fn delete_manifest(&self, digest: &str) -> Result<Removed, RepoError> {
        match reg::delete_manifest(
            &format!("{}/{}@{digest}", self.host, self.name),
            &self.options,
        )
        .await
        .map_err(boxed)?
        {
            Deleted::Deleted { .. } => Ok(Removed::Removed),
            Deleted::NotFound => Ok(Removed::NotFound),
            Deleted::Unsupported { detail, .. } => Ok(Removed::Unsupported(detail)),
        }
    }
}
