//! What a build cost: its builder and test instances' vCPU-seconds and GiB-seconds of memory
//! (what they were given, for as long as they ran, as a cloud bills an instance), and the
//! bytes each region holds of the image and the bytes that had to be sent there. kiln's
//! service is free; this makes the resources it uses visible (`kiln usage`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::recipe::Recipe;
use crate::record::ImageRecord;
use kiln_instance::BuilderKind;

/// One instance's share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUsage {
    /// How long it ran.
    pub seconds: f64,
    /// vCPUs it was given.
    pub vcpus: f64,
    /// GiB of memory it was given.
    pub memory_gib: f64,
    /// `seconds * vcpus`.
    pub vcpu_seconds: f64,
    /// `seconds * memory_gib`.
    pub gib_seconds: f64,
}

impl InstanceUsage {
    fn new(seconds: f64, vcpus: f64, memory_gib: f64) -> InstanceUsage {
        // Milli-units: as exact as anyone bills, and the same numbers after a trip through
        // JSON (a record is read back by another process).
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        InstanceUsage {
            seconds: round(seconds),
            vcpus: round(vcpus),
            memory_gib: round(memory_gib),
            vcpu_seconds: round(seconds * vcpus),
            gib_seconds: round(seconds * memory_gib),
        }
    }
}

/// One region's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionUsage {
    /// The region.
    pub region: String,
    /// Bytes of the image the region holds (its layers and disk files).
    pub bytes_stored: u64,
    /// Bytes that were not there before this build and had to be written.
    pub bytes_sent: u64,
}

/// What a build used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The builder instance(s): the components' time.
    pub builder: InstanceUsage,
    /// The test instance.
    pub test: InstanceUsage,
    /// Per region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionUsage>,
}

/// The vCPUs and GiB an instance of `kind` gets under `recipe`: a VM's configured size; a
/// sandbox's limits, else the host's.
fn size(recipe: &Recipe, kind: BuilderKind) -> (f64, f64) {
    match kind {
        BuilderKind::Vm => (
            f64::from(recipe.infrastructure.vm.cpus),
            f64::from(recipe.infrastructure.vm.memory_mib) / 1024.0,
        ),
        BuilderKind::Sandbox => {
            let l = &recipe.infrastructure.limits;
            let cpus = l.cpus.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() as f64)
                    .unwrap_or(1.0)
            });
            let bytes = l.memory_bytes.unwrap_or_else(host_memory);
            (cpus, bytes as f64 / f64::from(1u32 << 30))
        }
    }
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The instances' usage of a finished build (regions are added as they are written).
pub fn instances(recipe: &Recipe, rec: &ImageRecord) -> (InstanceUsage, InstanceUsage) {
    let built: u64 = rec.components.iter().map(|c| c.duration_ms).sum();
    let (cpus, gib) = size(recipe, recipe.infrastructure.builder);
    let builder = InstanceUsage::new(built as f64 / 1000.0, cpus, gib);
    let test = match &rec.tests {
        Some(t) if t.reused_from.is_none() => {
            let kind = t.instance.unwrap_or(BuilderKind::Sandbox);
            let (cpus, gib) = size(recipe, kind);
            InstanceUsage::new(t.duration_ms as f64 / 1000.0, cpus, gib)
        }
        _ => InstanceUsage::default(),
    };
    (builder, test)
}

/// A local region's share of an image before it is written there: every blob and disk file
/// counts as stored, those not in the layout folder yet as sent.
pub fn region(
    name: &str,
    dir: &Path,
    blobs: &[(String, u64)],
    disk_files: &[(String, u64)],
) -> RegionUsage {
    let mut stored = 0;
    let mut sent = 0;
    for (digest, size) in blobs {
        stored += size;
        let hex = digest.trim_start_matches("sha256:");
        if !dir.join("blobs/sha256").join(hex).exists() {
            sent += size;
        }
    }
    for (file, size) in disk_files {
        stored += size;
        if !dir.join("disks").join(file).exists() {
            sent += size;
        }
    }
    RegionUsage {
        region: name.to_string(),
        bytes_stored: stored,
        bytes_sent: sent,
    }
}

/// Usage summed over many builds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Total {
    /// How many builds.
    pub images: u64,
    /// Builder vCPU-seconds.
    pub builder_vcpu_seconds: f64,
    /// Builder GiB-seconds.
    pub builder_gib_seconds: f64,
    /// Test vCPU-seconds.
    pub test_vcpu_seconds: f64,
    /// Test GiB-seconds.
    pub test_gib_seconds: f64,
    /// Per region: (region, bytes stored, bytes sent).
    pub regions: Vec<RegionUsage>,
}

impl Total {
    /// Adds one build's usage.
    pub fn add(&mut self, u: &Usage) {
        self.images += 1;
        self.builder_vcpu_seconds += u.builder.vcpu_seconds;
        self.builder_gib_seconds += u.builder.gib_seconds;
        self.test_vcpu_seconds += u.test.vcpu_seconds;
        self.test_gib_seconds += u.test.gib_seconds;
        for r in &u.regions {
            match self.regions.iter_mut().find(|t| t.region == r.region) {
                Some(t) => {
                    t.bytes_stored += r.bytes_stored;
                    t.bytes_sent += r.bytes_sent;
                }
                None => self.regions.push(r.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_sent_only_what_it_lacks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("blobs/sha256")).unwrap();
        std::fs::write(d.path().join("blobs/sha256/aa"), b"x").unwrap();
        let r = region(
            "local",
            d.path(),
            &[("sha256:aa".into(), 100), ("sha256:bb".into(), 50)],
            &[("web-1.0.0-1.qcow2".into(), 1000)],
        );
        assert_eq!((r.bytes_stored, r.bytes_sent), (1150, 1050));
        let mut t = Total::default();
        let u = Usage {
            builder: InstanceUsage::new(10.0, 2.0, 4.0),
            test: InstanceUsage::new(5.0, 1.0, 1.0),
            regions: vec![r.clone()],
        };
        t.add(&u);
        t.add(&u);
        assert_eq!(t.images, 2);
        assert_eq!(t.builder_vcpu_seconds, 40.0);
        assert_eq!(t.builder_gib_seconds, 80.0);
        assert_eq!(t.test_gib_seconds, 10.0);
        assert_eq!(t.regions[0].bytes_sent, 2100);
    }
}
