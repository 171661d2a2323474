//! Moving images between an OCI image layout and a registry that speaks the OCI distribution
//! API (Docker Hub, ECR, Harbor, Debian's `docker-registry`, ...).
//!
//! [`pull`] copies one image into a layout under a tag, in the order [`crate::oci`] keeps for
//! every writer: each blob is downloaded into a temporary file inside the layout, checked
//! against its digest and size, and renamed into `blobs/`; only then does `index.json` name the
//! image, under the layout's lock. Blobs the layout already has are not downloaded again. When
//! the reference names a multi-platform index, the linux/amd64 image is pulled. Docker schema 2
//! manifests are stored as OCI manifests: only media types change, layers and config keep their
//! bytes (and digests), the manifest gets a new digest, as with `skopeo copy`.
//!
//! [`push`] uploads the blobs the registry does not have yet, then the manifest byte for byte,
//! so the image keeps the digest it has in the layout.
//!
//! Tags move without images moving, which is what staging a build under `VERSION-BUILD`,
//! promoting it to `VERSION` and taking a dead build back are made of: [`manifest_digest`] says
//! which manifest a tag names (or that there is none), [`retag`] puts a manifest the repository
//! has under another tag without moving a blob, and [`delete_manifest`] deletes a manifest by
//! digest, and with it every tag that names it. Registries that do not delete say so with
//! [`Deleted::Unsupported`], not an error. oci-client has no DELETE: that request is kiln's
//! own, answering the registry's basic or bearer-token challenge itself.
//!
//! Registries on loopback (`localhost`, 127.0.0.0/8, `[::1]`) are spoken to over plain HTTP,
//! as Docker treats them as insecure registries; any other only over HTTPS unless
//! [`RegistryOptions::insecure_http`] says otherwise.

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth as ClientAuth;
use oci_client::Client;
use oci_spec::image::ImageConfiguration;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::digest;
use crate::oci::{self, OciError, ReadImage};

/// The parsed image reference [`parse_reference`] returns (oci-client's own type).
pub use oci_client::Reference;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// What a pull accepts; Docker schema 1 is left out on purpose (registries then convert).
const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// Blobs moved at once: enough to fill a link with a few big layers, few enough that a
/// registry's per-client limits are not hit.
const PARALLEL: usize = 3;
/// Upload read size (one monolithic PUT per blob, streamed in pieces of this size).
const UPLOAD_CHUNK: usize = 1 << 20;
const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of a registry's non-JSON error answer (an HTML page from a proxy, say) an error
/// message quotes.
const QUOTED_BODY: usize = 300;

/// Credentials for a registry that does not allow anonymous access (HTTP basic auth, or the
/// username and password a token service exchanges for a bearer token).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    /// Keeps the password out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Credentials; `None` for anonymous access.
    pub auth: Option<RegistryAuth>,
    /// Speak plain HTTP instead of HTTPS, for a registry without TLS on another machine.
    /// Loopback registries (`localhost`, 127.0.0.0/8, `[::1]`) get plain HTTP either way.
    pub insecure_http: bool,
}

/// Errors of moving images to and from registries.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference cannot be parsed.
    #[error(
        "`{input}` is not an image reference ({reason}): write HOST[:PORT]/REPOSITORY[:TAG] or \
         HOST[:PORT]/REPOSITORY@sha256:HEX, like 127.0.0.1:5000/library/base:1.0"
    )]
    BadReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry wants credentials, or refused the ones given.
    #[error(
        "registry {registry} answered 401 for {image}: {}",
        unauthorized_hint(username)
    )]
    Unauthorized {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// The user whose credentials were refused; `None` when none were given.
        username: Option<String>,
    },
    /// The registry knows who is asking and refuses (a 403, or a token registry's 401
    /// `insufficient_scope` to a user it knows).
    #[error(
        "registry {registry} denied {action} access to {image}: {} may not {action} it; check \
         the repository name, or ask the registry's administrators for {action} access",
        username.as_deref().map_or("an anonymous client".to_string(), |u| format!("user `{u}`"))
    )]
    Denied {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// `pull`, `push` or `delete`.
        action: &'static str,
        /// The user, if credentials were given.
        username: Option<String>,
    },
    /// The registry has no such image.
    #[error("registry {registry} has no image {image} ({detail}); check the repository and tag")]
    NotFound {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// What the registry said, and the tags it has when it could list them.
        detail: String,
    },
    /// The registry cannot be reached.
    #[error("cannot reach registry {registry} at {url}: {reason}; {hint}")]
    Unreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
        /// What to check.
        hint: String,
    },
    /// Content from the registry does not match its digest.
    #[error(
        "registry {registry} sent {what} of {image} that does not match its digest (expected \
         {expected}, got {actual}); the registry's copy is damaged or something between changed \
         it: try again, and push the image again if it persists"
    )]
    DigestMismatch {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// Which content (`manifest`, `blob sha256:...`).
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// The image is not one kiln can pull (an artifact, schema 1, no linux/amd64, ...).
    #[error("registry {registry}: {image}: {message}")]
    Unsupported {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// What the image is and what to do.
        message: String,
    },
    /// The registry answered something else than the protocol allows or kiln expected.
    #[error("registry {registry} failed while {doing} for {image}: {message}")]
    Protocol {
        /// `HOST[:PORT]`.
        registry: String,
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        image: String,
        /// What kiln was doing.
        doing: String,
        /// What went wrong.
        message: String,
    },
    /// The layout could not be read or written.
    #[error(transparent)]
    Layout(#[from] OciError),
    /// The async runtime shut down while layout work ran on a blocking thread.
    #[error("interrupted: the runtime shut down while writing or reading the image layout")]
    Interrupted,
}

fn unauthorized_hint(username: &Option<String>) -> String {
    match username {
        None => "it wants credentials: give a username and password for it".to_string(),
        Some(user) => {
            format!("it refused the credentials of user `{user}`: check the username and password")
        }
    }
}

/// Parses `HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]`, with or without a `docker://` prefix, into a
/// reference; a missing tag means `latest`. The host is required: kiln does not quietly turn
/// `busybox` into Docker Hub's `docker.io/library/busybox`.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    let bad = |reason: String| RegistryError::BadReference {
        input: s.to_string(),
        reason,
    };
    let rest = s.strip_prefix("docker://").unwrap_or(s);
    if rest.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if rest.trim() != rest {
        return Err(bad("it has spaces around it".into()));
    }
    let Some((host, repository)) = rest.split_once('/') else {
        return Err(bad("it names no registry host".into()));
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad(format!(
            "`{host}` is not a registry host: a host has a dot or a port, or is localhost \
             (Docker Hub is docker.io)"
        )));
    }
    if repository.is_empty() || repository.starts_with(':') || repository.starts_with('@') {
        return Err(bad("it names no repository after the host".into()));
    }
    Reference::try_from(rest).map_err(|e| bad(e.to_string()))
}

