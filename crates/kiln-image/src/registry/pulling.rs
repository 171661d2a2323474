//! Pulling: an image's manifest, config and layers from the registry into a layout, with
//! every blob checked against its digest.

use std::path::Path;

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::OciDescriptor;
use oci_spec::image::ImageConfiguration;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::digest;
use crate::oci::{self, ReadImage};

use super::convert::{kind_of, to_oci_manifest, Blob, Kind};
use super::errors::Action;
use super::remote::Remote;
use super::{blocking, RegistryError, PARALLEL};

/// Pulls the image `remote` names into `layout` under `tag`: [`super::pull()`] once its
/// arguments are checked.
pub(super) async fn into_layout(
    remote: Remote,
    layout: &Path,
    tag: &str,
) -> Result<ReadImage, RegistryError> {
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

impl Remote {
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
}
