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
//! so the image keeps the digest it has in the layout; [`push_with`] also mounts blobs from
//! other repositories of the registry and reports what it moved.
//!
//! [`Repository`] is the blob-level API under it, for pushing images and OCI artifacts (disk
//! chunks) with as few bytes as possible: [`Repository::blob_exists`],
//! [`Repository::put_blob`] (present, mounted, or uploaded in resumable pieces),
//! [`Repository::read_range`], [`Repository::put_manifest`], [`Repository::get_manifest`] and
//! [`Repository::tags`]. Every one of its requests is retried on transient failures as its
//! [`RetryPolicy`] says, and answers the registry's basic or bearer-token challenge once per
//! repository.
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

use std::fmt;
use std::path::Path;

use crate::oci::{self, OciError, ReadImage};

mod auth;
mod convert;
mod delete;
mod errors;
mod manifests;
mod pulling;
mod pushing;
mod remote;
mod repository;
mod retry;
mod upload;

use errors::Action;
use remote::Remote;

/// The parsed image reference [`parse_reference`] returns (oci-client's own type).
pub use oci_client::Reference;
pub use repository::{Repository, RepositoryStats, PIECE_SIZE};
pub use retry::RetryPolicy;
pub use upload::Sent;

/// Blobs moved at once: enough to fill a link with a few big layers, few enough that a
/// registry's per-client limits are not hit.
const PARALLEL: usize = 3;

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
    pulling::into_layout(remote, layout, tag).await
}

/// Pushes the image tagged `tag` in `layout` to `reference` (which needs a tag, not a digest):
/// layers and config the registry lacks, then the manifest, byte for byte. Returns the
/// manifest digest the registry reports for the tag afterwards. [`push_with`] says more.
pub async fn push(
    layout: &Path,
    tag: &str,
    reference: &str,
    opts: &RegistryOptions,
) -> Result<String, RegistryError> {
    Ok(push_with(layout, tag, reference, opts, &[]).await?.digest)
}

/// What [`push_with`] moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The manifest digest the tag names afterwards (the layout's).
    pub digest: String,
    /// Bytes sent: blob bytes uploaded (pieces sent again after a failure counted again) and
    /// the manifest.
    pub bytes_sent: u64,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    /// Blobs the repository had already.
    pub present: usize,
}

/// Pushes the image tagged `tag` in `layout` to `reference` (which needs a tag): each layer
/// and the config through [`Repository::put_blob`] (nothing sent for blobs the repository
/// has; mounted from the first repository of `mount_from`, `REPO` paths in the same
/// registry, that has them; else uploaded, chunked and resumable, with retries), then the
/// manifest byte for byte, checked to be what the tag names afterwards, so the image keeps
/// the digest it has in the layout.
pub async fn push_with(
    layout: &Path,
    tag: &str,
    reference: &str,
    opts: &RegistryOptions,
    mount_from: &[String],
) -> Result<PushReport, RegistryError> {
    let reference = parse_reference(reference)?;
    if reference.digest().is_some() {
        return Err(RegistryError::BadReference {
            input: reference.to_string(),
            reason: "a push needs a tag to put the image under, not a digest".into(),
        });
    }
    let remote = Remote::new(reference, opts)?;
    pushing::from_layout(remote, layout, tag, mount_from).await
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
    manifests::copy_to_tag(source, to_tag).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;

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
        let repo = Repository::open("localhost/x", &opts).unwrap();
        send(repo.put_blob("sha256:00", 0, Path::new("/x"), &[]));
        send(repo.get_manifest("1"));
        send(repo.tags());
        send(manifest_digest("localhost/x:1", &opts));
        send(retag("localhost/x:1", "2", &opts));
        send(delete_manifest("localhost/x:1", &opts));
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
}
