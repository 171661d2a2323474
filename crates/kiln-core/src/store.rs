//! kiln's data directory and its content-addressed layer store.
//!
//! ```text
//! $KILN_HOME/
//!   blobs/sha256/<hex>          compressed layer blobs (an OCI layout's blobs folder shape)
//!   layers/<diff-id hex>/       one layer: fs/ (overlay lower-dir form) and layer.json
//!   cache/<key hex>.json        step cache: key -> layer
//!   disks/<key hex>/            assembled disks and their conversions (crate::disk::cache)
//!   images/<name>/<version>/<n>/ build records and logs
//!   regions/<region>/           default local regions (OCI image layouts)
//!   run/<build id>/             scratch of running builds (swept when their kiln is gone)
//!   accounts.json               accounts and their access keys (0600; crate::accounts)
//! ```

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What kiln was doing.
        what: String,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored file is not what kiln wrote.
    #[error("{path} is damaged: {why} (remove it; kiln rebuilds what it needs)")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A row of the state store holds what this kiln cannot read (the store itself is fine).
    #[error(
        "{what} in {path} cannot be read ({detail}); kiln changed nothing: it was written by \
         another version of kiln or edited by hand"
    )]
    Unreadable {
        /// The store's file.
        path: PathBuf,
        /// Which row and part (`the record of ARN`).
        what: String,
        /// What JSON said.
        detail: String,
    },
    /// A value could not be encoded for the state store (nothing was stored).
    #[error("encoding {0} for the state store failed; nothing was stored")]
    Encode(String),
    /// A layer could not be written or read.
    #[error(transparent)]
    Layer(#[from] kiln_image::LayerError),
    /// The state store (resources and build records) failed.
    #[error(transparent)]
    State(#[from] kiln_store::StoreError),
    /// Cutting a disk into chunks or packing them failed.
    #[error(transparent)]
    Chunks(#[from] kiln_chunk::ChunkError),
    /// A KMS key or data key could not be used.
    #[error(transparent)]
    Kms(#[from] kiln_kms::KmsError),
}

pub(crate) fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// The hex SHA-256 of bytes (cache keys, recipe and document digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Writes JSON through a temporary file and a rename: readers see the old or the new file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("writing", path))
}

/// Writes bytes through a temporary file and a rename: readers see the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("writing", path))
}

/// Reads JSON written by [`write_json`]; `Ok(None)` when the file does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            what: "reading".into(),
            path: path.to_path_buf(),
            source: e,
        }),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                why: e.to_string(),
            }),
    }
}

/// The paths of a kiln data directory.
#[derive(Debug, Clone)]
pub struct Home {
    /// `$KILN_HOME`.
    pub root: PathBuf,
}

impl Home {
    /// A data directory at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    /// Compressed layer blobs (`blobs/sha256/<hex>` below it).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// Extracted layers.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// Step cache entries.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Build records.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Default local regions.
    pub fn regions(&self) -> PathBuf {
        self.root.join("regions")
    }
    /// Assembled disks, kept under what made them.
    pub fn disks(&self) -> PathBuf {
        self.root.join("disks")
    }
    /// Scratch of running builds.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// Accounts and their access keys, secrets included (see [`crate::accounts`]).
    pub fn accounts(&self) -> PathBuf {
        self.root.join("accounts.json")
    }
}

/// What the store knows about one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
    /// Where it came from (`component hardening`, `bootstrap:debian/bookworm`).
    pub description: String,
    /// Disk space of the extracted tree.
    #[serde(default)]
    pub tree_bytes: u64,
    /// When it was stored.
    pub created: DateTime<Utc>,
}

/// A layer present in the store.
#[derive(Debug, Clone)]
pub struct StoredLayer {
    /// Its facts.
    pub info: LayerInfo,
    /// The extracted tree (an overlayfs lower dir).
    pub fs: PathBuf,
    /// The compressed blob.
    pub blob: PathBuf,
}

