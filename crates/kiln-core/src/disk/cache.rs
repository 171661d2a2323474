//! Assembled disks, kept under what made them: a rebuild whose disk would be the same bytes
//! takes the kept one (and its conversions) instead of assembling it again.
//!
//! ```text
//! $KILN_HOME/disks/<key hex>/
//!   disk.raw            the raw disk
//!   disk.qcow2          conversions, made when a build first asks for them
//!   disk-zstd.qcow2
//!   entry.json          what it is made of, digests, and the size and time of every file
//!   used                when a build last took it (least-recently-used eviction)
//! ```
//!
//! A region's disk file is a hard link to the kept file when both are on one filesystem, so a
//! program that writes into a region's disk (a VM booted from it) writes into the kept one: an
//! entry is only taken while each file's size and modification time are what kiln wrote, and a
//! file that changed is made again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use kiln_dist::DiskFile;
use kiln_image::disk::{self as kdisk, DiskCompression, DiskFormat};
use serde::{Deserialize, Serialize};

use super::{Assembled, DiskIds, DiskSpec};

use crate::store::{io, read_json, remove_tree, write_json, Home, StoreError};

/// The version of the key encoding; changing it makes every kept disk be assembled again.
pub const KEY_FORMAT: &str = "kiln disk key 1";

/// The versions of the programs whose output is the disk's bytes (mkfs, the partitioner, GRUB),
/// asked once per process: a host with other versions makes other bytes.
fn tool_versions() -> &'static str {
    static VERSIONS: OnceLock<String> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        let ask = |program: &str, arg: &str| {
            std::process::Command::new(program)
                .arg(arg)
                .output()
                .map(|o| {
                    let text = [o.stdout, o.stderr].concat();
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|_| format!("{program}: not installed"))
        };
        [
            ask("mke2fs", "-V"),
            ask("sfdisk", "--version"),
            ask("grub-mkimage", "--version"),
        ]
        .join("\n")
    })
}

/// The key of a disk: a digest of everything that decides its bytes.
pub fn key(spec: &DiskSpec<'_>) -> String {
    let mut text = format!("{KEY_FORMAT}\nname {}\n", spec.name);
    for l in spec.chain {
        text.push_str(&format!("layer {}\n", l.info.diff_id));
    }
    match spec.size {
        Some(s) => text.push_str(&format!("size {s}\n")),
        None => text.push_str(&format!("fit extra {}\n", spec.extra)),
    }
    text.push_str(&format!("tools {}\n", tool_versions()));
    crate::store::sha256_hex(text.as_bytes())
}

/// A kept file's facts: what it is, and what it looked like when kiln wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptFile {
    /// Its name in the entry's folder.
    pub file: String,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its modification time in nanoseconds, as kiln left it.
    pub mtime_ns: i64,
}

/// A conversion of a kept disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptFormat {
    /// The format.
    pub format: DiskFormat,
    /// Its compression (qcow2).
    #[serde(default)]
    pub compression: DiskCompression,
    /// The file.
    #[serde(flatten)]
    pub kept: KeptFile,
}

/// One kept disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskEntry {
    /// Its key.
    pub key: String,
    /// The image it was made for.
    pub name: String,
    /// Its layers, bottom first.
    pub layers: Vec<String>,
    /// The kernel it boots.
    pub kernel: String,
    /// Its identifiers.
    pub ids: DiskIds,
    /// The one time of its files.
    pub epoch: i64,
    /// The raw disk.
    pub raw: KeptFile,
    /// Its conversions so far.
    #[serde(default)]
    pub formats: Vec<KeptFormat>,
    /// Milliseconds the assembly took.
    pub assemble_ms: u64,
    /// When it was assembled.
    pub created: DateTime<Utc>,
}

impl DiskEntry {
    /// The disk as a build uses it, at `raw`.
    pub fn assembled(&self, raw: PathBuf) -> Assembled {
        Assembled {
            raw,
            size: self.raw.size,
            kernel: self.kernel.clone(),
            ids: self.ids.clone(),
            epoch: self.epoch,
        }
    }
}

fn facts(path: &Path) -> Option<(u64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// The facts of a file just written into the cache, made read-only first: regions link to it,
/// and a program that opens a region's disk for writing as another user than root is refused
/// instead of changing every build's copy.
fn kept(dir: &Path, file: &str, digest: String) -> Result<KeptFile, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(io("protecting", &path))?;
    let (size, mtime_ns) = facts(&path).ok_or_else(|| StoreError::Corrupt {
        path: path.clone(),
        why: "vanished right after it was written".into(),
    })?;
    Ok(KeptFile {
        file: file.to_string(),
        digest,
        size,
        mtime_ns,
    })
}

/// True while a kept file is as kiln wrote it.
fn intact(dir: &Path, k: &KeptFile) -> bool {
    facts(&dir.join(&k.file)) == Some((k.size, k.mtime_ns))
}

