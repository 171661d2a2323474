//! The step cache: a component's layer, found again by the digest of everything that decides
//! its content.

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use kiln_instance::BuilderKind;

use crate::disk::cache::{DiskCache, DiskEntry};
use crate::recipe::Compression;
use crate::store::{read_json, write_json, Home, LayerStore, StoreError, StoredLayer};

/// What made a cached layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A component of the recipe.
    Component,
    /// One of kiln's own components (the guest agent, its removal).
    Internal,
    /// A `bootstrap:` parent (mmdebstrap).
    Bootstrap,
    /// A `rootfs:` parent tarball.
    Rootfs,
}

impl StepKind {
    /// The name the key is made with: never change one, or every cached layer of that kind is
    /// made again.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Component => "component",
            StepKind::Internal => "internal",
            StepKind::Bootstrap => "bootstrap",
            StepKind::Rootfs => "rootfs",
        }
    }
}

/// Everything that decides a cached layer's content.
#[derive(Debug, Clone)]
pub struct StepKey {
    /// What makes the layer.
    pub kind: StepKind,
    /// Diff ids of the layers below, bottom first.
    pub parents: Vec<String>,
    /// SHA-256 of the input (the component document, the tarball, the bootstrap request).
    pub input: String,
    /// Parameters (their order does not matter).
    pub parameters: Vec<(String, String)>,
    /// The builder a component runs on; `None` for parents.
    pub builder: Option<BuilderKind>,
    /// Working directory of the component (empty for parents).
    pub working_directory: String,
    /// Layer compression.
    pub compression: Compression,
}

/// The first line of every key: bump it when the meaning of a field changes, so that old
/// entries stop matching.
const KEY_FORMAT: &str = "kiln step key 2";

impl StepKey {
    /// The key's digest (hex): SHA-256 over each field written out as `NAME LENGTH:VALUE`, in a
    /// fixed order, with the names and values above. Nothing in it comes from how Rust prints a
    /// type, so renaming a variant or a field cannot silently change every key.
    pub fn digest(&self) -> String {
        let mut parameters = self.parameters.clone();
        parameters.sort();
        let mut text = String::from(KEY_FORMAT);
        text.push('\n');
        let mut field = |name: &str, value: &str| {
            text.push_str(&format!("{name} {}:{value}\n", value.len()));
        };
        field("kind", self.kind.as_str());
        for p in &self.parents {
            field("parent", p);
        }
        field("input", &self.input);
        for (k, v) in &parameters {
            field("parameter", k);
            field("value", v);
        }
        field("builder", self.builder.map_or("", BuilderKind::as_str));
        field("working-directory", &self.working_directory);
        field("compression", self.compression.as_str());
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// One cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The key digest.
    pub key: String,
    /// The layer it gives.
    pub diff_id: String,
    /// What produced it.
    pub description: String,
    /// When.
    pub created: DateTime<Utc>,
}

/// What `prune` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Layers removed.
    pub layers_removed: usize,
    /// Kept disks removed.
    pub disks_removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Bytes still used.
    pub bytes_left: u64,
}

/// One thing the cache may evict.
enum Evictable {
    Layer(StoredLayer),
    Disk(DiskEntry),
}

/// The step cache of a data directory.
#[derive(Debug, Clone)]
pub struct StepCache {
    home: Home,
    store: LayerStore,
    disks: DiskCache,
}

impl StepCache {
    /// The cache of a data directory.
    pub fn new(home: Home) -> Self {
        StepCache {
            store: LayerStore::new(home.clone()),
            disks: DiskCache::new(&home),
            home,
        }
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.home.cache().join(format!("{key}.json"))
    }

    /// The layer for a key, when cached and still complete in the store.
    pub fn get(&self, key: &str) -> Option<StoredLayer> {
        let entry: CacheEntry = read_json(&self.entry_path(key)).ok().flatten()?;
        let layer = self.store.get(&entry.diff_id)?;
        self.store.touch(&entry.diff_id);
        Some(layer)
    }