/// Pulls an image into the OCI layout `layout` (created if missing) under `tag`, verifying every
/// blob's digest, and returns it as [`oci::read_image`] reads it, ready for its layers to be
/// imported.
///
/// When the reference names an index, the layout gets its linux/amd64 image (not the index).
/// Blobs the layout already has are not downloaded. A Docker schema 2 image is stored with OCI
/// media types, so its manifest digest in the layout differs from the registry's.
pub async fn pull(
    reference: &str,
    layout: &Path,
    tag: &str,
    opts: &RegistryOptions,
) -> Result<ReadImage, RegistryError> {
    let reference = parse_reference(reference)?;
    oci::check_tag(tag)?;
    let remote = Remote::new(reference, opts)?;
    let (raw, digest) = remote.manifest(&remote.reference).await?;
    let (raw, digest) = match kind_of(&raw) {
        Kind::Index => {
            let chosen = remote.choose_platform(&raw)?;
            let (raw, digest) = remote
                .manifest(&remote.reference.clone_with_digest(chosen.clone()))
                .await?;
            if digest != chosen {
                return Err(remote.mismatch("the linux/amd64 manifest", &chosen, &digest));
            }
            if kind_of(&raw) != Kind::Manifest {
                return Err(remote.unsupported(format!(
                    "the index entry for linux/amd64 ({chosen}) is not an image manifest; kiln \
                     reads an index only one level deep"
                )));
            }
            (raw, digest)
        }
        Kind::Manifest => (raw, digest),
        Kind::SchemaV1 => {
            return Err(remote.unsupported(
                "it has a Docker schema 1 manifest, which is deprecated and unsupported; push \
                 it again with a current Docker or skopeo (they write schema 2)"
                    .into(),
            ))
        }
        Kind::Unknown(media_type) => {
            return Err(remote.unsupported(format!(
                "its manifest has media type {media_type}, not an image manifest or index"
            )))
        }
    };
    let converted = to_oci_manifest(&raw).map_err(|m| remote.unsupported(m))?;

    // Only now that there is an image to pull does the layout come into being.
    let layout = layout.to_path_buf();
    {
        let layout = layout.clone();
        blocking(move || oci::prepare_layout(&layout)).await?;
    }

    // The config first: it is small, and it says whether the layers make an image.
    let fetched_config = remote.fetch_blob(&layout, &converted.config).await?;
    let config: ImageConfiguration = {
        let layout = layout.clone();
        let config = converted.config.clone();
        let bytes =
            blocking(move || oci::read_small_blob(&layout, &config.digest, config.size, "config"))
                .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            remote.unsupported(format!(
                "its config {} is not a valid image config: {e}",
                converted.config.digest
            ))
        })?
    };
    let diff_ids = config.rootfs().diff_ids().len();
    if diff_ids != converted.layers.len() {
        return Err(remote.unsupported(format!(
            "its manifest lists {} layers but its config {diff_ids} diff ids; the image is \
             damaged: push it again",
            converted.layers.len()
        )));
    }
    // Owned items: with a closure over `&Blob` rustc cannot prove the future `Send`.
    let remote = &remote;
    let layout_ref = &layout;
    let fetched: Vec<bool> = futures_util::stream::iter(converted.layers.clone())
        .map(|blob| async move { remote.fetch_blob(layout_ref, &blob).await })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;

    let manifest_bytes = converted.rewritten.unwrap_or(raw);
    let architecture = config.architecture().to_string();
    let os = config.os().to_string();
    let read = {
        let layout = layout.clone();
        let tag = tag.to_string();
        blocking(move || {
            let blobs = layout.join("blobs").join("sha256");
            let manifest_digest = oci::put_bytes(&layout, &blobs, &manifest_bytes)?;
            let entry = oci::index_entry(
                &manifest_digest,
                manifest_bytes.len() as u64,
                &tag,
                &architecture,
                &os,
            );
            oci::update_index(&layout, &tag, entry)?;
            oci::read_image(&layout, Some(&tag))
        })
        .await?
    };
    tracing::info!(
        registry = %remote.registry,
        image = %remote.image,
        registry_manifest = %digest,
        layout = %layout.display(),
        tag,
        manifest = %read.manifest_digest,
        blobs_fetched = fetched.iter().filter(|f| **f).count() + usize::from(fetched_config),
        blobs_present = fetched.iter().filter(|f| !**f).count() + usize::from(!fetched_config),
        "image pulled"
    );
    Ok(read)
}

/// Pushes the image tagged `tag` in `layout` to `reference` (which needs a tag, not a digest):
/// layers and config the registry lacks, then the manifest, byte for byte. Returns the
/// manifest digest the registry reports for the tag afterwards.
pub async fn push(
    layout: &Path,
    tag: &str,
    reference: &str,
    opts: &RegistryOptions,
) -> Result<String, RegistryError> {
    let reference = parse_reference(reference)?;
    if reference.digest().is_some() {
        return Err(RegistryError::BadReference {
            input: reference.to_string(),
            reason: "a push needs a tag to put the image under, not a digest".into(),
        });
    }
    let remote = Remote::new(reference, opts)?;
    let (image, manifest) = {
        let layout = layout.to_path_buf();
        let tag = tag.to_string();
        blocking(move || {
            let image = oci::read_image(&layout, Some(&tag))?;
            let path = oci::blob_path(&layout, &image.manifest_digest)?;
            let size = std::fs::metadata(&path)
                .map_err(oci::io_err(&path, "cannot stat"))?
                .len();
            let bytes = oci::read_small_blob(&layout, &image.manifest_digest, size, "manifest")?;
            Ok((image, bytes))
        })
        .await?
    };
    // Calls like blob_exists take credentials only from the client's store.
    remote
        .client
        .store_auth_if_needed(remote.reference.resolve_registry(), &remote.auth)
        .await;
    let config_path = oci::blob_path(layout, &image.config_digest)?;
    let mut blobs: Vec<(String, u64, PathBuf)> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size, l.path.clone()))
        .collect();
    blobs.push((
        image.config_digest.clone(),
        image.manifest.config().size(),
        config_path,
    ));
    let remote = &remote;
    let uploaded: Vec<bool> = futures_util::stream::iter(blobs)
        .map(|(digest, size, path)| async move { remote.upload_blob(&digest, size, &path).await })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;

    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map_or_else(|| OCI_MANIFEST.to_string(), ToString::to_string);
    let content_type = media_type.parse().map_err(|_| {
        remote.protocol(
            "pushing the manifest",
            format!("media type `{media_type}` cannot be an HTTP header"),
        )
    })?;
    remote
        .client
        .push_manifest_raw(&remote.reference, manifest, content_type)
        .await
        .map_err(|e| remote.error(e, Action::PushManifest))?;
    let registry_digest = remote
        .client
        .fetch_manifest_digest(&remote.reference, &remote.auth)
        .await
        .map_err(|e| remote.error(e, Action::CheckManifest))?;
    if registry_digest != image.manifest_digest {
        return Err(remote.protocol(
            "checking the pushed manifest",
            format!(
                "the tag names {registry_digest} after kiln pushed {}: another push to the same \
                 tag raced this one, or the registry rewrote the manifest",
                image.manifest_digest
            ),
        ));
    }
    tracing::info!(
        registry = %remote.registry,
        image = %remote.image,
        manifest = %registry_digest,
        blobs_uploaded = uploaded.iter().filter(|u| **u).count(),
        blobs_present = uploaded.iter().filter(|u| !**u).count(),
        "image pushed"
    );
    Ok(registry_digest)
}

