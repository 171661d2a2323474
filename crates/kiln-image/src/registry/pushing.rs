//! Pushing: the layers and config a registry lacks (mounted from another repository when one
//! has them), then the manifest byte for byte.

use std::path::{Path, PathBuf};

use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::oci;

use super::convert::OCI_MANIFEST;
use super::remote::Remote;
use super::repository::Repository;
use super::upload::Sent;
use super::{blocking, PushReport, RegistryError, PARALLEL};

/// Pushes the image tagged `tag` in `layout` to the tag `remote` names: [`super::push_with()`]
/// once its arguments are checked.
pub(super) async fn from_layout(
    remote: Remote,
    layout: &Path,
    tag: &str,
    mount_from: &[String],
) -> Result<PushReport, RegistryError> {
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
    let tag = remote.reference.tag().unwrap_or("latest").to_string();
    let registry = remote.registry.clone();
    let image_name = remote.image.clone();
    let repository = Repository::from_remote(remote)?;
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
    let repository = &repository;
    let sent: Vec<Sent> = futures_util::stream::iter(blobs)
        .map(|(digest, size, path)| async move {
            repository.put_blob(&digest, size, &path, mount_from).await
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;

    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map_or_else(|| OCI_MANIFEST.to_string(), ToString::to_string);
    let pushed = repository
        .put_manifest(&tag, &manifest, &media_type)
        .await?;
    // The tag must name what was put there, else another writer raced us.
    let registry_digest = repository
        .manifest_head(&tag)
        .await?
        .unwrap_or_else(|| "nothing".to_string());
    if registry_digest != image.manifest_digest || pushed != image.manifest_digest {
        return Err(RegistryError::Protocol {
            registry,
            image: image_name,
            doing: "checking the pushed manifest".into(),
            message: format!(
                "the tag names {registry_digest} after kiln pushed {}: another push to the same \
                 tag raced this one, or the registry rewrote the manifest",
                image.manifest_digest
            ),
        });
    }
    let count = |f: fn(&Sent) -> bool| sent.iter().filter(|s| f(s)).count();
    let report = PushReport {
        digest: registry_digest,
        bytes_sent: sent.iter().map(Sent::bytes).sum::<u64>() + manifest.len() as u64,
        uploaded: count(|s| matches!(s, Sent::Uploaded { .. })),
        mounted: count(|s| matches!(s, Sent::Mounted { .. })),
        present: count(|s| matches!(s, Sent::Present)),
    };
    tracing::info!(
        registry = %registry,
        image = %image_name,
        manifest = %report.digest,
        blobs_uploaded = report.uploaded,
        blobs_mounted = report.mounted,
        blobs_present = report.present,
        bytes_sent = report.bytes_sent,
        "image pushed"
    );
    Ok(report)
}