/// What a disk to keep was made of.
#[derive(Debug, Clone)]
pub struct Made {
    /// The image's name.
    pub name: String,
    /// Its layers, bottom first (none for a disk a builder VM wrote).
    pub layers: Vec<String>,
    /// `sha256:` of the raw disk.
    pub digest: String,
    /// Milliseconds it took.
    pub assemble_ms: u64,
}

/// The key of a disk a builder VM wrote: not made of layers, so only its bytes name it.
pub fn written_key(digest: &str) -> String {
    crate::store::sha256_hex(format!("{KEY_FORMAT}\nwritten by a builder VM {digest}\n").as_bytes())
}

/// `sha256:` of a file's bytes, as the store reports errors.
pub fn digest_of(path: &Path) -> Result<String, StoreError> {
    kiln_image::digest::sha256_file(path).map_err(|e| StoreError::Io {
        what: "reading".into(),
        path: path.to_path_buf(),
        source: e.source,
    })
}

/// The kept disks of a data directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    root: PathBuf,
}

impl DiskCache {
    /// The disk cache of a data directory.
    pub fn new(home: &Home) -> Self {
        DiskCache { root: home.disks() }
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The kept disk of `key`, when it is there and unchanged (marked as just used); a changed
    /// one is removed.
    pub fn get(&self, key: &str) -> Option<DiskEntry> {
        let dir = self.dir(key);
        let entry: DiskEntry = read_json(&dir.join("entry.json")).ok().flatten()?;
        if !intact(&dir, &entry.raw) {
            tracing::warn!(
                "the kept disk {} changed after kiln wrote it (was a region's disk booted or \
                 written to?); assembling it again",
                dir.join(&entry.raw.file).display()
            );
            self.remove(key);
            return None;
        }
        let _ = std::fs::write(dir.join("used"), Utc::now().to_rfc3339());
        Some(entry)
    }

    /// The raw disk file of an entry.
    pub fn raw_path(&self, entry: &DiskEntry) -> PathBuf {
        self.dir(&entry.key).join(&entry.raw.file)
    }

    /// Keeps the disk just made at `assembled.raw` (moved, not copied) under `key`; `made`
    /// says of what (the image's name and layers) and the raw disk's digest.
    pub fn put(
        &self,
        key: &str,
        made: Made,
        assembled: &Assembled,
    ) -> Result<DiskEntry, StoreError> {
        std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        // Staged beside the new disk, in the build's own (locked) folder, on the cache's
        // filesystem: nobody sweeps it away while it is being written.
        let staging = assembled
            .raw
            .with_file_name(format!("keep-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
        let raw = staging.join("disk.raw");
        // A second name, not a move: the build keeps reading its own even if the cache drops
        // this one (`kiln cache prune --disks` while builds run).
        link_or_copy(&assembled.raw, &raw).map_err(io("keeping", &raw))?;
        let entry = DiskEntry {
            key: key.to_string(),
            name: made.name,
            layers: made.layers,
            kernel: assembled.kernel.clone(),
            ids: assembled.ids.clone(),
            epoch: assembled.epoch,
            raw: kept(&staging, "disk.raw", made.digest)?,
            formats: Vec::new(),
            assemble_ms: made.assemble_ms,
            created: Utc::now(),
        };
        write_json(&staging.join("entry.json"), &entry)?;
        let dir = self.dir(key);
        // Replaced when a build asked not to use the cache; another build's identical disk
        // that got there first is as good.
        if dir.exists() {
            self.remove(key);
        }
        if let Err(e) = std::fs::rename(&staging, &dir) {
            remove_tree(&staging);
            return match self.get(key) {
                Some(theirs) => Ok(theirs),
                None => Err(StoreError::Io {
                    what: "keeping a disk in".into(),
                    path: dir,
                    source: e,
                }),
            };
        }
        let _ = std::fs::write(dir.join("used"), Utc::now().to_rfc3339());
        Ok(entry)
    }

    /// The disk of `entry` in `format`: the kept conversion when it is unchanged, else converted
    /// now and kept.
    ///
    /// A conversion made now is written from the build's own `raw` into its `scratch` folder and
    /// then given a second name in the cache, so a build never reads a file the cache may drop
    /// under it; a kept one is linked into `scratch` for the same reason.
    pub fn format(
        &self,
        entry: &mut DiskEntry,
        raw: &Path,
        scratch: &Path,
        format: DiskFormat,
        compression: DiskCompression,
    ) -> Result<(DiskFile, bool), StoreError> {
        let dir = self.dir(&entry.key);
        let compression = if format == DiskFormat::Qcow2 {
            compression
        } else {
            DiskCompression::None
        };
        let name = match compression {
            DiskCompression::None => format!("disk.{}", format.extension()),
            DiskCompression::Zlib => format!("disk-zlib.{}", format.extension()),
            DiskCompression::Zstd => format!("disk-zstd.{}", format.extension()),
        };
        std::fs::create_dir_all(scratch).map_err(io("creating", scratch))?;
        let mine = scratch.join(&name);
        let file = |k: &KeptFile, path: &Path| DiskFile {
            format,
            path: path.to_path_buf(),
            digest: k.digest.clone(),
            size: k.size,
        };
        if format == DiskFormat::Raw {
            return Ok((file(&entry.raw, raw), true));
        }
        if let Some(f) = entry
            .formats
            .iter()
            .find(|f| f.format == format && f.compression == compression)
        {
            if intact(&dir, &f.kept) && link_or_copy(&dir.join(&f.kept.file), &mine).is_ok() {
                return Ok((file(&f.kept, &mine), true));
            }
        }
        let label = kdisk::DiskLabel {
            name: entry.name.clone(),
            uuid: entry.ids.disk.clone(),
            epoch: entry.epoch,
        };
        kdisk::convert(raw, &mine, format, compression, &label).map_err(|e| {
            StoreError::Corrupt {
                path: mine.clone(),
                why: format!("converting the disk: {e}"),
            }
        })?;
        let digest = digest_of(&mine)?;
        // Kept when the entry is still there (a prune may have dropped it meanwhile).
        if dir.join("entry.json").is_file() && link_or_copy(&mine, &dir.join(&name)).is_ok() {
            if let Ok(k) = kept(&dir, &name, digest.clone()) {
                entry
                    .formats
                    .retain(|f| !(f.format == format && f.compression == compression));
                entry.formats.push(KeptFormat {
                    format,
                    compression,
                    kept: k,
                });
                let _ = write_json(&dir.join("entry.json"), entry);
            }
        }
        let size = std::fs::metadata(&mine)
            .map_err(io("reading", &mine))?
            .len();
        Ok((
            DiskFile {
                format,
                path: mine,
                digest,
                size,
            },
            false,
        ))
    }

    /// Every kept disk.
    pub fn entries(&self) -> Vec<DiskEntry> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                read_json::<DiskEntry>(&e.path().join("entry.json"))
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// When a kept disk was last taken.
    pub fn last_used(&self, entry: &DiskEntry) -> DateTime<Utc> {
        std::fs::read_to_string(self.dir(&entry.key).join("used"))
            .ok()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(entry.created)
    }

    /// Disk space of a kept disk (allocated blocks: raw disks are sparse).
    pub fn bytes(&self, entry: &DiskEntry) -> u64 {
        crate::store::disk_usage(&self.dir(&entry.key))
    }

    /// Disk space of every kept disk.
    pub fn usage(&self) -> u64 {
        self.entries().iter().map(|e| self.bytes(e)).sum()
    }

    /// Removes a kept disk (renamed away first, so it is never taken half-removed).
    pub fn remove(&self, key: &str) {
        let doomed = self
            .root
            .join(format!(".deleting-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(self.dir(key), &doomed).is_ok() {
            remove_tree(&doomed);
        }
    }

    /// Removes leftovers of removals that were interrupted.
    pub fn sweep(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".deleting-") {
                    remove_tree(&e.path());
                }
            }
        }
    }
}

/// Links `from` at `to`: a build's own name for a kept file, so that the cache may drop it
/// while the build still reads it (the same placing as a region's disk file).
pub use kiln_dist::disk::link_or_copy;

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_disk(cache: &DiskCache, work: &Path, key: &str) -> DiskEntry {
        std::fs::create_dir_all(work).unwrap();
        let raw = work.join("disk.raw");
        std::fs::write(&raw, b"a disk").unwrap();
        let a = Assembled {
            raw: raw.clone(),
            size: 6,
            kernel: "vmlinuz-6.1".into(),
            ids: DiskIds::for_image("web"),
            epoch: 1_700_000_000,
        };
        let made = Made {
            name: "web".into(),
            layers: vec!["sha256:aa".into()],
            digest: digest_of(&raw).unwrap(),
            assemble_ms: 5,
        };
        cache.put(key, made, &a).unwrap()
    }

