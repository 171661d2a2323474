//! Disks as OCI 1.1 artifacts of chunks ([`kiln_chunk`]): what a registry or bucket region
//! receives of a disk ([`ChunkedDisk`], made into a [`crate::pieces::Piece`]), and [`pull`],
//! which rebuilds the disk from a region, reusing the chunks of a local earlier version and
//! fetching the rest with ranged reads.

use std::path::Path;

use crate::pieces::BlobFile;

/// A disk cut into chunks and packed against the newest version before it.
#[derive(Debug, Clone)]
pub struct ChunkedDisk {
    /// The encoded chunk index.
    pub index: Vec<u8>,
    /// The same bytes in a file (what is sent, so that a registry can mount it).
    pub index_file: BlobFile,
    /// Every pack the index uses (earlier versions' and the new one), in the index's order.
    pub packs: Vec<BlobFile>,
    /// `sha256:` of the raw disk.
    pub disk_digest: String,
    /// The raw disk's size.
    pub disk_size: u64,
    /// Chunks in the disk.
    pub chunks: usize,
    /// Chunks no earlier version had.
    pub new_chunks: usize,
    /// Compressed bytes of the new chunks: the new pack's size.
    pub new_bytes: u64,
    /// For an encrypted disk, its data key wrapped by the KMS key (carried in the artifact's
    /// annotations); the packs and the index are sealed under it.
    pub wrapped_key: Option<kiln_kms::WrappedDataKey>,
}

/// Cuts the raw disk at `raw` into chunks and packs those `known` (the newest earlier
/// version's index) lacks into one new pack in `packs_dir` (`sha256-HEX` files, where the
/// known index's packs must be too).
pub fn pack(
    raw: &Path,
    known: Option<&kiln_chunk::ChunkIndex>,
    packs_dir: &Path,
) -> Result<(ChunkedDisk, kiln_chunk::ChunkIndex), kiln_chunk::ChunkError> {
    pack_keyed(raw, known, packs_dir, None)
}

/// [`pack`], encrypted when `key` is given: every new frame and the index sealed under the
/// data key (`known` must be an index packed under the same data key).
pub fn pack_keyed(
    raw: &Path,
    known: Option<&kiln_chunk::ChunkIndex>,
    packs_dir: &Path,
    key: Option<(&kiln_kms::DataKey, &kiln_kms::WrappedDataKey)>,
) -> Result<(ChunkedDisk, kiln_chunk::ChunkIndex), kiln_chunk::ChunkError> {
    let chunked = kiln_chunk::chunk_file(raw, &kiln_chunk::Params::DEFAULT)?;
    let known: Vec<kiln_chunk::ChunkIndex> = known.into_iter().cloned().collect();
    let seal = key.map(|(k, _)| k as &dyn kiln_chunk::FrameSeal);
    let packed = kiln_chunk::pack_sealed(raw, &chunked, &known, packs_dir, seal)?;
    let index = packed.index.encode()?;
    // The index names chunks by their plain digests: sealed too, or it would tell a reader
    // without the key which known blocks the disk holds.
    let index = match key {
        Some((k, _)) => k.seal(&index).map_err(|e| kiln_chunk::ChunkError::Seal {
            doing: "encrypting the chunk index",
            why: e.to_string(),
        })?,
        None => index,
    };
    // The index is a blob like the packs: kept beside them under its digest, so that regions
    // of one registry mount it and distributing again finds it.
    let index_digest = crate::repo::digest_of(&index);
    let index_file = blob_file(packs_dir, &index_digest);
    if !index_file.is_file() {
        let tmp = packs_dir.join(format!(".index-{}", std::process::id()));
        std::fs::write(&tmp, &index)
            .and_then(|()| std::fs::rename(&tmp, &index_file))
            .map_err(kiln_chunk::ChunkError::io(
                "writing the chunk index",
                index_file.clone(),
            ))?;
    }
    let packs = packed
        .index
        .packs
        .iter()
        .map(|p| BlobFile {
            digest: p.digest.to_string(),
            size: p.size,
            path: blob_file(packs_dir, &p.digest.to_string()),
        })
        .collect();
    let disk = ChunkedDisk {
        index_file: BlobFile {
            digest: index_digest,
            size: index.len() as u64,
            path: index_file,
        },
        index,
        packs,
        disk_digest: packed.index.digest.to_string(),
        disk_size: packed.index.size,
        chunks: packed.index.entries.len(),
        new_chunks: packed.stats.chunks_new,
        new_bytes: packed.stats.new_stored_bytes,
        wrapped_key: key.map(|(_, w)| w.clone()),
    };
    Ok((disk, packed.index))
}

/// The file of a blob (a pack or an index, `sha256:HEX`) in a packs folder: `sha256-HEX`, the
/// name kiln_chunk gives the packs it writes.
pub fn blob_file(packs_dir: &Path, digest: &str) -> std::path::PathBuf {
    packs_dir.join(digest.replace(':', "-"))
}

