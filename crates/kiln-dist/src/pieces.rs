//! What a remote region receives, prepared once per distribution and shared by every registry
//! and bucket target: each [`Piece`] is one manifest with its blobs, going to one repository
//! of the region (`NAME`, `NAME/disk`, `NAME/containerdisk`).
//!
//! - the container image, read from a layout written in the build's scratch folder;
//! - the disk as an OCI 1.1 artifact of chunks ([`crate::chunked`]): an empty config, the
//!   chunk index and the packs its chunks are in;
//! - the disk as a KubeVirt `containerDisk`: an ordinary image whose one layer holds the qcow2
//!   file under `/disk/`, owned by uid and gid 107 as KubeVirt's documentation asks.

use std::path::{Path, PathBuf};

use kiln_image::ImageSettings;
use serde_json::json;

use crate::repo::digest_of;
use crate::{DistError, OutputKind};

/// The empty JSON object an OCI 1.1 artifact has as its config.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Its media type.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The media type of every manifest kiln writes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    /// `sha256:` of its bytes.
    pub digest: String,
    /// Its length.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
}

/// One manifest and its blobs, for one repository of a region.
#[derive(Debug, Clone)]
pub struct Piece {
    /// What it is, as the record's output names it.
    pub kind: OutputKind,
    /// The repository below the image's own (`disk`), or `None` for the image's own.
    pub suffix: Option<&'static str>,
    /// The manifest's bytes, pushed as they are.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub digest: String,
    /// Blobs in files.
    pub blobs: Vec<BlobFile>,
    /// Small blobs in memory (an artifact's empty config, a chunk index).
    pub small: Vec<(String, Vec<u8>)>,
}

impl Piece {
    /// Bytes of its blobs and manifest: what a region without any of it receives.
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum::<u64>()
            + self.small.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            + self.manifest.len() as u64
    }
}

fn write_err(what: impl std::fmt::Display) -> DistError {
    DistError::Write {
        region: "(preparing)".into(),
        detail: what.to_string(),
    }
}

/// The image tagged `tag` in `layout` as a piece of kind `kind`.
pub fn from_layout(
    layout: &Path,
    tag: &str,
    kind: OutputKind,
    suffix: Option<&'static str>,
) -> Result<Piece, DistError> {
    let image = kiln_image::oci::read_image(layout, Some(tag)).map_err(write_err)?;
    let manifest_path =
        kiln_image::oci::blob_path(layout, &image.manifest_digest).map_err(write_err)?;
    let manifest = std::fs::read(&manifest_path)
        .map_err(|e| write_err(format!("reading {}: {e}", manifest_path.display())))?;
    let config_path =
        kiln_image::oci::blob_path(layout, &image.config_digest).map_err(write_err)?;
    let mut blobs: Vec<BlobFile> = image
        .layers
        .iter()
        .map(|l| BlobFile {
            digest: l.digest.clone(),
            size: l.size,
            path: l.path.clone(),
        })
        .collect();
    blobs.push(BlobFile {
        digest: image.config_digest.clone(),
        size: image.manifest.config().size(),
        path: config_path,
    });
    Ok(Piece {
        kind,
        suffix,
        digest: image.manifest_digest,
        manifest,
        blobs,
        small: Vec::new(),
    })
}

/// The artifact's container image as a piece: written as a layout in its scratch folder (the
/// blobs hard-linked), then read back. `None` without a container image.
pub fn image(a: &crate::Artifact) -> Result<Option<Piece>, DistError> {
    let Some(image) = &a.image else {
        return Ok(None);
    };
    let layout = a.scratch.join("image");
    let tag = a.build.build_tag();
    kiln_image::write_image(&layout, &tag, &image.blobs, &image.settings).map_err(write_err)?;
    from_layout(&layout, &tag, OutputKind::OciRegistry, None).map(Some)
}

/// The KubeVirt containerDisk of a qcow2 file: `/disk/FILE_NAME` in one uncompressed layer,
/// written in `scratch` (the same bytes from the same disk).
pub fn container_disk(
    qcow2: &Path,
    file_name: &str,
    scratch: &Path,
    settings: &ImageSettings,
) -> Result<Piece, DistError> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| write_err(format!("creating {}: {e}", scratch.display())))?;
    let tar_path = scratch.join("containerdisk.tar");
    let io = |what: &str, e: std::io::Error| write_err(format!("{what}: {e}"));
    {
        let out = std::fs::File::create(&tar_path).map_err(|e| io("creating the layer", e))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
        let mtime = u64::try_from(settings.created.timestamp()).unwrap_or(0);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o555);
        dir.set_uid(107);
        dir.set_gid(107);
        dir.set_mtime(mtime);
        dir.set_size(0);
        tar.append_data(&mut dir, "disk/", std::io::empty())
            .map_err(|e| io("writing the layer", e))?;
        let file = std::fs::File::open(qcow2)
            .map_err(|e| io(&format!("reading {}", qcow2.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| io(&format!("reading {}", qcow2.display()), e))?
            .len();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o440);
        h.set_uid(107);
        h.set_gid(107);
        h.set_mtime(mtime);
        h.set_size(len);
        tar.append_data(&mut h, format!("disk/{file_name}"), file)
            .map_err(|e| io("writing the layer", e))?;
        tar.into_inner()
            .and_then(|mut w| std::io::Write::flush(&mut w))
            .map_err(|e| io("writing the layer", e))?;
    }
    let digest = kiln_image::digest::sha256_file(&tar_path).map_err(write_err)?;
    let size = std::fs::metadata(&tar_path)
        .map_err(|e| io("reading the layer", e))?
        .len();
    let layer = kiln_image::LayerBlob {
        digest: digest.clone(),
        diff_id: digest,
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        path: tar_path,
    };
    let layout = scratch.join("containerdisk");
    kiln_image::write_image(&layout, "disk", &[layer], settings).map_err(write_err)?;
    from_layout(
        &layout,
        "disk",
        OutputKind::ContainerDisk,
        Some("containerdisk"),
    )
}

