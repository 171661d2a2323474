//! A container image piece encrypted for registry and bucket regions: each layer in
//! ocicrypt's format under a KMS key (kiln-kms), the manifest's layer descriptors rewritten
//! (`+encrypted` media types, the `org.opencontainers.image.enc.*` annotations), the config as
//! it was (its `diff_ids` are the plain layers', as ocicrypt leaves them). The encryption is
//! deterministic per key and layer, so an unchanged layer is the same blob in every version
//! and is not sent again. The layer store and the step cache keep the plain layers.

use std::path::Path;

use crate::pieces::{BlobFile, Piece};
use crate::repo::digest_of;
use crate::DistError;

fn fail(detail: String) -> DistError {
    DistError::Write {
        region: "(encrypting)".into(),
        detail,
    }
}

/// The piece with its layers encrypted under `key`, the encrypted blobs written in `scratch`.
pub fn image_piece(
    piece: Piece,
    key: &kiln_kms::OpenKey,
    scratch: &Path,
) -> Result<Piece, DistError> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| fail(format!("creating {}: {e}", scratch.display())))?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&piece.manifest)
        .map_err(|e| fail(format!("reading the image's manifest: {e}")))?;
    let layers = manifest
        .get_mut("layers")
        .and_then(|l| l.as_array_mut())
        .ok_or_else(|| fail("the image's manifest has no layers".into()))?;
    let mut blobs = piece.blobs.clone();
    for desc in layers.iter_mut() {
        let (Some(digest), Some(media_type)) = (
            desc.get("digest")
                .and_then(|d| d.as_str())
                .map(str::to_string),
            desc.get("mediaType")
                .and_then(|d| d.as_str())
                .map(str::to_string),
        ) else {
            return Err(fail(
                "a layer of the image's manifest has no digest or media type".into(),
            ));
        };
        let Some(i) = blobs.iter().position(|b| b.digest == digest) else {
            return Err(fail(format!(
                "the layer {digest} is not among the image's blobs"
            )));
        };
        let plain = &blobs[i];
        let tmp = scratch.join(format!(
            ".encrypting-{}",
            digest.trim_start_matches("sha256:")
        ));
        let layer = {
            let mut input = std::io::BufReader::new(
                std::fs::File::open(&plain.path)
                    .map_err(|e| fail(format!("reading {}: {e}", plain.path.display())))?,
            );
            let mut output = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .map_err(|e| fail(format!("creating {}: {e}", tmp.display())))?,
            );
            let layer = key
                .encrypt_layer(&digest, &media_type, &mut input, &mut output)
                .map_err(|e| fail(format!("encrypting the layer {digest}: {e}")))?;
            std::io::Write::flush(&mut output)
                .map_err(|e| fail(format!("writing {}: {e}", tmp.display())))?;
            layer
        };
        let path = scratch.join(layer.digest.trim_start_matches("sha256:"));
        std::fs::rename(&tmp, &path)
            .map_err(|e| fail(format!("naming {}: {e}", path.display())))?;
        desc["mediaType"] = layer.media_type.clone().into();
        desc["digest"] = layer.digest.clone().into();
        desc["size"] = layer.size.into();
        let annotations = desc.as_object_mut().map(|o| {
            o.entry("annotations")
                .or_insert_with(|| serde_json::json!({}))
        });
        if let Some(serde_json::Value::Object(a)) = annotations {
            for (k, v) in &layer.annotations {
                a.insert(k.clone(), v.clone().into());
            }
        }
        blobs[i] = BlobFile {
            digest: layer.digest,
            size: layer.size,
            path,
        };
    }
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| fail(format!("writing the manifest: {e}")))?;
    Ok(Piece {
        digest: digest_of(&bytes),
        manifest: bytes,
        blobs,
        ..piece
    })
}

/// The manifest annotation of an encrypted disk artifact: its data key, wrapped by the KMS
/// key (JSON of [`kiln_kms::WrappedDataKey`]: the key's ARN and the wrapped bytes).
pub const DISK_KEY_ANNOTATION: &str = "dev.kiln.disk.key";

/// Adds an encrypted disk's wrapped data key to its artifact manifest.
pub fn annotate_disk(manifest: &mut serde_json::Value, disk: &crate::chunked::ChunkedDisk) {
    let Some(w) = &disk.wrapped_key else {
        return;
    };
    if let (Some(a), Ok(text)) = (
        manifest
            .get_mut("annotations")
            .and_then(|a| a.as_object_mut()),
        serde_json::to_string(w),
    ) {
        a.insert(DISK_KEY_ANNOTATION.into(), text.into());
    }
}