/// What [`pull`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    /// `sha256:` of the rebuilt raw disk (checked against the index).
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Bytes fetched from the region.
    pub fetched: u64,
    /// Bytes taken from the local earlier version.
    pub reused: u64,
    /// Ranged reads made.
    pub requests: usize,
}

/// Why a pull failed (the output file is untouched).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The region failed.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// What the reference names is not a kiln disk.
    #[error("{0}")]
    NotADisk(String),
    /// Rebuilding failed.
    #[error(transparent)]
    Chunks(#[from] kiln_chunk::ChunkError),
    /// The disk is encrypted and its key cannot be used.
    #[error("{0}")]
    Key(String),
}

struct Source<'a> {
    repo: &'a dyn crate::repo::Repo,
    fetched: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl kiln_chunk::PackSource for Source<'_> {
    async fn read(
        &self,
        pack: &kiln_chunk::Digest,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, std::io::Error> {
        let bytes = self
            .repo
            .read_range(&pack.to_string(), offset, length)
            .await
            .map_err(std::io::Error::other)?;
        self.fetched
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(bytes)
    }
}

/// Rebuilds the raw disk `reference` (a tag or digest) names in `repo` into `out`, reusing the
/// chunks of `base` (an earlier version, or `out` itself) when given.
pub async fn pull(
    repo: &dyn crate::repo::Repo,
    reference: &str,
    out: &Path,
    base: Option<&Path>,
) -> Result<Pulled, PullError> {
    pull_keyed(
        repo,
        reference,
        out,
        base,
        &|w: &kiln_kms::WrappedDataKey| {
            Err(format!(
                "the disk is encrypted with the KMS key {}: pull it with `kiln disk pull` as an \
             account allowed to use that key",
                w.key_arn
            ))
        },
    )
    .await
}

/// [`pull`] of a disk that may be encrypted: `unwrap` gives the data key of the wrapped key
/// the artifact carries, or says why not (the key is not the account's, or is disabled).
pub async fn pull_keyed(
    repo: &dyn crate::repo::Repo,
    reference: &str,
    out: &Path,
    base: Option<&Path>,
    unwrap: &(dyn Fn(&kiln_kms::WrappedDataKey) -> Result<kiln_kms::DataKey, String> + Sync),
) -> Result<Pulled, PullError> {
    let location = repo.location();
    let manifest = repo.manifest(reference).await?.ok_or_else(|| {
        PullError::NotADisk(format!("{location} has no {reference}; check the tag"))
    })?;
    let value: serde_json::Value = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| PullError::NotADisk(format!("{location}:{reference}: {e}")))?;
    if value.get("artifactType").and_then(|t| t.as_str()) != Some(kiln_chunk::ARTIFACT_TYPE) {
        return Err(PullError::NotADisk(format!(
            "{location}:{reference} is not a kiln disk (its artifactType is not {}); a \
             container image is pulled with skopeo or podman",
            kiln_chunk::ARTIFACT_TYPE
        )));
    }
    let index_layer = value
        .get("layers")
        .and_then(|l| l.as_array())
        .and_then(|l| {
            l.iter().find(|d| {
                d.get("mediaType").and_then(|m| m.as_str()) == Some(kiln_chunk::INDEX_MEDIA_TYPE)
            })
        })
        .ok_or_else(|| PullError::NotADisk(format!("{location}:{reference} has no chunk index")))?;
    let (digest, size) = (
        index_layer
            .get("digest")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_string(),
        index_layer
            .get("size")
            .and_then(|s| s.as_u64())
            .unwrap_or(0),
    );
    let bytes = repo.read_range(&digest, 0, size).await?;
    if crate::repo::digest_of(&bytes) != digest {
        return Err(PullError::NotADisk(format!(
            "{location}: the chunk index {digest} does not have that digest"
        )));
    }
    let data_key = match value
        .get("annotations")
        .and_then(|a| a.get(crate::encrypt::DISK_KEY_ANNOTATION))
        .and_then(|k| k.as_str())
    {
        Some(text) => {
            let wrapped: kiln_kms::WrappedDataKey = serde_json::from_str(text).map_err(|e| {
                PullError::NotADisk(format!("{location}:{reference}: its wrapped data key: {e}"))
            })?;
            Some(unwrap(&wrapped).map_err(PullError::Key)?)
        }
        None => None,
    };
    let bytes = match &data_key {
        Some(k) => k
            .open(&bytes)
            .map_err(|e| PullError::Key(format!("{location}:{reference}: the chunk index: {e}")))?,
        None => bytes,
    };
    let index = kiln_chunk::ChunkIndex::decode(&bytes)?;
    let source = Source {
        repo,
        fetched: std::sync::atomic::AtomicU64::new(size),
    };
    let seal = data_key.as_ref().map(|k| k as &dyn kiln_chunk::FrameSeal);
    let stats = kiln_chunk::rebuild_sealed(&index, out, base, &source, seal).await?;
    Ok(Pulled {
        digest: index.digest.to_string(),
        size: index.size,
        fetched: source.fetched.load(std::sync::atomic::Ordering::Relaxed),
        reused: stats.bytes_reused,
        requests: stats.range_requests + 1,
    })
}
