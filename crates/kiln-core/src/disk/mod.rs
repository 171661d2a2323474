//! Disk images of a build: what a bootable image needs (a kernel, an init, the guest agent),
//! assembling the raw disk from layers, and placing its formats in a region.
//!
//! The disk is made from the same layers as the OCI image, plus two that never go into the OCI
//! image: the guest agent (when kiln had to install it) and the boot files (fstab, GRUB's
//! configuration), which are written per build. The same layers give the same disk bytes
//! ([`assemble`]), so an assembled disk is kept in the [`cache`] under what made it.

pub mod cache;
pub mod chunks;

use std::path::{Path, PathBuf};

use kiln_image::disk as kdisk;
use sha2::{Digest, Sha256};

use crate::store::StoredLayer;

/// The component kiln runs in the builder when the image has no QEMU guest agent: kiln talks
/// to test instances through it (Image Builder installs its SSM agent the same way).
pub const GUEST_AGENT_DOCUMENT: &str = r#"name: kiln-guest-agent
description: Installs the QEMU guest agent, through which kiln drives VM instances.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: InstallGuestAgent
        action: ExecuteBash
        inputs:
          commands:
            - |
              set -e
              if command -v apt-get >/dev/null; then
                export DEBIAN_FRONTEND=noninteractive
                printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
                trap 'rm -f /usr/sbin/policy-rc.d' EXIT
                apt-get update -qq
                apt-get install -y -qq --no-install-recommends qemu-guest-agent
                apt-get clean
                rm -rf /var/lib/apt/lists/*
              elif command -v dnf >/dev/null; then
                dnf install -y qemu-guest-agent && dnf clean all
              elif command -v yum >/dev/null; then
                yum install -y qemu-guest-agent && yum clean all
              else
                echo "no apt-get, dnf or yum in the image: install qemu-guest-agent in a component" >&2
                exit 1
              fi
"#;

/// The component that removes the guest agent kiln installed, when the recipe asks.
pub const REMOVE_GUEST_AGENT_DOCUMENT: &str = r#"name: kiln-remove-guest-agent
description: Removes the QEMU guest agent kiln installed for its own use.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: RemoveGuestAgent
        action: ExecuteBash
        inputs:
          commands:
            - |
              set -e
              if command -v apt-get >/dev/null; then
                DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --autoremove qemu-guest-agent
              elif command -v dnf >/dev/null; then
                dnf remove -y qemu-guest-agent
              else
                yum remove -y qemu-guest-agent
              fi
"#;

/// Where a disk's QEMU guest agent comes from (kiln drives VMs through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuestAgent {
    /// The image had it.
    #[serde(rename = "in the image")]
    InImage,
    /// kiln added it (to a `bootstrap:` parent, or as a layer of its own component).
    #[serde(rename = "installed by kiln")]
    InstalledByKiln,
    /// kiln added it and took it out after the tests (`disk.removeGuestAgent`).
    #[serde(rename = "installed by kiln, removed after the tests")]
    RemovedAfterTests,
}

/// Reads a record's `guestAgent`, where kiln 0.1 wrote an empty string before it knew.
pub(crate) fn guest_agent_or_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<GuestAgent>, D::Error> {
    use serde::Deserialize;
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => serde_json::from_value(serde_json::Value::String(s))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl std::fmt::Display for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl GuestAgent {
    /// As the build record says it.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestAgent::InImage => "in the image",
            GuestAgent::InstalledByKiln => "installed by kiln",
            GuestAgent::RemovedAfterTests => "installed by kiln, removed after the tests",
        }
    }
}

/// True when `rel` (a path without leading `/`) exists in the merged layers.
pub fn exists(chain: &[StoredLayer], rel: &str) -> bool {
    let layers: Vec<PathBuf> = chain.iter().map(|l| l.fs.clone()).collect();
    let rel = rel.trim_start_matches('/');
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", rel),
    };
    let names = kdisk::merged_names(&layers, dir);
    if names.contains(name) {
        return true;
    }
    // Merged /usr: /sbin and /bin are links into /usr.
    match dir.split_once('/') {
        Some(("usr", rest)) => kdisk::merged_names(&layers, rest).contains(name),
        None if matches!(dir, "sbin" | "bin" | "lib") => {
            kdisk::merged_names(&layers, &format!("usr/{dir}")).contains(name)
        }
        _ => false,
    }
}

/// True when the layers carry the QEMU guest agent.
pub fn has_guest_agent(chain: &[StoredLayer]) -> bool {
    exists(chain, "usr/sbin/qemu-ga") || exists(chain, "usr/bin/qemu-ga")
}

/// The kernel and initrd a disk boots, or what is missing and how to fix it.
pub fn bootable(chain: &[StoredLayer]) -> Result<(String, Option<String>), String> {
    let layers: Vec<PathBuf> = chain.iter().map(|l| l.fs.clone()).collect();
    let Some(kernel) = kdisk::find_kernel(&layers) else {
        return Err("the image has no kernel (no /boot/vmlinuz-*), so a disk image of it cannot boot: \
                    add a component that installs one (Debian: `apt-get install -y linux-image-cloud-amd64`), \
                    or use a `bootstrap:` parent, where kiln adds it"
            .into());
    };
    if !exists(chain, "sbin/init") && !exists(chain, "usr/sbin/init") {
        return Err(
            "the image has no init (/sbin/init), so a disk image of it cannot boot: \
                    add a component that installs one (Debian: `apt-get install -y systemd-sysv`), \
                    or use a `bootstrap:` parent, where kiln adds it"
                .into(),
        );
    }
    Ok(kernel)
}

/// Identifiers of a disk, derived from the image's name: every build and version of an image
/// has the same filesystem UUID (fstab, GRUB and whatever a user's tooling keys on stay valid
/// across updates), and the same layers give the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskIds {
    /// The root filesystem's UUID (fstab and GRUB find it by this).
    pub filesystem: String,
    /// The seed of the root filesystem's directory hashes.
    pub hash_seed: String,
    /// The GPT disk GUID.
    pub disk: String,
    /// The BIOS boot partition's GUID.
    pub bios_boot: String,
    /// The root partition's GUID.
    pub partition: String,
}

impl DiskIds {
    /// Identifiers for the disks of the image `name`.
    pub fn for_image(name: &str) -> Self {
        let uuid = |salt: &str| {
            let mut h = Sha256::new();
            h.update(salt.as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            let d = h.finalize();
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            uuid::Builder::from_random_bytes(b)
                .into_uuid()
                .hyphenated()
                .to_string()
        };
        DiskIds {
            filesystem: uuid("kiln-fs"),
            hash_seed: uuid("kiln-fs-hash-seed"),
            disk: uuid("kiln-disk"),
            bios_boot: uuid("kiln-bios-boot"),
            partition: uuid("kiln-part"),
        }
    }

    /// The partition table's GUIDs.
    pub fn guids(&self) -> kdisk::DiskGuids {
        kdisk::DiskGuids {
            disk: self.disk.clone(),
            bios_boot: self.bios_boot.clone(),
            root: self.partition.clone(),
        }
    }
}

/// What assembling a disk made.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The raw disk.
    pub raw: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The kernel it boots (file name in /boot).
    pub kernel: String,
    /// Its identifiers.
    pub ids: DiskIds,
    /// The one time of every file on it (the latest time in its layers).
    pub epoch: i64,
}

/// What a disk is made of: everything that decides its bytes.
#[derive(Debug, Clone)]
pub struct DiskSpec<'a> {
    /// The image's name (its disks' identifiers come from it).
    pub name: &'a str,
    /// The layers, bottom first.
    pub chain: &'a [StoredLayer],
    /// The whole disk's size (the recipe's block device mapping), when given.
    pub size: Option<u64>,
    /// Free space to add when no size is given.
    pub extra: u64,
}

/// Bytes the partition table and GRUB take around the root filesystem.
const DISK_OVERHEAD: u64 = 4 << 20;

/// Assembles the raw disk of `spec` in `work`, the same bytes whenever `spec` is the same: the
/// identifiers come from the image's name, every file's time is the latest time in the layers
/// (each layer's tree first given its blob's times, as it has on any other host).
pub fn assemble(
    spec: &DiskSpec<'_>,
    layers: &crate::store::LayerStore,
    work: &Path,
) -> Result<Assembled, String> {
    let chain = spec.chain;
    let (kernel, initrd) = bootable(chain)?;
    let ids = DiskIds::for_image(spec.name);
    let mut epoch = 0;
    for l in chain {
        epoch = epoch.max(layers.aligned(l).map_err(|e| e.to_string())?);
    }
    std::fs::create_dir_all(work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let boot = work.join("boot-files");
    let _ = std::fs::remove_dir_all(&boot);
    kdisk::boot_files(&boot, &ids.filesystem, &kernel, initrd.as_deref())
        .map_err(|e| e.to_string())?;
    let mut lowers: Vec<PathBuf> = vec![boot.clone()];
    lowers.extend(chain.iter().rev().map(|l| l.fs.clone()));
    let fs = work.join("root.ext4");
    let fs_size = match spec.size {
        Some(s) => kdisk::FsSize::Exact(s.saturating_sub(DISK_OVERHEAD) >> 20 << 20),
        None => kdisk::FsSize::Fit { extra: spec.extra },
    };
    let identity = kdisk::FsIdentity {
        uuid: ids.filesystem.clone(),
        hash_seed: ids.hash_seed.clone(),
        epoch,
    };
    kdisk::root_filesystem(&lowers, &fs, &identity, fs_size).map_err(|e| match e {
        kdisk::DiskError::TooSmall { wanted, needed } => format!(
            "blockDeviceMappings asks for a {} MiB disk, but the image needs about {} MiB: raise ebs.volumeSize",
            wanted >> 20,
            (needed + DISK_OVERHEAD) >> 20
        ),
        e => e.to_string(),
    })?;
    let raw = work.join("disk.raw");
    let size = kdisk::assemble(&fs, &raw, &ids.guids()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&fs);
    let _ = std::fs::remove_dir_all(&boot);
    Ok(Assembled {
        raw,
        size,
        kernel,
        ids,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LayerInfo;

    fn layer(dir: &Path, id: &str) -> StoredLayer {
        StoredLayer {
            info: LayerInfo {
                diff_id: id.into(),
                digest: String::new(),
                size: 0,
                media_type: String::new(),
                description: String::new(),
                tree_bytes: 0,
                created: chrono::Utc::now(),
            },
            fs: dir.to_path_buf(),
            blob: PathBuf::new(),
        }
    }

    #[test]
    fn bootable_names_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("usr/sbin")).unwrap();
        let chain = vec![layer(&a, "sha256:a")];
        let e = bootable(&chain).unwrap_err();
        assert!(e.contains("no kernel") && e.contains("linux-image"), "{e}");
        std::fs::create_dir_all(a.join("boot")).unwrap();
        std::fs::write(a.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"k").unwrap();
        let e = bootable(&chain).unwrap_err();
        assert!(e.contains("no init") && e.contains("systemd-sysv"), "{e}");
        std::os::unix::fs::symlink("usr/sbin", a.join("sbin")).unwrap();
        std::fs::write(a.join("usr/sbin/init"), b"i").unwrap();
        let (k, initrd) = bootable(&chain).unwrap();
        assert_eq!(k, "vmlinuz-6.1.0-9-cloud-amd64");
        assert_eq!(initrd, None);
        assert!(!has_guest_agent(&chain));
        let b = t.path().join("b");
        std::fs::create_dir_all(b.join("usr/sbin")).unwrap();
        std::fs::write(b.join("usr/sbin/qemu-ga"), b"q").unwrap();
        let chain2 = vec![layer(&a, "sha256:a"), layer(&b, "sha256:b")];
        assert!(has_guest_agent(&chain2));
    }

    #[test]
    fn ids_follow_the_image_name() {
        let one = DiskIds::for_image("web");
        assert_eq!(one, DiskIds::for_image("web"));
        assert_ne!(one.filesystem, DiskIds::for_image("db").filesystem);
        let all = [
            &one.filesystem,
            &one.hash_seed,
            &one.disk,
            &one.bios_boot,
            &one.partition,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(uuid::Uuid::parse_str(a).is_ok());
            assert!(all[i + 1..].iter().all(|b| b != a), "{a} twice");
        }
        // Pinned: every user's disks carry these, so a change renames their filesystems.
        assert_eq!(one.filesystem, "227fc38c-8b10-4084-b069-cabb87ec1d76");
    }

    #[test]
    fn the_internal_documents_are_valid() {
        for text in [GUEST_AGENT_DOCUMENT, REMOVE_GUEST_AGENT_DOCUMENT] {
            let r = kiln_toe::load::parse(kiln_toe::document::Source {
                name: "internal".into(),
                text: text.into(),
                dir: None,
            });
            assert!(r.is_ok(), "{:?}", r.err().map(|d| d.to_string()));
        }
    }
}
