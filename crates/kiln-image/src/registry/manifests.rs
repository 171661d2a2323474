//! Manifests on the registry: fetching one with its digest checked, looking up which one a
//! tag names, and putting one under another tag (a retag).

use crate::digest;
use crate::oci;

use super::convert::{manifest_media_type, ACCEPT};
use super::errors::Action;
use super::remote::Remote;
use super::{Reference, RegistryError};

impl Remote {
    /// Fetches a manifest or index, with its digest checked against the reference's digest
    /// (when it has one) and the registry's `Docker-Content-Digest`.
    pub(super) async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, String), RegistryError> {
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

    /// The digest the registry gives for this reference's manifest; `None` when it has no such
    /// tag, manifest or repository.
    pub(super) async fn digest_of(
        &self,
        action: Action<'_>,
    ) -> Result<Option<String>, RegistryError> {
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
}

/// Puts the manifest `source` names under `to_tag` in the same repository and checks that the
/// tag names it afterwards: [`super::retag()`] once its arguments are checked.
pub(super) async fn copy_to_tag(source: Remote, to_tag: &str) -> Result<String, RegistryError> {
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
