//! Regions as places, from kiln's configuration (`regions:`): a distribution configuration
//! names regions as Image Builder does, and this map says what each name is. A name the map
//! does not have is a local OCI image layout folder, as before.
//!
//! ```yaml
//! regions:
//!   eu-west: {registry: "registry.example:5000", namespace: golden}
//!   us-east: {registry: "127.0.0.1:5001", namespace: golden, insecure: true}
//!   archive: {s3: "s3://kiln-images/prod"}
//! ```

use serde::{Deserialize, Serialize};

/// Where a named region is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RegionPlace {
    /// An OCI registry: images go to `HOST/NAMESPACE/NAME`.
    Registry {
        /// `HOST[:PORT]`.
        host: String,
        /// The repository path below the host the region's images go under.
        namespace: Option<String>,
        /// Also ship disks as KubeVirt containerDisks (`NAME/containerdisk`).
        container_disk: bool,
    },
    /// An S3-compatible bucket: images go to OCI layouts under `s3://BUCKET/PREFIX/NAME`.
    Bucket {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
}

impl RegionPlace {
    /// True for a registry that also takes disks as KubeVirt containerDisks.
    pub fn takes_container_disks(&self) -> bool {
        matches!(
            self,
            RegionPlace::Registry {
                container_disk: true,
                ..
            }
        )
    }

    /// How a user names it: `docker://HOST/NAMESPACE` or `s3://BUCKET/PREFIX`.
    pub fn describe(&self) -> String {
        match self {
            RegionPlace::Registry {
                host, namespace, ..
            } => match namespace {
                Some(n) => format!("docker://{host}/{n}"),
                None => format!("docker://{host}"),
            },
            RegionPlace::Bucket { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}")
            }
            RegionPlace::Bucket { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// The configured regions, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionMap {
    /// Each name and its place, in the configuration's order.
    pub regions: Vec<(String, RegionPlace)>,
}

impl RegionMap {
    /// The place of a region, `None` for a local folder.
    pub fn get(&self, name: &str) -> Option<&RegionPlace> {
        self.regions.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
}
