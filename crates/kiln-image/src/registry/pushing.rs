//! Pushing: the layers and config a registry lacks, then the manifest byte for byte.

use std::path::{Path, PathBuf};

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::errors::OciDistributionError;
use tokio::io::AsyncReadExt as _;

use crate::oci;

use super::convert::OCI_MANIFEST;
use super::errors::Action;
use super::remote::Remote;
use super::{blocking, RegistryError, PARALLEL};

/// Upload read size (one monolithic PUT per blob, streamed in pieces of this size).
const UPLOAD_CHUNK: usize = 1 << 20;

/// Pushes the image tagged `tag` in `layout` to the tag `remote` names: [`super::push()`] once
/// its arguments are checked.
pub(super) async fn from_layout(
    remote: Remote,
    layout: &Path,
    tag: &str,
) -> Result<String, RegistryError> {
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

impl Remote {
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
}