    #[test]
    fn a_kept_disk_is_taken_until_something_writes_into_it() {
        let d = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(&Home::new(d.path().join("home")));
        let entry = kept_disk(&cache, &d.path().join("run"), "k1");
        assert_eq!(cache.get("k1"), Some(entry.clone()));
        assert_eq!(cache.entries(), vec![entry.clone()]);
        // A region's disk is a hard link to the kept one: a VM booted from it writes here.
        let region = d.path().join("region.raw");
        link_or_copy(&cache.raw_path(&entry), &region).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&region, b"booted").unwrap();
        assert_eq!(cache.get("k1"), None, "a changed disk is not taken");
        assert!(cache.entries().is_empty(), "and it is dropped");
    }

    #[test]
    fn keys_name_every_input() {
        let layers: Vec<crate::store::StoredLayer> = Vec::new();
        let spec = |name: &'static str, size, extra| DiskSpec {
            name,
            chain: &layers,
            size,
            extra,
        };
        let k = key(&spec("web", None, 0));
        assert_eq!(k, key(&spec("web", None, 0)));
        assert_ne!(k, key(&spec("db", None, 0)));
        assert_ne!(k, key(&spec("web", Some(4 << 30), 0)));
        assert_ne!(k, key(&spec("web", None, 2 << 30)));
        assert_ne!(written_key("sha256:1"), written_key("sha256:2"));
    }
}