/// The digest of the manifest `reference` names on the registry (`HOST/REPOSITORY:TAG`; with
/// `@DIGEST`, whether the repository has that manifest), or `None` when the registry has no
/// such tag or repository.
///
/// This is a HEAD on the manifest that accepts OCI and Docker schema 2 manifests and indexes,
/// and reads the registry's `Docker-Content-Digest` (a registry that sends none gets a GET and
/// the digest of its answer). An index is not resolved to a platform: the digest is the one
/// the tag names. Credentials that are refused, missing access and unreachable registries are
/// errors, as [`pull`] reports them.
pub async fn manifest_digest(
    reference: &str,
    opts: &RegistryOptions,
) -> Result<Option<String>, RegistryError> {
    let remote = Remote::new(parse_reference(reference)?, opts)?;
    let digest = remote.digest_of(Action::ResolveTag).await?;
    tracing::debug!(
        registry = %remote.registry,
        image = %remote.image,
        manifest = digest.as_deref().unwrap_or("(none)"),
        "manifest digest looked up"
    );
    Ok(digest)
}

/// Puts the manifest `reference` names (`HOST/REPOSITORY:TAG` or `HOST/REPOSITORY@DIGEST`)
/// under the tag `to_tag` in the same repository, byte for byte and with its media type, and
/// returns its digest.
///
/// No blob moves: the repository has them already. This is how a staged build's tag
/// (`VERSION-BUILD`) is promoted to `VERSION`, and how `VERSION` is put back on the previous
/// build's manifest. When `to_tag` named another manifest, it names this one afterwards; the
/// other stays in the repository (under its other tags, or by digest). An index stays an index,
/// whose images the repository has since the index came from there. A reference with neither
/// tag nor digest is refused rather than taken as `latest`.
pub async fn retag(
    reference: &str,
    to_tag: &str,
    opts: &RegistryOptions,
) -> Result<String, RegistryError> {
    let parsed = parse_reference(reference)?;
    if !names_tag_or_digest(reference) {
        return Err(RegistryError::BadReference {
            input: reference.to_string(),
            reason: "a retag needs the tag or digest to copy, and kiln does not take a missing \
                     one as `latest`"
                .into(),
        });
    }
    oci::check_tag(to_tag)?;
    let source = Remote::new(parsed, opts)?;
    let (raw, digest) = source.manifest(&source.reference).await?;
    let media_type = manifest_media_type(&raw).map_err(|m| source.unsupported(m))?;
    let target = source.with_reference(Reference::with_tag(
        source.reference.registry().to_string(),
        source.reference.repository().to_string(),
        to_tag.to_string(),
    ));
    let content_type = media_type.parse().map_err(|_| {
        target.protocol(
            &Action::PushManifest.doing(),
            format!("the manifest's media type `{media_type}` cannot be an HTTP header"),
        )
    })?;
    target
        .client
        .push_manifest_raw(&target.reference, raw, content_type)
        .await
        .map_err(|e| target.error(e, Action::PushManifest))?;
    // As after a push: the tag must name what was put there, else another writer raced us
    // (or the registry rewrote the manifest) and the caller must not believe it moved.
    let now = target
        .digest_of(Action::CheckManifest)
        .await?
        .unwrap_or_else(|| "nothing".to_string());
    if now != digest {
        return Err(target.protocol(
            &Action::CheckManifest.doing(),
            format!(
                "the tag names {now} after kiln put {digest} under it: another writer to the \
                 same tag raced this one, or the registry rewrote the manifest"
            ),
        ));
    }
    tracing::info!(
        registry = %source.registry,
        from = %source.image,
        to = %target.image,
        manifest = %digest,
        media_type = %media_type,
        "manifest tagged"
    );
    Ok(digest)
}

/// What [`delete_manifest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a registry may keep the manifest (Unsupported): look at the outcome"]
pub enum Deleted {
    /// The registry deleted the manifest, and with it every tag that named it. Its blobs stay
    /// until the registry's garbage collection.
    Deleted {
        /// The manifest deleted.
        digest: String,
    },
    /// The registry has no such tag, manifest or repository: deleted already, or never pushed.
    NotFound,
    /// The registry does not delete manifests (it answered 405 or `UNSUPPORTED`: the CNCF
    /// registry without `storage.delete.enabled`, or a hosted registry that keeps everything);
    /// nothing changed. Whether that matters is the caller's decision.
    Unsupported {
        /// The manifest kiln asked it to delete.
        digest: String,
        /// What the registry answered.
        detail: String,
    },
}

/// Deletes the manifest `reference` names. `HOST/REPOSITORY:TAG` is resolved to its digest
/// first (as [`manifest_digest`] does) and `HOST/REPOSITORY@DIGEST` is taken as it is; the
/// manifest is then deleted by digest, the only way the distribution API has.
///
/// **Every tag that names the manifest goes with it**, not only the one given. When a dead
/// build's tag and `VERSION` name the same manifest (after a promotion, or because a
/// reproducible build gave the same digest again), deleting by the build's tag removes
/// `VERSION` as well: move tags that must stay off the digest first (with [`retag`]), and
/// never delete a digest another build still uses. A tag moved by another writer between the
/// lookup and the deletion is not noticed: the manifest it named at the lookup is deleted.
///
/// A reference with neither tag nor digest is refused rather than taken as `latest`.
/// [`Deleted::Unsupported`] and [`Deleted::NotFound`] are outcomes, not errors; refused
/// credentials, missing access and unreachable registries are errors.
pub async fn delete_manifest(
    reference: &str,
    opts: &RegistryOptions,
) -> Result<Deleted, RegistryError> {
    let parsed = parse_reference(reference)?;
    if !names_tag_or_digest(reference) {
        return Err(RegistryError::BadReference {
            input: reference.to_string(),
            reason: "a delete needs the tag or digest to delete, and kiln does not take a \
                     missing one as `latest`"
                .into(),
        });
    }
    let remote = Remote::new(parsed, opts)?;
    let digest = match remote.reference.digest() {
        Some(digest) => digest.to_string(),
        None => match remote.digest_of(Action::ResolveTag).await? {
            Some(digest) => digest,
            None => {
                tracing::info!(
                    registry = %remote.registry,
                    image = %remote.image,
                    "no such tag: nothing to delete"
                );
                return Ok(Deleted::NotFound);
            }
        },
    };
    remote.delete(&digest).await
}

/// Runs blocking layout work (file writes, the layout lock) off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, RegistryError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, OciError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(RegistryError::Layout),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(RegistryError::Interrupted),
    }
}