/// The chunked disk as an OCI 1.1 artifact: the empty config, the index, then the packs.
pub fn chunked_disk(disk: &crate::chunked::ChunkedDisk, title: &str) -> Piece {
    let config_digest = digest_of(EMPTY_CONFIG);
    let mut layers = vec![json!({
        "mediaType": kiln_chunk::INDEX_MEDIA_TYPE,
        "digest": disk.index_file.digest,
        "size": disk.index.len(),
        "annotations": {"org.opencontainers.image.title": format!("{title}.index")},
    })];
    for p in &disk.packs {
        layers.push(json!({
            "mediaType": kiln_chunk::PACK_MEDIA_TYPE,
            "digest": p.digest,
            "size": p.size,
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": kiln_chunk::ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config_digest, "size": EMPTY_CONFIG.len()},
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.title": title,
            "dev.kiln.disk.digest": disk.disk_digest,
            "dev.kiln.disk.size": disk.disk_size.to_string(),
        },
    });
    let mut manifest = manifest;
    crate::encrypt::annotate_disk(&mut manifest, disk);
    // serde_json's maps are sorted: the same disk gives the same bytes, and digest.
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    Piece {
        kind: OutputKind::DiskChunks,
        suffix: Some("disk"),
        digest: digest_of(&bytes),
        manifest: bytes,
        blobs: std::iter::once(disk.index_file.clone())
            .chain(disk.packs.iter().cloned())
            .collect(),
        small: vec![(config_digest, EMPTY_CONFIG.to_vec())],
    }
}

/// A piece as a repository holds it, for distributing a finished build again: the manifest
/// `digest` names, and its blobs from local files where `local` has them (the layer store,
/// the pack store), downloaded into `scratch` otherwise.
pub async fn fetch(
    repo: &dyn crate::repo::Repo,
    digest: &str,
    kind: OutputKind,
    local: &(dyn Fn(&str) -> Option<PathBuf> + Send + Sync),
    scratch: &Path,
) -> Result<Piece, crate::repo::RepoError> {
    use crate::repo::RepoError;
    let location = repo.location();
    let m = repo
        .manifest(digest)
        .await?
        .ok_or_else(|| RepoError::Protocol(format!("{location} no longer has {digest}")))?;
    let v: serde_json::Value = serde_json::from_slice(&m.bytes)
        .map_err(|e| RepoError::Protocol(format!("{location}@{digest}: {e}")))?;
    let mut descriptors: Vec<&serde_json::Value> = v
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    descriptors.extend(v.get("config"));
    std::fs::create_dir_all(scratch)
        .map_err(|e| RepoError::Local(format!("creating {}: {e}", scratch.display())))?;
    let (mut blobs, mut small) = (Vec::new(), Vec::new());
    for d in descriptors {
        let (Some(bd), Some(size)) = (
            d.get("digest").and_then(|x| x.as_str()),
            d.get("size").and_then(|x| x.as_u64()),
        ) else {
            return Err(RepoError::Protocol(format!(
                "{location}@{digest} has a descriptor without digest or size"
            )));
        };
        if size <= 1 << 20 {
            let bytes = repo.read_range(bd, 0, size).await?;
            small.push((bd.to_string(), bytes));
            continue;
        }
        let path = match local(bd) {
            Some(p) => p,
            None => download(repo, bd, size, scratch).await?,
        };
        blobs.push(BlobFile {
            digest: bd.to_string(),
            size,
            path,
        });
    }
    Ok(Piece {
        kind,
        suffix: match kind {
            OutputKind::DiskChunks => Some("disk"),
            OutputKind::ContainerDisk => Some("containerdisk"),
            _ => None,
        },
        digest: m.digest,
        manifest: m.bytes,
        blobs,
        small,
    })
}

/// A blob into a file of `dir`, in pieces (a pack can be hundreds of MiB), checked.
async fn download(
    repo: &dyn crate::repo::Repo,
    digest: &str,
    size: u64,
    dir: &Path,
) -> Result<PathBuf, crate::repo::RepoError> {
    use crate::repo::RepoError;
    use sha2::Digest as _;
    use std::io::Write as _;
    let path = crate::chunked::blob_file(dir, digest);
    let io = |e: std::io::Error| RepoError::Local(format!("writing {}: {e}", path.display()));
    let mut file = std::fs::File::create(&path).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(8 << 20);
        let bytes = repo.read_range(digest, at, n).await?;
        hasher.update(&bytes);
        file.write_all(&bytes).map_err(io)?;
        at += n;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        let _ = std::fs::remove_file(&path);
        return Err(RepoError::Protocol(format!(
            "{}: blob {digest} came back as {got}",
            repo.location()
        )));
    }
    Ok(path)
}