    /// Records a key's layer.
    pub fn put(&self, key: &str, layer: &StoredLayer, description: &str) -> Result<(), StoreError> {
        write_json(
            &self.entry_path(key),
            &CacheEntry {
                key: key.to_string(),
                diff_id: layer.info.diff_id.clone(),
                description: description.to_string(),
                created: Utc::now(),
            },
        )
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let Ok(dir) = std::fs::read_dir(self.home.cache()) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| read_json::<CacheEntry>(&e.path()).ok().flatten())
            .collect()
    }

    /// Bytes used by all stored layers (trees and blobs) and kept disks.
    pub fn usage(&self) -> u64 {
        let layers: u64 = self
            .store
            .list()
            .iter()
            .map(|l| l.info.size + l.info.tree_bytes)
            .sum();
        layers + self.disks.usage()
    }

    /// The kept disks.
    pub fn disks(&self) -> &DiskCache {
        &self.disks
    }

    /// Removes least-recently-used layers and kept disks until at most `max_bytes` are used,
    /// never touching `keep` (layer diff ids and disk keys a running build needs). Cache
    /// entries whose layer is gone are removed too.
    pub fn prune(&self, max_bytes: u64, keep: &HashSet<String>) -> PruneReport {
        let mut items: Vec<(DateTime<Utc>, u64, Evictable)> = self
            .store
            .list()
            .into_iter()
            .map(|l| {
                let used = self
                    .store
                    .last_used(&l.info.diff_id)
                    .unwrap_or(l.info.created);
                (used, l.info.size + l.info.tree_bytes, Evictable::Layer(l))
            })
            .collect();
        items.extend(self.disks.entries().into_iter().map(|e| {
            (
                self.disks.last_used(&e),
                self.disks.bytes(&e),
                Evictable::Disk(e),
            )
        }));
        items.sort_by_key(|(used, _, _)| *used);
        let mut used: u64 = items.iter().map(|(_, size, _)| size).sum();
        let mut report = PruneReport::default();
        for (_, size, item) in items {
            if used <= max_bytes {
                break;
            }
            match item {
                Evictable::Layer(l) if !keep.contains(&l.info.diff_id) => {
                    self.store.remove(&l.info.diff_id);
                    report.layers_removed += 1;
                }
                Evictable::Disk(d) if !keep.contains(&d.key) => {
                    self.disks.remove(&d.key);
                    report.disks_removed += 1;
                }
                _ => continue,
            }
            used = used.saturating_sub(size);
            report.bytes_freed += size;
        }
        for e in self.entries() {
            if self.store.get(&e.diff_id).is_none() {
                let _ = std::fs::remove_file(self.entry_path(&e.key));
            }
        }
        report.bytes_left = used;
        report
    }

    /// Removes every kept disk (layers stay); the next disk build assembles its disk again.
    pub fn prune_disks(&self) -> PruneReport {
        let mut report = PruneReport::default();
        for e in self.disks.entries() {
            report.bytes_freed += self.disks.bytes(&e);
            self.disks.remove(&e.key);
            report.disks_removed += 1;
        }
        self.disks.sweep();
        report.bytes_left = self.usage();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(input: &str) -> StepKey {
        StepKey {
            kind: StepKind::Component,
            parents: vec!["sha256:aa".into()],
            input: input.into(),
            parameters: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            builder: Some(BuilderKind::Sandbox),
            working_directory: "/tmp".into(),
            compression: Compression::Gzip,
        }
    }

    /// A key's digest is part of every user's cache: if this test fails, the change makes
    /// every cached layer be built again. Make it only on purpose (bump KEY_FORMAT and say so
    /// in the release notes), then update the digest here.
    #[test]
    fn the_key_of_a_known_input_is_pinned() {
        assert_eq!(
            key("doc1").digest(),
            "9a90b53b3a6506e7db8de19f14b03ff1d3fcbaf48232d4d2021b29a0a3494f6f"
        );
    }

    #[test]
    fn keys_depend_on_every_input_but_not_parameter_order() {
        let a = key("doc1");
        let mut b = key("doc1");
        b.parameters.reverse();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), key("doc2").digest());
        let mut c = key("doc1");
        c.parents.push("sha256:bb".into());
        assert_ne!(a.digest(), c.digest());
        let mut d = key("doc1");
        d.builder = Some(BuilderKind::Vm);
        assert_ne!(a.digest(), d.digest());
        let mut e = key("doc1");
        e.compression = Compression::Zstd;
        assert_ne!(a.digest(), e.digest());
        // A parameter value cannot be mistaken for the next parameter's name.
        let mut f = key("doc1");
        f.parameters = vec![("A".into(), "1\nvalue 1:2".into())];
        let mut g = key("doc1");
        g.parameters = vec![("A".into(), "1".into()), ("2".into(), String::new())];
        assert_ne!(f.digest(), g.digest());
    }

    #[test]
    fn lru_prune() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = LayerStore::new(home.clone());
        let cache = StepCache::new(home);
        let mut ids = Vec::new();
        for i in 0..3 {
            let up = dir.path().join(format!("up{i}"));
            std::fs::create_dir_all(&up).unwrap();
            std::fs::write(up.join("f"), vec![i as u8; 100_000]).unwrap();
            let blob = kiln_image::write_layer(
                &up,
                &[],
                0,
                kiln_image::Compression::Gzip,
                &store.blobs_dir(),
            )
            .unwrap();
            let l = store.adopt(&up, &blob, "t").unwrap();
            cache.put(&format!("k{i}"), &l, "t").unwrap();
            ids.push(l.info.diff_id.clone());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Use the oldest again: now the middle one is least recently used.
        assert!(cache.get("k0").is_some());
        let total = cache.usage();
        let one = total / 3;
        let report = cache.prune(total - one / 2, &HashSet::new());
        assert_eq!(report.layers_removed, 1);
        assert!(
            cache.get("k1").is_none(),
            "the least recently used layer goes first"
        );
        assert!(cache.get("k0").is_some() && cache.get("k2").is_some());
        // Kept layers survive even a prune to zero.
        let keep: HashSet<String> = [ids[2].clone()].into();
        cache.prune(0, &keep);
        assert!(cache.get("k2").is_some() && cache.get("k0").is_none());
        assert_eq!(cache.entries().len(), 1);
    }
}