/// What a registry call was for, to word its errors.
#[derive(Clone, Copy)]
enum Action<'a> {
    PullManifest,
    PullBlob(&'a str),
    CheckBlob(&'a str),
    PushBlob(&'a str),
    PushManifest,
    CheckManifest,
    /// Which manifest a tag names (a 404 is an answer, not an error).
    ResolveTag,
    DeleteManifest(&'a str),
    /// A bearer token from the registry's token service, for a delete.
    DeleteToken,
}

impl Action<'_> {
    fn doing(&self) -> String {
        match self {
            Action::PullManifest => "fetching the manifest".into(),
            Action::PullBlob(d) => format!("downloading blob {d}"),
            Action::CheckBlob(d) => format!("checking for blob {d}"),
            Action::PushBlob(d) => format!("uploading blob {d}"),
            Action::PushManifest => "pushing the manifest".into(),
            Action::CheckManifest => "checking the pushed manifest".into(),
            Action::ResolveTag => "looking up the manifest digest".into(),
            Action::DeleteManifest(d) => format!("deleting manifest {d}"),
            Action::DeleteToken => "getting a token to delete with".into(),
        }
    }

    /// The access a 403 refused, in the words of [`RegistryError::Denied`].
    fn access(&self) -> &'static str {
        match self {
            Action::CheckBlob(_) | Action::PushBlob(_) | Action::PushManifest => "push",
            Action::DeleteManifest(_) | Action::DeleteToken => "delete",
            Action::PullManifest
            | Action::PullBlob(_)
            | Action::CheckManifest
            | Action::ResolveTag => "pull",
        }
    }
}

/// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`, as errors and logs name an image.
fn image_name(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (_, Some(digest)) => format!("{}@{digest}", reference.repository()),
        (Some(tag), None) => format!("{}:{tag}", reference.repository()),
        (None, None) => format!("{}:latest", reference.repository()),
    }
}

/// One registry repository, with a client set up for it.
struct Remote {
    client: Client,
    auth: ClientAuth,
    reference: Reference,
    /// `HOST[:PORT]` as given.
    registry: String,
    /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
    image: String,
    username: Option<String>,
    /// `http` or `https`.
    scheme: &'static str,
    /// Whether plain HTTP was asked for (as opposed to chosen for loopback).
    insecure_http: bool,
}

