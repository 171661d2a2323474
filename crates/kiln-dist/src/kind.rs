//! What kind of thing a distribution writes, with the stable names records keep.

use std::fmt;
use std::str::FromStr;

use kiln_image::disk::DiskFormat;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a distribution writes into a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// An image in an OCI image layout folder (`oci-layout`).
    OciLayout,
    /// An image in an OCI registry repository (`oci-registry`).
    OciRegistry,
    /// A disk file in one format (`disk-qcow2`, `disk-raw`, ...).
    Disk(DiskFormat),
    /// An image in an OCI image layout in a bucket (`oci-bucket`).
    OciBucket,
    /// A disk as an OCI artifact of chunks, in a registry or a bucket (`disk-chunks`).
    DiskChunks,
    /// A disk as a KubeVirt containerDisk image in a registry (`containerdisk`).
    ContainerDisk,
}

impl OutputKind {
    /// True for the kinds that hold a container image.
    pub fn is_image(self) -> bool {
        matches!(
            self,
            OutputKind::OciLayout | OutputKind::OciRegistry | OutputKind::OciBucket
        )
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputKind::OciLayout => f.write_str("oci-layout"),
            OutputKind::OciRegistry => f.write_str("oci-registry"),
            OutputKind::Disk(d) => write!(f, "disk-{}", d.extension()),
            OutputKind::OciBucket => f.write_str("oci-bucket"),
            OutputKind::DiskChunks => f.write_str("disk-chunks"),
            OutputKind::ContainerDisk => f.write_str("containerdisk"),
        }
    }
}

impl FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // `oci` is how records of kiln 0.1 named a layout they were about to write.
            "oci-layout" | "oci" => Ok(OutputKind::OciLayout),
            "oci-registry" => Ok(OutputKind::OciRegistry),
            "oci-bucket" => Ok(OutputKind::OciBucket),
            "disk-chunks" => Ok(OutputKind::DiskChunks),
            "containerdisk" => Ok(OutputKind::ContainerDisk),
            other => other
                .strip_prefix("disk-")
                .and_then(DiskFormat::parse)
                .map(OutputKind::Disk)
                .ok_or_else(|| format!("unknown output kind `{other}`")),
        }
    }
}

impl Serialize for OutputKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OutputKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_read_back() {
        for (kind, name) in [
            (OutputKind::OciLayout, "oci-layout"),
            (OutputKind::OciRegistry, "oci-registry"),
            (OutputKind::Disk(DiskFormat::Qcow2), "disk-qcow2"),
            (OutputKind::Disk(DiskFormat::Raw), "disk-raw"),
            (OutputKind::Disk(DiskFormat::Vmdk), "disk-vmdk"),
            (OutputKind::Disk(DiskFormat::Vhd), "disk-vhd"),
            (OutputKind::OciBucket, "oci-bucket"),
            (OutputKind::DiskChunks, "disk-chunks"),
            (OutputKind::ContainerDisk, "containerdisk"),
        ] {
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<OutputKind>(&format!("\"{name}\"")).unwrap(),
                kind
            );
        }
        assert_eq!("oci".parse::<OutputKind>().unwrap(), OutputKind::OciLayout);
        assert!("disk-floppy".parse::<OutputKind>().is_err());
    }
}