impl StoredLayer {
    /// The blob as the image crate describes it.
    pub fn as_blob(&self) -> kiln_image::LayerBlob {
        kiln_image::LayerBlob {
            digest: self.info.digest.clone(),
            diff_id: self.info.diff_id.clone(),
            size: self.info.size,
            media_type: self.info.media_type.clone(),
            path: self.blob.clone(),
        }
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The content-addressed layer store.
#[derive(Debug, Clone)]
pub struct LayerStore {
    home: Home,
}

impl LayerStore {
    /// The store of a data directory.
    pub fn new(home: Home) -> Self {
        LayerStore { home }
    }

    /// Where `write_layer` should put blobs.
    pub fn blobs_dir(&self) -> PathBuf {
        self.home.blobs()
    }

    fn dir(&self, diff_id: &str) -> PathBuf {
        self.home.layers().join(hex_of(diff_id))
    }

    /// The path of a blob by digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.home.blobs().join("sha256").join(hex_of(digest))
    }

    /// A layer, when it is complete in the store (facts, tree and blob).
    pub fn get(&self, diff_id: &str) -> Option<StoredLayer> {
        let dir = self.dir(diff_id);
        let info: LayerInfo = read_json(&dir.join("layer.json")).ok().flatten()?;
        let fs = dir.join("fs");
        let blob = self.blob_path(&info.digest);
        (fs.is_dir() && blob.is_file()).then_some(StoredLayer { info, fs, blob })
    }

    /// The layer's tree with the times its blob gives (see [`kiln_image::align_times`]), once
    /// per layer: the latest of them. Disks are made from trees, and a tree captured from a
    /// builder keeps the times of the build until this is done.
    pub fn aligned(&self, layer: &StoredLayer) -> Result<i64, StoreError> {
        let marker = self.dir(&layer.info.diff_id).join("times");
        if let Some(t) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(t);
        }
        let latest = kiln_image::align_times(&layer.blob, &layer.fs)?;
        let tmp = marker.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, format!("{latest}\n"))
            .and_then(|_| std::fs::rename(&tmp, &marker))
            .map_err(io("writing", &marker))?;
        Ok(latest)
    }

    /// Marks a layer as just used (for least-recently-used eviction).
    pub fn touch(&self, diff_id: &str) {
        let marker = self.dir(diff_id).join("used");
        let _ = std::fs::write(marker, Utc::now().to_rfc3339());
    }

    /// When a layer was last used.
    pub fn last_used(&self, diff_id: &str) -> Option<DateTime<Utc>> {
        let dir = self.dir(diff_id);
        std::fs::read_to_string(dir.join("used"))
            .ok()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|d| d.with_timezone(&Utc))
            .or_else(|| {
                read_json::<LayerInfo>(&dir.join("layer.json"))
                    .ok()
                    .flatten()
                    .map(|i| i.created)
            })
    }

    /// Stores a layer whose tree already exists (a builder's writable layer, moved in, not
    /// copied). When the store has the layer already, `tree` is removed instead.
    pub fn adopt(
        &self,
        tree: &Path,
        blob: &kiln_image::LayerBlob,
        description: &str,
    ) -> Result<StoredLayer, StoreError> {
        if let Some(existing) = self.get(&blob.diff_id) {
            remove_tree(tree);
            return Ok(existing);
        }
        let dir = self.dir(&blob.diff_id);
        let staging = self.home.layers().join(format!(
            ".staging-{}-{}",
            hex_of(&blob.diff_id),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
        std::fs::rename(tree, staging.join("fs")).map_err(io("moving a layer into", &staging))?;
        self.finish(staging, dir, blob, description)
    }

    /// Stores a layer from its blob, extracting it.
    pub fn import(
        &self,
        blob: &kiln_image::LayerBlob,
        description: &str,
    ) -> Result<StoredLayer, StoreError> {
        if let Some(existing) = self.get(&blob.diff_id) {
            return Ok(existing);
        }
        let target_blob = self.blob_path(&blob.digest);
        if !target_blob.exists() {
            let parent = target_blob.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            let tmp = target_blob.with_extension("part");
            if std::fs::hard_link(&blob.path, &tmp).is_err() {
                std::fs::copy(&blob.path, &tmp).map_err(io("copying a layer blob to", &tmp))?;
            }
            std::fs::rename(&tmp, &target_blob).map_err(io("storing", &target_blob))?;
        }
        let dir = self.dir(&blob.diff_id);
        let staging = self.home.layers().join(format!(
            ".staging-{}-{}",
            hex_of(&blob.diff_id),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
        kiln_image::extract_layer(&target_blob, &staging.join("fs"))?;
        let stored = kiln_image::LayerBlob {
            path: target_blob,
            ..blob.clone()
        };
        self.finish(staging, dir, &stored, description)
    }

    fn finish(
        &self,
        staging: PathBuf,
        dir: PathBuf,
        blob: &kiln_image::LayerBlob,
        description: &str,
    ) -> Result<StoredLayer, StoreError> {
        let info = LayerInfo {
            diff_id: blob.diff_id.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            description: description.to_string(),
            tree_bytes: disk_usage(&staging.join("fs")),
            created: Utc::now(),
        };
        write_json(&staging.join("layer.json"), &info)?;
        match std::fs::rename(&staging, &dir) {
            Ok(()) => {}
            // Another build stored the same layer first: keep theirs.
            Err(_) if self.get(&blob.diff_id).is_some() => remove_tree(&staging),
            Err(e) => {
                remove_tree(&staging);
                return Err(StoreError::Io {
                    what: "storing a layer in".into(),
                    path: dir,
                    source: e,
                });
            }
        }
        self.touch(&blob.diff_id);
        self.get(&blob.diff_id).ok_or_else(|| StoreError::Corrupt {
            path: self.dir(&blob.diff_id),
            why: "the layer vanished right after it was stored".into(),
        })
    }

    /// Every complete layer.
    pub fn list(&self) -> Vec<StoredLayer> {
        let Ok(entries) = std::fs::read_dir(self.home.layers()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (!name.starts_with('.')).then(|| self.get(&format!("sha256:{name}")))?
            })
            .collect()
    }

    /// Removes a layer: its tree and its blob.
    pub fn remove(&self, diff_id: &str) {
        let dir = self.dir(diff_id);
        if let Some(l) = self.get(diff_id) {
            let _ = std::fs::remove_file(&l.blob);
        }
        // Rename first so that a half-deleted layer is never taken for a complete one.
        let doomed = self
            .home
            .layers()
            .join(format!(".deleting-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(&dir, &doomed).is_ok() {
            remove_tree(&doomed);
        }
    }

    /// Removes staging and deletion leftovers of crashed runs.
    pub fn sweep(&self) {
        if let Ok(entries) = std::fs::read_dir(self.home.layers()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".staging-") || name.starts_with(".deleting-") {
                    remove_tree(&e.path());
                }
            }
        }
    }
}

/// Disk usage of a tree in bytes (allocated blocks; hard links counted once).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Removes a tree, making read-only folders writable first (layers may hold `0555` dirs).
pub fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(path)
        .status();
    let _ = std::fs::remove_dir_all(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/y.json");
        write_json(&p, &vec![1, 2, 3]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&p).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(
            read_json::<Vec<i32>>(&d.path().join("none.json")).unwrap(),
            None
        );
        std::fs::write(&p, "{not json").unwrap();
        let e = read_json::<Vec<i32>>(&p).unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }

    #[test]
    fn layers_are_adopted_imported_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path().join("home"));
        let store = LayerStore::new(home.clone());
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/motd"), "hello\n").unwrap();
        let blob = kiln_image::write_layer(
            &upper,
            &[],
            0,
            kiln_image::Compression::Gzip,
            &store.blobs_dir(),
        )
        .unwrap();
        let stored = store.adopt(&upper, &blob, "test layer").unwrap();
        assert!(!upper.exists(), "adopted trees are moved, not copied");
        assert_eq!(
            std::fs::read_to_string(stored.fs.join("etc/motd")).unwrap(),
            "hello\n"
        );
        assert_eq!(store.list().len(), 1);
        assert!(store.last_used(&blob.diff_id).is_some());
        // Importing the same blob into a second store extracts it.
        let other = LayerStore::new(Home::new(d.path().join("other")));
        let imported = other.import(&stored.as_blob(), "copy").unwrap();
        assert_eq!(
            std::fs::read_to_string(imported.fs.join("etc/motd")).unwrap(),
            "hello\n"
        );
        store.remove(&blob.diff_id);
        assert!(store.get(&blob.diff_id).is_none());
        assert!(store.list().is_empty());
    }
}