impl Remote {
    fn new(reference: Reference, opts: &RegistryOptions) -> Result<Remote, RegistryError> {
        let registry = reference.registry().to_string();
        let image = image_name(&reference);
        let plain = opts.insecure_http || is_loopback(reference.resolve_registry());
        if plain && opts.auth.is_some() && !is_loopback(reference.resolve_registry()) {
            tracing::warn!(
                registry = %registry,
                "sending credentials over plain HTTP: anyone on the network path can read them"
            );
        }
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // One POST and one streamed PUT per blob; chunked uploads would send a PATCH per
            // read and buffer nothing better.
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| RegistryError::Protocol {
            registry: registry.clone(),
            image: image.clone(),
            doing: "setting up the HTTP client".into(),
            message: error_chain(&e),
        })?;
        let auth = match &opts.auth {
            Some(a) => ClientAuth::Basic(a.username.clone(), a.password.clone()),
            None => ClientAuth::Anonymous,
        };
        Ok(Remote {
            client,
            auth,
            registry,
            image,
            username: opts.auth.as_ref().map(|a| a.username.clone()),
            scheme: if plain { "http" } else { "https" },
            insecure_http: opts.insecure_http,
            reference,
        })
    }

    /// Fetches a manifest or index, with its digest checked against the reference's digest
    /// (when it has one) and the registry's `Docker-Content-Digest`.
    async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), RegistryError> {
        let (body, digest) = match self
            .client
            .pull_manifest_raw(reference, &self.auth, ACCEPT)
            .await
        {
            Ok(ok) => ok,
            Err(e) => {
                let err = self.error(e, Action::PullManifest);
                return Err(match err {
                    RegistryError::NotFound {
                        registry,
                        image,
                        detail,
                    } => RegistryError::NotFound {
                        detail: self.with_tags(detail).await,
                        registry,
                        image,
                    },
                    other => other,
                });
            }
        };
        if body.len() as u64 > oci::MAX_JSON_BLOB {
            return Err(self.unsupported(format!(
                "its manifest has {} bytes, too many for a manifest",
                body.len()
            )));
        }
        let actual = digest::sha256_bytes(&body);
        if actual != digest {
            return Err(self.mismatch("the manifest", &digest, &actual));
        }
        Ok((body.to_vec(), digest))
    }

    /// Adds the repository's tags (the first few) to a not-found message for a tag.
    async fn with_tags(&self, detail: String) -> String {
        if self.reference.digest().is_some() {
            return detail;
        }
        match self
            .client
            .list_tags(&self.reference, &self.auth, Some(20), None)
            .await
        {
            Ok(list) if list.tags.is_empty() => format!("{detail}; the repository has no tags"),
            Ok(list) => format!("{detail}; tags there: {}", list.tags.join(", ")),
            Err(e) => match self.error(e, Action::PullManifest) {
                RegistryError::NotFound { .. } => format!(
                    "{detail}; the registry has no repository {}",
                    self.reference.repository()
                ),
                _ => detail,
            },
        }
    }

    /// Picks the linux/amd64 manifest of an index (or Docker manifest list).
    fn choose_platform(&self, raw: &[u8]) -> Result<String, RegistryError> {
        let index: Value = serde_json::from_slice(raw)
            .map_err(|e| self.unsupported(format!("its index is not valid JSON: {e}")))?;
        let entries = index
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let platform = |e: &Value, key: &str| {
            e.pointer(&format!("/platform/{key}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let chosen = entries
            .iter()
            .find(|e| platform(e, "os") == "linux" && platform(e, "architecture") == "amd64");
        match chosen.and_then(|e| e.get("digest")).and_then(Value::as_str) {
            Some(d) if matches!(digest::split(d), Some(("sha256", _))) => Ok(d.to_string()),
            Some(d) => Err(self.unsupported(format!(
                "its index names the linux/amd64 manifest by `{d}`, not a sha256 digest"
            ))),
            None => {
                let offered: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let os = platform(e, "os");
                        let arch = platform(e, "architecture");
                        if os.is_empty() && arch.is_empty() {
                            "(no platform)".to_string()
                        } else {
                            format!("{os}/{arch}")
                        }
                    })
                    .collect();
                Err(self.unsupported(format!(
                    "it is a multi-platform index without a linux/amd64 image (it has: {}); \
                     kiln builds linux/amd64 images",
                    if offered.is_empty() {
                        "nothing".to_string()
                    } else {
                        offered.join(", ")
                    }
                )))
            }
        }
    }

    /// Puts a blob into the layout unless it is there; true when it was downloaded.
    async fn fetch_blob(&self, layout: &Path, blob: &Blob) -> Result<bool, RegistryError> {
        if oci::has_blob(layout, &blob.digest, blob.size)? {
            tracing::debug!(digest = %blob.digest, "blob already in the layout");
            return Ok(false);
        }
        let action = Action::PullBlob(&blob.digest);
        let dest = oci::blob_path(layout, &blob.digest)?;
        let tmp = oci::temp_file(layout)?;
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(oci::io_err(tmp.path(), "cannot open"))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            urls: None,
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, &descriptor)
            .await
            .map_err(|e| self.error(e, Action::PullBlob(&blob.digest)))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(e, &blob.digest))?;
            received += chunk.len() as u64;
            if received > blob.size {
                return Err(self.protocol(
                    &action.doing(),
                    format!(
                        "it sent more than the {} bytes the manifest gives; the image is \
                         damaged on the registry",
                        blob.size
                    ),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(oci::io_err(tmp.path(), "cannot write"))?;
        }
        if received != blob.size {
            return Err(self.protocol(
                &action.doing(),
                format!(
                    "it sent {received} bytes, the manifest gives {}; the image is damaged on \
                     the registry or the connection broke: try again",
                    blob.size
                ),
            ));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != blob.digest {
            return Err(self.mismatch(&format!("blob {}", blob.digest), &blob.digest, &actual));
        }
        file.flush()
            .await
            .and(file.sync_all().await)
            .map_err(oci::io_err(tmp.path(), "cannot write"))?;
        drop(file);
        blocking(move || oci::commit_blob(tmp, &dest)).await?;
        tracing::debug!(digest = %blob.digest, bytes = blob.size, "blob downloaded");
        Ok(true)
    }

    /// Uploads a blob from the layout unless the registry has it; true when it was uploaded.
    async fn upload_blob(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<bool, RegistryError> {
        let exists = self
            .client
            .blob_exists(&self.reference, digest)
            .await
            .map_err(|e| self.error(e, Action::CheckBlob(digest)))?;
        if exists {
            tracing::debug!(digest, "blob already in the registry");
            return Ok(false);
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(oci::io_err(path, "cannot open"))?;
        let stream = futures_util::stream::try_unfold(file, |mut file| async move {
            let mut buf = bytes::BytesMut::with_capacity(UPLOAD_CHUNK);
            let n = file.read_buf(&mut buf).await?;
            Ok::<_, OciDistributionError>((n > 0).then(|| (buf.freeze(), file)))
        });
        self.client
            .push_blob_stream(&self.reference, stream, digest, Some(size))
            .await
            .map_err(|e| self.error(e, Action::PushBlob(digest)))?;
        tracing::debug!(digest, bytes = size, "blob uploaded");
        Ok(true)
    }

    /// The same registry, client (and so its tokens) and credentials, for another reference
    /// in the repository.
    fn with_reference(&self, reference: Reference) -> Remote {
        Remote {
            client: self.client.clone(),
            auth: self.auth.clone(),
            image: image_name(&reference),
            reference,
            registry: self.registry.clone(),
            username: self.username.clone(),
            scheme: self.scheme,
            insecure_http: self.insecure_http,
        }
    }

    /// The digest the registry gives for this reference's manifest; `None` when it has no such
    /// tag, manifest or repository.
    async fn digest_of(&self, action: Action<'_>) -> Result<Option<String>, RegistryError> {
        let digest = match self
            .client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
        {
            Ok(digest) => digest,
            Err(e) => {
                return match self.error(e, action) {
                    RegistryError::NotFound { .. } => Ok(None),
                    other => Err(other),
                }
            }
        };
        // The digest goes into URLs (a DELETE) and is compared with kiln's own sha256 ones.
        match digest::split(&digest) {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(Some(digest))
            }
            _ => Err(self.protocol(
                &action.doing(),
                format!(
                    "it gave the manifest digest `{digest}`, not a sha256 digest; kiln works \
                     with sha256 only"
                ),
            )),
        }
    }

    /// Deletes a manifest by digest. oci-client has no DELETE, so this is kiln's own request,
    /// and it answers the registry's auth challenge itself.
    async fn delete(&self, digest: &str) -> Result<Deleted, RegistryError> {
        let action = Action::DeleteManifest(digest);
        let url = format!(
            "{}://{}/v2/{}/manifests/{digest}",
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let http = self.http_client()?;
        let mut credential = None;
        // An anonymous request first, as oci-client does: its 401 says which auth the registry
        // wants (basic, or a token from where), and credentials go only where one asked.
        let response = loop {
            let request = match &credential {
                None => http.delete(&url),
                Some(Credential::Basic(user, password)) => {
                    http.delete(&url).basic_auth(user, Some(password))
                }
                Some(Credential::Bearer(token)) => http.delete(&url).bearer_auth(token),
            };
            let response = request
                .send()
                .await
                .map_err(|e| self.error(e.into(), action))?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || credential.is_some() {
                break response;
            }
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match self.answer(&http, challenge).await? {
                Some(answer) => credential = Some(answer),
                None => break response,
            }
        };
        let status = response.status();
        // A token registry that knows the user but grants no delete answers 401 with
        // `insufficient_scope`: that is missing access, not a wrong password.
        let insufficient = status == reqwest::StatusCode::UNAUTHORIZED
            && self.username.is_some()
            && response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_insufficient_scope);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        if insufficient {
            return Err(RegistryError::Denied {
                registry: self.registry.clone(),
                image: self.image.clone(),
                action: action.access(),
                username: self.username.clone(),
            });
        }
        let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
        let has = |code: OciErrorCode| {
            envelope
                .as_ref()
                .is_some_and(|env| env.errors.iter().any(|e| e.code == code))
        };
        if status.is_success() {
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                "manifest deleted, with every tag that named it"
            );
            return Ok(Deleted::Deleted {
                digest: digest.to_string(),
            });
        }
        if status == reqwest::StatusCode::METHOD_NOT_ALLOWED || has(OciErrorCode::Unsupported) {
            let detail = match envelope.as_ref().map(envelope_text) {
                Some(said) if !said.is_empty() => format!("it answered {status}: {said}"),
                _ => format!("it answered {status}"),
            };
            // Info, not a warning: whether a kept manifest matters is the caller's to say.
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                %detail,
                "the registry does not delete manifests; it keeps this one"
            );
            return Ok(Deleted::Unsupported {
                digest: digest.to_string(),
                detail,
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND
            || has(OciErrorCode::ManifestUnknown)
            || has(OciErrorCode::NameUnknown)
        {
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                "no such manifest: nothing to delete"
            );
            return Ok(Deleted::NotFound);
        }
        Err(self.error(http_error(status, &body, envelope, &url), action))
    }

    /// Answers the auth challenge of a 401: basic auth with the credentials, or a bearer token
    /// from the token service the challenge names. `None` when there is nothing to answer with
    /// (no challenge kiln knows, or basic auth without credentials): the 401 then stands.
    async fn answer(
        &self,
        http: &reqwest::Client,
        challenge: Option<Challenge>,
    ) -> Result<Option<Credential>, RegistryError> {
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match &self.auth {
                ClientAuth::Basic(user, password) => {
                    Some(Credential::Basic(user.clone(), password.clone()))
                }
                _ => None,
            }),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let token = self
                    .bearer_token(http, &realm, service.as_deref(), scope.as_deref())
                    .await?;
                Ok(Some(Credential::Bearer(token)))
            }
        }
    }

    /// A token from the registry's token service (the Docker token protocol, which the CNCF
    /// registry, Harbor, GitLab and Docker Hub speak), with the credentials when there are
    /// any; anonymous tokens exist too, and a registry then refuses the delete itself.
    async fn bearer_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let action = Action::DeleteToken;
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            self.protocol(
                &action.doing(),
                format!(
                    "its token service `{realm}` is not a URL ({e}); the registry's auth setup \
                     is broken"
                ),
            )
        })?;
        match url.scheme() {
            "https" => {}
            // Plain HTTP for the token only where the registry itself is spoken to that way.
            "http" if self.scheme == "http" => {}
            other => {
                return Err(self.protocol(
                    &action.doing(),
                    format!(
                        "its token service `{realm}` is not HTTPS ({other}); kiln sends \
                         credentials to it only over HTTPS: have the registry's token realm \
                         fixed"
                    ),
                ))
            }
        }
        // The challenge names the scope the DELETE needs (`repository:NAME:delete` on the CNCF
        // registry); one that names none gets that asked for.
        let scope = scope.map_or_else(
            || format!("repository:{}:delete", self.reference.repository()),
            str::to_string,
        );
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &scope);
        }
        let mut request = http.get(url.clone());
        if let ClientAuth::Basic(user, password) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        if !status.is_success() {
            let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
            return Err(self.error(http_error(status, &body, envelope, url.as_str()), action));
        }
        // `token` is the Docker protocol's name, `access_token` the OAuth 2 one; services send
        // either or both.
        let token = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            ["token", "access_token"].iter().find_map(|key| {
                v.get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
            })
        });
        token.ok_or_else(|| {
            self.protocol(
                &action.doing(),
                format!(
                    "its token service {} answered {status} without a token; the registry's \
                     auth setup is broken",
                    url.as_str().split('?').next().unwrap_or(realm)
                ),
            )
        })
    }

    /// A plain HTTP client set up as oci-client's is (timeouts, user agent, TLS).
    fn http_client(&self) -> Result<reqwest::Client, RegistryError> {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| self.protocol("setting up the HTTP client", error_chain(&e)))
    }

    fn unsupported(&self, message: String) -> RegistryError {
        RegistryError::Unsupported {
            registry: self.registry.clone(),
            image: self.image.clone(),
            message,
        }
    }

    fn protocol(&self, doing: &str, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            image: self.image.clone(),
            doing: doing.to_string(),
            message,
        }
    }

    fn mismatch(&self, what: &str, expected: &str, actual: &str) -> RegistryError {
        RegistryError::DigestMismatch {
            registry: self.registry.clone(),
            image: self.image.clone(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// An error in the middle of a blob download (oci-client's own digest check included).
    fn stream_error(&self, e: std::io::Error, digest: &str) -> RegistryError {
        if let Some(DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>())
        {
            return self.mismatch(&format!("blob {digest}"), expected, actual);
        }
        self.protocol(
            &Action::PullBlob(digest).doing(),
            format!("the download broke off: {}; try again", error_chain(&e)),
        )
    }

    /// Words an oci-client error for a person: who answered what, and what to do.
    fn error(&self, e: OciDistributionError, action: Action<'_>) -> RegistryError {
        let (status, said) = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => (Some(401), String::new()),
            OciDistributionError::ServerError { code, message, .. } => {
                (Some(*code), message.trim().to_string())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let status = envelope.errors.iter().find_map(|err| match err.code {
                    OciErrorCode::Unauthorized => Some(401),
                    OciErrorCode::Denied => Some(403),
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound => Some(404),
                    OciErrorCode::Toomanyrequests => Some(429),
                    _ => None,
                });
                (status, envelope_text(envelope))
            }
            OciDistributionError::RequestError(r) => {
                (r.status().map(|s| s.as_u16()), String::new())
            }
            _ => (None, String::new()),
        };
        if let OciDistributionError::DigestError(DigestError::VerificationError {
            expected,
            actual,
        }) = &e
        {
            let what = match action {
                Action::PullBlob(d) | Action::CheckBlob(d) | Action::PushBlob(d) => {
                    format!("blob {d}")
                }
                Action::PullManifest
                | Action::PushManifest
                | Action::CheckManifest
                | Action::ResolveTag
                | Action::DeleteManifest(_)
                | Action::DeleteToken => "the manifest".to_string(),
            };
            return self.mismatch(&what, expected, actual);
        }
        match status {
            Some(401) => {
                return RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    username: self.username.clone(),
                }
            }
            Some(403) => {
                return RegistryError::Denied {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    action: action.access(),
                    username: self.username.clone(),
                }
            }
            Some(404) if matches!(action, Action::PullManifest | Action::ResolveTag) => {
                return RegistryError::NotFound {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    detail: if said.is_empty() {
                        "it answered 404".into()
                    } else {
                        format!("it answered 404, {said}")
                    },
                }
            }
            _ => {}
        }
        if let OciDistributionError::RequestError(r) = &e {
            if r.status().is_none() && (r.is_connect() || r.is_timeout() || r.is_request()) {
                let hint = if self.scheme == "https" {
                    "check the address and that the registry runs; if it serves plain HTTP \
                     (no TLS), set insecure_http"
                } else if self.insecure_http {
                    "check the address and that the registry runs; if it serves HTTPS, unset \
                     insecure_http"
                } else {
                    "check the address and that the registry runs (kiln speaks plain HTTP to \
                     registries on loopback)"
                };
                return RegistryError::Unreachable {
                    registry: self.registry.clone(),
                    url: r.url().map_or_else(
                        || format!("{}://{}", self.scheme, self.registry),
                        |u| u.to_string(),
                    ),
                    // reqwest's own message repeats the URL; the causes say what happened.
                    reason: r.source().map_or_else(|| r.to_string(), error_chain),
                    hint: hint.into(),
                };
            }
        }
        let message = match (status, said.is_empty()) {
            (Some(code), true) => format!("it answered {code}"),
            (Some(code), false) => format!("it answered {code}: {said}"),
            (None, _) => error_chain(&e),
        };
        let message = match status {
            Some(429) => format!("{message}; the registry limits requests: wait and try again"),
            Some(code) if code >= 500 => {
                format!("{message}; the registry has a problem: try again later")
            }
            _ => message,
        };
        self.protocol(&action.doing(), message)
    }
}

