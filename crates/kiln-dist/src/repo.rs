//! A repository a region's content goes to, whatever holds it: a repository in an OCI registry
//! ([`crate::registry::RegistryRepo`]) or an OCI image layout in a bucket
//! ([`crate::s3::BucketRepo`]). Targets speak to both through [`Repo`]: blobs by digest,
//! manifests by digest, tags naming manifests.

use std::path::Path;

use async_trait::async_trait;

/// How a blob got to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// It was there already: nothing sent.
    Present,
    /// Another repository of the same registry lent it (a cross-repository mount): nothing
    /// sent.
    Mounted,
    /// Sent, this many bytes on the wire (resent bytes count).
    Uploaded(u64),
}

impl Moved {
    /// Bytes this move sent.
    pub fn bytes(self) -> u64 {
        match self {
            Moved::Uploaded(n) => n,
            Moved::Present | Moved::Mounted => 0,
        }
    }
}

/// A manifest as a repository holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// `sha256:` of its bytes.
    pub digest: String,
}

/// What deleting a manifest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// Gone, with every tag that named it.
    Removed,
    /// It was not there.
    NotFound,
    /// The repository does not delete manifests (why).
    Unsupported(String),
}

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] Box<kiln_image::RegistryError>),
    /// The bucket refused or failed.
    #[error(transparent)]
    Bucket(Box<kiln_s3::S3Error>),
    /// A local file could not be read.
    #[error("{0}")]
    Local(String),
    /// What came back is not what was written or asked for.
    #[error("{0}")]
    Protocol(String),
}

impl From<kiln_s3::S3Error> for RepoError {
    fn from(e: kiln_s3::S3Error) -> Self {
        RepoError::Bucket(Box::new(e))
    }
}

/// One repository: blobs by digest, manifests by digest and tag.
#[async_trait]
pub trait Repo: Send + Sync {
    /// Where it is, as a user types it: `docker://HOST/REPO` or `s3://BUCKET/PREFIX`.
    fn location(&self) -> String;

    /// Its name for cross-repository mounts within one registry (`REPO`), when it has one.
    fn mount_name(&self) -> Option<String> {
        None
    }

    /// The registry it is in (`HOST[:PORT]`), for choosing mount sources; `None` for buckets.
    fn registry(&self) -> Option<String> {
        None
    }

    /// Puts the blob at `path` unless the repository has it, mounting it from one of
    /// `mount_from` (repositories of the same registry) when they have it.
    async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
        mount_from: &[String],
    ) -> Result<Moved, RepoError>;

    /// Puts a small blob from memory.
    async fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<Moved, RepoError>;

    /// `length` bytes of a blob from `offset`.
    async fn read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, RepoError>;

    /// Stores a manifest byte for byte, under `tag` when given (else by digest only, which no
    /// reader of tags sees). Returns the digest the repository gives it, checked against the
    /// bytes.
    async fn put_manifest(
        &self,
        tag: Option<&str>,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RepoError>;

    /// The manifest a tag or digest names, `None` when there is none.
    async fn manifest(&self, reference: &str) -> Result<Option<Fetched>, RepoError>;

    /// Removes a manifest by digest, and every tag naming it.
    async fn delete_manifest(&self, digest: &str) -> Result<Removed, RepoError>;

    /// Moves `tag` to the manifest `digest` the repository holds (no blob moves).
    async fn set_tag(&self, tag: &str, digest: &str) -> Result<String, RepoError> {
        let m = self.manifest(digest).await?.ok_or_else(|| {
            RepoError::Protocol(format!("{} has no manifest {digest}", self.location()))
        })?;
        self.put_manifest(Some(tag), &m.bytes, &m.media_type).await
    }

    /// The referrers API's index of the manifests whose subject is `digest`; `None` when the
    /// repository has no referrers API (buckets, registries before OCI 1.1).
    async fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let _ = digest;
        Ok(None)
    }

    /// The digest `tag` names, `None` when it names nothing.
    async fn tag_digest(&self, tag: &str) -> Result<Option<String>, RepoError> {
        Ok(self.manifest(tag).await?.map(|m| m.digest))
    }
}

/// `sha256:` of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