/// An answer kiln's own requests did not expect, as oci-client words one, so that
/// [`Remote::error`] says what it means for a person.
fn http_error(
    status: reqwest::StatusCode,
    body: &[u8],
    envelope: Option<OciEnvelope>,
    url: &str,
) -> OciDistributionError {
    let url = url.to_string();
    match (status, envelope) {
        (reqwest::StatusCode::UNAUTHORIZED, _) => OciDistributionError::UnauthorizedError { url },
        (_, Some(envelope)) => OciDistributionError::RegistryError { envelope, url },
        (_, None) => {
            let text = String::from_utf8_lossy(body);
            let mut message: String = text.chars().take(QUOTED_BODY).collect();
            if message.len() < text.len() {
                message.push_str("...");
            }
            OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message,
            }
        }
    }
}

/// What a registry asks for in the `WWW-Authenticate` of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The challenge kiln answers from a `WWW-Authenticate` value: Bearer when offered (a registry
/// that offers both would rather have a token), else Basic; `None` for anything else.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let param = |c: &http_auth::ChallengeRef<'_>, name: &str| {
        c.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.to_unescaped())
    };
    let bearer = challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            Some(Challenge::Bearer {
                realm: param(c, "realm")?,
                service: param(c, "service"),
                scope: param(c, "scope"),
            })
        });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
            .then_some(Challenge::Basic)
    })
}

/// Whether a `WWW-Authenticate` value says the token was good but grants too little
/// (`error="insufficient_scope"`, RFC 6750).
fn is_insufficient_scope(header: &str) -> bool {
    http_auth::parse_challenges(header).is_ok_and(|challenges| {
        challenges.iter().any(|c| {
            c.scheme.eq_ignore_ascii_case("bearer")
                && c.params.iter().any(|(key, value)| {
                    key.eq_ignore_ascii_case("error")
                        && value.to_unescaped() == "insufficient_scope"
                })
        })
    })
}

/// What kiln's own requests authenticate with. No `Debug`: it holds the password or token.
enum Credential {
    Basic(String, String),
    Bearer(String),
}

/// The media type to put a manifest under: its `mediaType`, or for an OCI manifest or index
/// that leaves it out (OCI allows that), the one its shape says.
fn manifest_media_type(raw: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| format!("its manifest is not valid JSON: {e}"))?;
    match (kind_of(raw), value.get("mediaType").and_then(Value::as_str)) {
        (Kind::SchemaV1, _) => Err(
            "it has a Docker schema 1 manifest, which is deprecated and unsupported; push it \
             again with a current Docker or skopeo (they write schema 2)"
                .into(),
        ),
        (_, Some(media_type)) => Ok(media_type.to_string()),
        (Kind::Index, None) => Ok(OCI_INDEX.to_string()),
        (Kind::Manifest, None) => Ok(OCI_MANIFEST.to_string()),
        (Kind::Unknown(_), None) => Err(
            "its manifest has no mediaType and is neither an image manifest nor an index".into(),
        ),
    }
}

/// Whether a reference names its tag or digest, rather than leaving `latest` to be assumed.
fn names_tag_or_digest(reference: &str) -> bool {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    // The host's port is before the first `/`; a tag is after the last.
    rest.contains('@')
        || rest
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
}

/// What a registry's error envelope says, `CODE: message; CODE: message`.
fn envelope_text(envelope: &OciEnvelope) -> String {
    envelope
        .errors
        .iter()
        .map(|err| match serde_json::to_value(&err.code) {
            Ok(Value::String(code)) if !err.message.is_empty() => {
                format!("{code}: {}", err.message)
            }
            Ok(Value::String(code)) => code,
            _ => err.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its causes, `a: b: c` (reqwest hides the interesting part in the sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// True for `localhost` and loopback addresses, with or without a port.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a manifest or index is, from its `mediaType` (or, when absent, its shape).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
    SchemaV1,
    Unknown(String),
}

fn kind_of(raw: &[u8]) -> Kind {
    let Ok(value) = serde_json::from_slice::<Value>(raw) else {
        return Kind::Unknown("(none: it is not JSON)".into());
    };
    if value.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Kind::SchemaV1;
    }
    match value.get("mediaType").and_then(Value::as_str) {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Kind::Manifest,
        Some(OCI_INDEX | DOCKER_LIST) => Kind::Index,
        Some(other) if other.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Kind::SchemaV1
        }
        Some(other) => Kind::Unknown(other.to_string()),
        None if value.get("manifests").is_some() => Kind::Index,
        None if value.get("layers").is_some() => Kind::Manifest,
        None => Kind::Unknown("(none)".into()),
    }
}

/// A blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    media_type: String,
    digest: String,
    size: u64,
}

/// A manifest as the layout will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Converted {
    /// The manifest's new bytes when media types had to change; `None` keeps the registry's.
    rewritten: Option<Vec<u8>>,
    config: Blob,
    layers: Vec<Blob>,
}

/// Checks a manifest (OCI or Docker schema 2) and maps its media types to OCI ones.
fn to_oci_manifest(raw: &[u8]) -> Result<Converted, String> {
    let mut value: Value =
        serde_json::from_slice(raw).map_err(|e| format!("its manifest is not valid JSON: {e}"))?;
    let mut changed = false;
    // OCI lets a manifest leave out its mediaType; only a Docker one needs rewriting.
    if value.get("mediaType").and_then(Value::as_str) == Some(DOCKER_MANIFEST) {
        value["mediaType"] = Value::String(OCI_MANIFEST.into());
        changed = true;
    }
    let config = value
        .get_mut("config")
        .ok_or("its manifest has no config")?;
    let config_type = descriptor(config, "config")?.media_type;
    match config_type.as_str() {
        OCI_CONFIG => {}
        DOCKER_CONFIG => {
            config["mediaType"] = Value::String(OCI_CONFIG.into());
            changed = true;
        }
        other => {
            return Err(format!(
                "its config has media type {other}: it is an artifact (a chart, a signature, \
                 ...), not a container image"
            ))
        }
    }
    let config = descriptor(config, "config")?;
    let mut layers = Vec::new();
    if let Some(list) = value.get_mut("layers") {
        let list = list
            .as_array_mut()
            .ok_or("its manifest's `layers` is not a list")?;
        for layer in list {
            let d = descriptor(layer, "layer")?;
            let oci = oci_layer_type(&d.media_type).ok_or_else(|| {
                if d.media_type.contains("foreign") || d.media_type.contains("nondistributable") {
                    format!(
                        "layer {} is a non-distributable layer ({}), which the registry does not \
                         hold; kiln pulls images whose layers are all in the registry",
                        d.digest, d.media_type
                    )
                } else {
                    format!(
                        "layer {} has media type {}, not a filesystem layer kiln can use (tar, \
                         tar+gzip or tar+zstd)",
                        d.digest, d.media_type
                    )
                }
            })?;
            if oci != d.media_type {
                layer["mediaType"] = Value::String(oci.into());
                changed = true;
            }
            layers.push(Blob {
                media_type: oci.to_string(),
                ..d
            });
        }
    }
    let rewritten = if changed {
        Some(oci::canonical_json(&value).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(Converted {
        rewritten,
        config: Blob {
            media_type: OCI_CONFIG.into(),
            ..config
        },
        layers,
    })
}

fn descriptor(value: &Value, what: &str) -> Result<Blob, String> {
    let media_type = value
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a {what} descriptor in its manifest has no mediaType"))?;
    let digest = value
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a {what} descriptor in its manifest has no digest"))?;
    let size = value
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("the {what} {digest} in its manifest has no valid size"))?;
    match digest::split(digest) {
        Some(("sha256", _)) => {}
        Some((algorithm, _)) => {
            return Err(format!(
                "the {what} {digest} uses digest algorithm {algorithm}; kiln verifies sha256 only"
            ))
        }
        None => {
            return Err(format!(
                "the {what} digest `{digest}` is not a valid digest"
            ))
        }
    }
    Ok(Blob {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size,
    })
}

/// The OCI media type of a layer, for the OCI and Docker types of filesystem layers.
fn oci_layer_type(media_type: &str) -> Option<&'static str> {
    use crate::layer::{MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};
    match media_type {
        MEDIA_TYPE_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Some(MEDIA_TYPE_TAR),
        MEDIA_TYPE_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(MEDIA_TYPE_TAR_GZIP)
        }
        MEDIA_TYPE_TAR_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(MEDIA_TYPE_TAR_ZSTD)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &str) -> String {
        digest::sha256_bytes(b.as_bytes())
    }

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/library/base:1.0").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "library/base", Some("1.0"))
        );
        let r = parse_reference("docker://localhost/app").unwrap();
        assert_eq!((r.registry(), r.tag()), ("localhost", Some("latest")));
        let d = digest_of("x");
        let r = parse_reference(&format!("registry.example.com/a/b@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        for bad in [
            "",
            "busybox",
            "library/busybox:1",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/UPPER:1",
            "127.0.0.1:5000/x@sha256:abc",
            " 127.0.0.1:5000/x",
        ] {
            let e = parse_reference(bad).unwrap_err().to_string();
            assert!(e.contains("HOST[:PORT]/REPOSITORY[:TAG]"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhostx",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn docker_manifest_becomes_oci() {
        let (c, l1, l2) = (digest_of("c"), digest_of("1"), digest_of("2"));
        let raw = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 10, "digest": c},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 5, "digest": l1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": 6, "digest": l2},
            ],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&raw).unwrap()).unwrap();
        let bytes = converted.rewritten.unwrap();
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m.media_type().as_ref().unwrap().to_string(), OCI_MANIFEST);
        assert_eq!(m.config().media_type().to_string(), OCI_CONFIG);
        assert_eq!(m.config().digest().to_string(), c);
        assert_eq!(
            m.layers()[0].media_type().to_string(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(converted.layers[1].size, 6);
        assert_eq!(converted.layers[0].digest, l1);
    }

    #[test]
    fn oci_manifest_kept_as_is() {
        let raw = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": 10, "digest": digest_of("c")},
            "layers": [],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&raw).unwrap()).unwrap();
        assert_eq!(converted.rewritten, None);
        assert!(converted.layers.is_empty());
        // Without a mediaType (OCI allows that) it is kept too.
        let bare = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "size": 10, "digest": digest_of("c")},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 3, "digest": digest_of("l")}],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&bare).unwrap()).unwrap();
        assert_eq!(converted.rewritten, None);
        assert_eq!(converted.layers.len(), 1);
    }

    #[test]
    fn artifacts_and_bad_descriptors_refused() {
        let helm = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 1, "digest": digest_of("c")},
            "layers": [],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&helm).unwrap()).unwrap_err();
        assert!(e.contains("not a container image"), "{e}");
        let traversal = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": 1, "digest": "sha256:../../etc/passwd"},
            "layers": [],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&traversal).unwrap()).unwrap_err();
        assert!(e.contains("not a valid digest"), "{e}");
        let foreign = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 1, "digest": digest_of("c")},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 1, "digest": digest_of("l")}],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&foreign).unwrap()).unwrap_err();
        assert!(e.contains("non-distributable"), "{e}");
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of(br#"{"schemaVersion":1,"name":"x"}"#),
            Kind::SchemaV1
        );
        assert_eq!(
            kind_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            Kind::Index
        );
        assert_eq!(
            kind_of(format!(r#"{{"mediaType":"{DOCKER_LIST}"}}"#).as_bytes()),
            Kind::Index
        );
        assert_eq!(
            kind_of(br#"{"schemaVersion":2,"layers":[]}"#),
            Kind::Manifest
        );
    }

    #[test]
    fn messages_name_registry_image_and_remedy() {
        let e = RegistryError::Unauthorized {
            registry: "127.0.0.1:5000".into(),
            image: "library/base:1.0".into(),
            username: None,
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000 answered 401 for library/base:1.0: it wants credentials: \
             give a username and password for it"
        );
        let auth = RegistryAuth {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let opts = RegistryOptions::default();
        send(pull("localhost/x:1", Path::new("/nonexistent"), "1", &opts));
        send(push(Path::new("/nonexistent"), "1", "localhost/x:1", &opts));
        send(manifest_digest("localhost/x:1", &opts));
        send(retag("localhost/x:1", "2", &opts));
        send(delete_manifest("localhost/x:1", &opts));
    }

    #[test]
    fn challenges() {
        // The CNCF registry's token challenge: the scope's comma is inside the quotes.
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:kiln/app:pull,delete""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:kiln/app:pull,delete".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="kiln-test""#),
            Some(Challenge::Basic)
        );
        // Both offered: the token wins; scheme names are case-insensitive.
        assert_eq!(
            parse_challenge(r#"Basic realm="x", bearer realm="https://a/t""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: None,
            })
        );
        // A bearer challenge without a realm cannot be answered; nor can other schemes.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Negotiate realm="x""#), None);
        assert_eq!(parse_challenge("\"garbage"), None);
        assert!(is_insufficient_scope(
            r#"Bearer realm="https://a/t",scope="repository:x:delete",error="insufficient_scope""#
        ));
        assert!(!is_insufficient_scope(
            r#"Bearer realm="https://a/t",error="invalid_token""#
        ));
        assert!(!is_insufficient_scope(r#"Basic realm="x""#));
    }

    #[test]
    fn media_types_for_retag() {
        let typed = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#);
        assert_eq!(
            manifest_media_type(typed.as_bytes()).unwrap(),
            DOCKER_MANIFEST
        );
        // OCI lets both leave mediaType out; the shape tells which it is.
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        // Other types (artifacts) are copied as they are.
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert_eq!(
            manifest_media_type(artifact).unwrap(),
            "application/vnd.example+json"
        );
        let e = manifest_media_type(br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(e.contains("schema 1"), "{e}");
        let e = manifest_media_type(br#"{"schemaVersion":2}"#).unwrap_err();
        assert!(e.contains("no mediaType"), "{e}");
        assert!(manifest_media_type(b"not json").is_err());
    }

    #[test]
    fn deletes_and_retags_name_their_tag() {
        for yes in [
            "localhost:5000/a/b:1.0",
            "docker://localhost:5000/a:1",
            "localhost/a@sha256:00",
        ] {
            assert!(names_tag_or_digest(yes), "{yes}");
        }
        for no in [
            "localhost:5000/a/b",
            "docker://localhost:5000/a",
            "localhost/a",
        ] {
            assert!(!names_tag_or_digest(no), "{no}");
        }
    }

    #[test]
    fn unexpected_answers_are_quoted_short() {
        let page = "<html>".repeat(200);
        let e = http_error(
            reqwest::StatusCode::BAD_GATEWAY,
            page.as_bytes(),
            None,
            "https://auth.example.com/token?service=s&scope=x",
        );
        match e {
            OciDistributionError::ServerError { code, url, message } => {
                assert_eq!(code, 502);
                assert_eq!(url, "https://auth.example.com/token?service=s&scope=x");
                assert_eq!(message.chars().count(), QUOTED_BODY + 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            http_error(reqwest::StatusCode::UNAUTHORIZED, b"", None, "http://x/"),
            OciDistributionError::UnauthorizedError { .. }
        ));
    }

    #[test]
    fn denied_delete_says_delete() {
        let e = RegistryError::Denied {
            registry: "r.example.com".into(),
            image: "kiln/app:1.0-7".into(),
            action: Action::DeleteManifest("sha256:00").access(),
            username: Some("ci".into()),
        };
        assert_eq!(
            e.to_string(),
            "registry r.example.com denied delete access to kiln/app:1.0-7: user `ci` may not \
             delete it; check the repository name, or ask the registry's administrators for \
             delete access"
        );
    }
}
