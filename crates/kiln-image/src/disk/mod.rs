//! Bootable disk images, assembled as files: no loop devices, no mounted partitions.
//!
//! 1. [`root_filesystem`]: the image's layers are merged by the kernel (a read-only overlay in a
//!    private mount namespace made by `unshare`, so the mount never exists outside it) and
//!    `mkfs.ext4 -d` writes an ext4 filesystem file from the merged tree, with a chosen UUID,
//!    hash seed, features and clock; [`ext4::fix_times`] then gives every inode one time, so
//!    the same tree is the same bytes.
//! 2. [`assemble`]: a GPT disk file (a 1 MiB BIOS boot partition, then the root partition) is
//!    partitioned with `sfdisk`, the filesystem is copied in at its offset (sparse), GRUB's
//!    `core.img` (from `grub-mkimage`, with every module the configuration needs built in) goes
//!    into the BIOS boot partition, and the first 440 bytes of `boot.img` into the MBR, patched
//!    the way `grub-bios-setup` does: the LBA of `core.img` at 0x5c of `boot.img`, and the
//!    blocklist of the rest of `core.img` at 0x1f4 of its first sector.
//! 3. [`convert`]: `qemu-img` turns the raw disk into qcow2 (optionally compressed), vmdk or vhd,
//!    deterministically.
//!
//! The boot configuration (`/etc/fstab`, `/boot/grub/grub.cfg`) is written by [`boot_files`]
//! into an extra top layer, so the image's own layers are never changed.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod convert;
pub mod ext4;

pub use convert::{convert, flatten, DiskCompression, DiskFormat, DiskLabel};

/// Sector size.
const SECTOR: u64 = 512;
/// First LBA of the BIOS boot partition (1 MiB).
const BIOS_START: u64 = 2048;
/// Sectors of the BIOS boot partition (1 MiB).
const BIOS_SECTORS: u64 = 2048;
/// First LBA of the root partition (2 MiB).
const ROOT_START: u64 = BIOS_START + BIOS_SECTORS;
/// Where the root filesystem begins on a kiln disk, in bytes (for read-only loop mounts of it).
pub const ROOT_OFFSET: u64 = ROOT_START * SECTOR;
/// Sectors the backup GPT needs at the end.
const GPT_BACKUP: u64 = 34;

/// GPT type of a BIOS boot partition.
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of a Linux filesystem partition.
pub const LINUX_FS_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// The GRUB modules built into `core.img` (everything `grub.cfg` below uses).
pub const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "ext2",
    "normal",
    "linux",
    "search",
    "search_fs_uuid",
    "serial",
    "terminal",
    "echo",
    "test",
    "configfile",
];

/// Errors of disk assembly.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A host program is missing.
    #[error(
        "{program} is not installed ({package}): run scripts/setup, or apt-get install {package}"
    )]
    MissingProgram {
        /// The program.
        program: String,
        /// The Debian package with it.
        package: String,
    },
    /// A host program failed.
    #[error("{program} failed: {message}")]
    Tool {
        /// The program.
        program: String,
        /// Its diagnostics.
        message: String,
    },
    /// The image cannot boot as it is.
    #[error("{0}")]
    NotBootable(String),
    /// The requested size is too small.
    #[error("the disk is {wanted} bytes but its content needs at least {needed}: raise blockDeviceMappings' volumeSize")]
    TooSmall {
        /// Asked for.
        wanted: u64,
        /// Needed.
        needed: u64,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |source| DiskError::Io { what, path, source }
}

/// The host programs disk assembly and conversion run, with the Debian package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("unshare", "util-linux"),
    ("mkfs.ext4", "e2fsprogs"),
    ("sfdisk", "fdisk"),
    ("grub-mkimage", "grub-pc-bin"),
    ("qemu-img", "qemu-utils"),
];

/// The [`TOOLS`] this host lacks, as `program (package)`, found where assembly looks for them.
pub fn missing_tools() -> Vec<String> {
    TOOLS
        .iter()
        .filter(|(p, pkg)| need(p, pkg).is_err())
        .map(|(p, pkg)| format!("{p} ({pkg})"))
        .collect()
}

fn need(program: &str, package: &str) -> Result<PathBuf, DiskError> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DiskError::MissingProgram {
        program: program.into(),
        package: package.into(),
    })
}

fn run(cmd: &mut Command, program: &str) -> Result<String, DiskError> {
    let out = cmd.output().map_err(|e| DiskError::Tool {
        program: program.into(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(DiskError::Tool {
            program: program.into(),
            message: format!("{} ({})", message, out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names in one folder of a stack of overlay lower dirs (bottom first), as the merged view
/// shows them: later layers add names, whiteouts remove them, opaque folders hide what is below.
pub fn merged_names(layers_bottom_first: &[PathBuf], dir: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for layer in layers_bottom_first {
        let d = layer.join(dir);
        let opaque = xattr_is_opaque(&d);
        if opaque {
            names.clear();
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match e.file_type() {
                Ok(t) if t.is_char_device() && is_whiteout(&e.path()) => {
                    names.remove(&name);
                }
                _ => {
                    names.insert(name);
                }
            }
        }
    }
    names
}

fn is_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn xattr_is_opaque(p: &Path) -> bool {
    xattr::get(p, "trusted.overlay.opaque")
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

/// The newest kernel in `/boot` of the merged layers, with its initrd if there is one.
pub fn find_kernel(layers_bottom_first: &[PathBuf]) -> Option<(String, Option<String>)> {
    let names = merged_names(layers_bottom_first, "boot");
    let mut versions: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let v = versions.last()?;
    let initrd = format!("initrd.img-{v}");
    Some((
        format!("vmlinuz-{v}"),
        names.contains(&initrd).then_some(initrd),
    ))
}

/// Compares kernel version strings by their numeric parts (6.1.0-28 after 6.1.0-9).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    parts(a).cmp(&parts(b)).then(a.cmp(b))
}

/// The boot configuration of a disk image, as files for an extra top layer.
pub fn boot_files(
    dir: &Path,
    fs_uuid: &str,
    kernel: &str,
    initrd: Option<&str>,
) -> Result<(), DiskError> {
    let write = |rel: &str, content: String| -> Result<(), DiskError> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        fs::write(&p, content).map_err(io("writing", &p))
    };
    write(
        "etc/fstab",
        format!("# Written by kiln: the root filesystem, by UUID.\nUUID={fs_uuid} / ext4 errors=remount-ro 0 1\n"),
    )?;
    // DHCP on every Ethernet interface through systemd-networkd (DNS through systemd-resolved
    // when the image has it), as cloud images do; the image's own .network files sort first.
    write(
        "etc/systemd/network/99-kiln-dhcp.network",
        "# Written by kiln: DHCP on every Ethernet interface the image does not configure itself.\n\
         [Match]\nType=ether\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
            .to_string(),
    )?;
    for (wants, unit) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
    ] {
        let d = dir.join("etc/systemd/system").join(wants);
        fs::create_dir_all(&d).map_err(io("creating", &d))?;
        let link = d.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), &link)
            .map_err(io("linking", &link))?;
    }
    let initrd_line = initrd
        .map(|i| format!("    initrd /boot/{i}\n"))
        .unwrap_or_default();
    write(
        "boot/grub/grub.cfg",
        format!(
            "# Written by kiln.\n\
             serial --unit=0 --speed=115200\n\
             terminal_input serial console\n\
             terminal_output serial console\n\
             set timeout=0\n\
             search --no-floppy --fs-uuid --set=root {fs_uuid}\n\
             menuentry 'kiln image' {{\n\
             \x20   linux /boot/{kernel} root=UUID={fs_uuid} ro console=tty0 console=ttyS0,115200n8\n\
             {initrd_line}\
             }}\n"
        ),
    )
}

/// A shell script that mounts the layers (topmost first) read-only as one tree at `$m`, then
/// runs `body`; meant for [`in_private_mounts`].
fn overlay_script(lowers_top_first: &[PathBuf], body: &str) -> Result<String, DiskError> {
    let lower = lowers_top_first
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    if lower.contains(',') {
        return Err(DiskError::NotBootable("a layer path contains `,`".into()));
    }
    Ok(format!(
        "set -eu\nm=$(mktemp -d)\nmount -t overlay overlay -o ro,lowerdir={lower} \"$m\"\n{body}\n"
    ))
}

/// Runs a script in a private mount namespace of its own: its mounts vanish with it.
fn in_private_mounts(script: &str, what: &str) -> Result<String, DiskError> {
    let unshare = need("unshare", "util-linux")?;
    run(
        Command::new(unshare).args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
        ]),
        what,
    )
}

/// How big a root filesystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsSize {
    /// The content plus a quarter and 256 MiB of headroom, plus `extra` bytes.
    Fit {
        /// Free space beyond the default headroom.
        extra: u64,
    },
    /// Exactly this many bytes (an error when the content does not fit).
    Exact(u64),
}

/// What makes a root filesystem the same bytes every time: its identifiers and its one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIdentity {
    /// The filesystem UUID (fstab and GRUB find the root by it).
    pub uuid: String,
    /// The seed of directory hashes (a UUID; random unless given).
    pub hash_seed: String,
    /// The latest time any inode may carry, and the time of everything mkfs makes itself.
    pub epoch: i64,
}

/// The ext4 features and sizes of every filesystem kiln makes, instead of the host's
/// `/etc/mke2fs.conf`: the same layers give the same filesystem on any host (with the same
/// e2fsprogs).
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// Bytes a tree needs in ext4, from what `find -printf '%y %s'` says of each entry: file
/// contents in whole 4 KiB blocks, a block per directory, an inode each. Apparent sizes, not
/// the host's allocation, so that the size (and the filesystem) is the same on any host.
fn tree_needs(listing: &str) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    for line in listing.lines() {
        let mut parts = line.split_whitespace();
        let (Some(kind), Some(size)) = (parts.next(), parts.next()) else {
            continue;
        };
        let size: u64 = size.parse().unwrap_or(0);
        inodes += 1;
        bytes += match kind {
            "f" => size.div_ceil(4096) * 4096,
            "d" => 4096,
            // Symlinks of up to 59 bytes live in the inode.
            "l" if size >= 60 => 4096,
            _ => 0,
        };
    }
    (bytes, inodes)
}

/// Writes an ext4 filesystem file from the merged layers (topmost first), of `size`, that is
/// the same bytes whenever the layers and `id` are the same: pinned features, a fixed hash
/// seed, mkfs's clock set to `id.epoch`, and every inode's times made one (see [`ext4`]).
pub fn root_filesystem(
    lowers_top_first: &[PathBuf],
    out: &Path,
    id: &FsIdentity,
    size: FsSize,
) -> Result<u64, DiskError> {
    let mkfs = need("mkfs.ext4", "e2fsprogs")?;
    // Measure the merged view first, then make the filesystem from it.
    let probe = overlay_script(lowers_top_first, "find \"$m\" -xdev -printf '%y %s\\n'")?;
    let (used, inodes) = tree_needs(&in_private_mounts(&probe, "unshare")?);
    let needed = (used + inodes * 256) + used / 4 + (256 << 20);
    let size = match size {
        FsSize::Exact(s) if s < used + inodes * 256 + (64 << 20) => {
            return Err(DiskError::TooSmall { wanted: s, needed })
        }
        FsSize::Exact(s) => s,
        FsSize::Fit { extra } => (needed + extra).div_ceil(1 << 20) << 20,
    };
    let _ = fs::remove_file(out);
    let conf = out.with_extension("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io("writing", &conf))?;
    let body = format!(
        "MKE2FS_CONFIG={conf} E2FSPROGS_FAKE_TIME={epoch} {mkfs} -q -F -t ext4 -U {uuid} \
         -L root -E root_owner=0:0,hash_seed={seed} -d \"$m\" {out} {kib}k",
        conf = shell_quote(&conf.display().to_string()),
        epoch = id.epoch,
        mkfs = mkfs.display(),
        uuid = shell_quote(&id.uuid),
        seed = shell_quote(&id.hash_seed),
        out = shell_quote(&out.display().to_string()),
        kib = size / 1024
    );
    let script = overlay_script(lowers_top_first, &body)?;
    let made = in_private_mounts(&script, "mkfs.ext4");
    let _ = fs::remove_file(&conf);
    made?;
    ext4::fix_times(out, id.epoch)?;
    Ok(size)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Builds GRUB's `core.img` for booting from the root partition.
fn core_image(work: &Path) -> Result<Vec<u8>, DiskError> {
    let mkimage = need("grub-mkimage", "grub-pc-bin")?;
    let modules = Path::new("/usr/lib/grub/i386-pc");
    if !modules.join("boot.img").is_file() {
        return Err(DiskError::MissingProgram {
            program: "GRUB's BIOS modules (/usr/lib/grub/i386-pc)".into(),
            package: "grub-pc-bin".into(),
        });
    }
    let core = work.join("core.img");
    let mut cmd = Command::new(mkimage);
    cmd.args(["-O", "i386-pc", "-d"])
        .arg(modules)
        .arg("-o")
        .arg(&core)
        .args(["-p", "(hd0,gpt2)/boot/grub"])
        .args(GRUB_MODULES);
    run(&mut cmd, "grub-mkimage")?;
    fs::read(&core).map_err(io("reading", &core))
}

/// Patches GRUB's `boot.img` (first 440 bytes go into the MBR) and `core.img` for a core image
/// at `core_lba`.
pub fn patch_grub(boot: &mut [u8], core: &mut [u8], core_lba: u64) -> Result<(), DiskError> {
    if boot.len() < 512 || core.len() < 1024 {
        return Err(DiskError::NotBootable(
            "GRUB's boot.img or core.img is too short".into(),
        ));
    }
    let sectors = (core.len() as u64).div_ceil(SECTOR);
    if sectors > BIOS_SECTORS {
        return Err(DiskError::NotBootable(format!(
            "GRUB's core.img ({} bytes) does not fit the 1 MiB BIOS boot partition",
            core.len()
        )));
    }
    // boot.img: where core.img starts.
    boot[0x5c..0x64].copy_from_slice(&core_lba.to_le_bytes());
    // core.img's first sector (diskboot.img): one blocklist entry for the rest of core.img.
    core[0x1f4..0x1fc].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    Ok(())
}

/// The GUIDs of a disk's partition table: given, so that the same disk is the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskGuids {
    /// The GPT disk GUID.
    pub disk: String,
    /// The BIOS boot partition's GUID.
    pub bios_boot: String,
    /// The root partition's GUID.
    pub root: String,
}

/// Assembles a bootable raw disk from an ext4 filesystem file: GPT, GRUB, the filesystem.
/// Returns the disk size.
pub fn assemble(root_fs: &Path, out: &Path, guids: &DiskGuids) -> Result<u64, DiskError> {
    let sfdisk = need("sfdisk", "fdisk")?;
    let fs_len = fs::metadata(root_fs).map_err(io("reading", root_fs))?.len();
    let root_sectors = fs_len.div_ceil(SECTOR);
    let total_sectors = (ROOT_START + root_sectors + GPT_BACKUP).div_ceil(2048) * 2048;
    let work = out.with_extension("work");
    fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let tmp = out.with_extension("partial");
    {
        let f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.set_len(total_sectors * SECTOR)
            .map_err(io("sizing", &tmp))?;
    }
    let script = format!(
        "label: gpt\nlabel-id: {disk}\nunit: sectors\nfirst-lba: {BIOS_START}\n\
         start={BIOS_START}, size={BIOS_SECTORS}, type={BIOS_BOOT_TYPE}, uuid={bios}, name=\"bios-boot\"\n\
         start={ROOT_START}, size={root_sectors}, type={LINUX_FS_TYPE}, uuid={root}, name=\"root\"\n",
        disk = guids.disk,
        bios = guids.bios_boot,
        root = guids.root,
    );
    let mut child = Command::new(&sfdisk)
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&tmp)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| DiskError::Tool {
            program: "sfdisk".into(),
            message: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(io("partitioning", &tmp))?;
    }
    let o = child.wait_with_output().map_err(|e| DiskError::Tool {
        program: "sfdisk".into(),
        message: e.to_string(),
    })?;
    if !o.status.success() {
        return Err(DiskError::Tool {
            program: "sfdisk".into(),
            message: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    let mut disk = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&tmp)
        .map_err(io("opening", &tmp))?;
    copy_sparse(root_fs, &mut disk, ROOT_START * SECTOR)?;
    let mut core = core_image(&work)?;
    let boot_path = Path::new("/usr/lib/grub/i386-pc/boot.img");
    let mut boot = fs::read(boot_path).map_err(io("reading", boot_path))?;
    patch_grub(&mut boot, &mut core, BIOS_START)?;
    disk.seek(SeekFrom::Start(BIOS_START * SECTOR))
        .and_then(|_| disk.write_all(&core))
        .map_err(io("writing GRUB into", &tmp))?;
    // Only the code area of the MBR: the disk signature and the protective partition entry
    // that sfdisk wrote stay.
    disk.seek(SeekFrom::Start(0))
        .and_then(|_| disk.write_all(&boot[..440]))
        .and_then(|_| disk.sync_all())
        .map_err(io("writing the MBR of", &tmp))?;
    drop(disk);
    let _ = fs::remove_dir_all(&work);
    fs::rename(&tmp, out).map_err(io("writing", out))?;
    Ok(total_sectors * SECTOR)
}

/// Copies a file into `dest` at `offset`, only its data extents (found with `SEEK_DATA` and
/// `SEEK_HOLE`, so the disk stays sparse), each by `copy_file_range` inside the kernel.
fn copy_sparse(src: &Path, dest: &mut File, offset: u64) -> Result<(), DiskError> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let f = File::open(src).map_err(io("reading", src))?;
    let len = f.metadata().map_err(io("reading", src))?.len();
    let fd = f.as_raw_fd();
    let mut pos = 0u64;
    while pos < len {
        let Ok(start) = lseek(fd, pos as i64, Whence::SeekData) else {
            break; // ENXIO: only a hole is left.
        };
        let end = lseek(fd, start, Whence::SeekHole).map_or(len as i64, |e| e) as u64;
        let start = start as u64;
        let mut extent = (&f).take(end - start);
        (&f).seek(SeekFrom::Start(start))
            .and_then(|_| dest.seek(SeekFrom::Start(offset + start)))
            .and_then(|_| std::io::copy(&mut extent, dest))
            .map_err(io("writing the filesystem into", src))?;
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_patching() {
        let mut boot = vec![0u8; 512];
        let mut core = vec![0u8; 60 * 512 + 100];
        patch_grub(&mut boot, &mut core, 2048).unwrap();
        assert_eq!(&boot[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&core[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(&core[0x1fc..0x1fe], &60u16.to_le_bytes());
        let mut huge = vec![0u8; 2 << 20];
        assert!(patch_grub(&mut boot, &mut huge, 2048).is_err());
    }

    #[test]
    fn kernels_and_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let l1 = d.path().join("l1");
        let l2 = d.path().join("l2");
        fs::create_dir_all(l1.join("boot")).unwrap();
        fs::create_dir_all(l2.join("boot")).unwrap();
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-28-amd64",
            "initrd.img-6.1.0-28-amd64",
        ] {
            fs::write(l1.join("boot").join(f), "").unwrap();
        }
        assert_eq!(
            find_kernel(std::slice::from_ref(&l1)),
            Some((
                "vmlinuz-6.1.0-28-amd64".into(),
                Some("initrd.img-6.1.0-28-amd64".into())
            ))
        );
        // A whiteout in the upper layer removes the newer kernel.
        nix::sys::stat::mknod(
            &l2.join("boot/vmlinuz-6.1.0-28-amd64"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            find_kernel(&[l1.clone(), l2.clone()]).unwrap().0,
            "vmlinuz-6.1.0-9-amd64"
        );
        assert_eq!(find_kernel(&[d.path().join("none")]), None);
    }

    #[test]
    fn boot_configuration() {
        let d = tempfile::tempdir().unwrap();
        boot_files(d.path(), "1234-abcd", "vmlinuz-6.1", Some("initrd.img-6.1")).unwrap();
        let cfg = fs::read_to_string(d.path().join("boot/grub/grub.cfg")).unwrap();
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root 1234-abcd"));
        assert!(cfg.contains(
            "linux /boot/vmlinuz-6.1 root=UUID=1234-abcd ro console=tty0 console=ttyS0,115200n8"
        ));
        assert!(cfg.contains("initrd /boot/initrd.img-6.1"));
        assert!(fs::read_to_string(d.path().join("etc/fstab"))
            .unwrap()
            .contains("UUID=1234-abcd / ext4"));
    }

    fn identity(epoch: i64) -> FsIdentity {
        FsIdentity {
            uuid: "0b8e3f5c-1d2a-4c6e-9f00-112233445566".into(),
            hash_seed: "5a4b3c2d-1e0f-4a9b-8c7d-665544332211".into(),
            epoch,
        }
    }

    /// Two filesystems of the same tree, made a second apart with the tree's change times
    /// moved in between (as any copy of a layer on another host has), are the same bytes, and
    /// e2fsck finds nothing wrong with the inodes whose times and checksums were rewritten.
    #[test]
    fn the_same_tree_gives_the_same_filesystem() {
        if !nix::unistd::Uid::effective().is_root() || need("mkfs.ext4", "e2fsprogs").is_err() {
            eprintln!("skipped: needs root and e2fsprogs");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        fs::create_dir_all(tree.join("etc/deep/er")).unwrap();
        for i in 0..200 {
            fs::write(tree.join(format!("etc/f{i}")), format!("{i}\n").repeat(i)).unwrap();
        }
        std::os::unix::fs::symlink("etc/f1", tree.join("link")).unwrap();
        let one = d.path().join("one.ext4");
        let two = d.path().join("two.ext4");
        // An overlay without an upper layer needs two lower ones (as boot files and layers are).
        let top = d.path().join("top");
        fs::create_dir_all(top.join("boot")).unwrap();
        fs::write(top.join("boot/cfg"), "x").unwrap();
        let lowers = [top, tree.clone()];
        let size = root_filesystem(
            &lowers,
            &one,
            &identity(1_700_000_000),
            FsSize::Fit { extra: 0 },
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // chmod to the same mode: only the change time moves.
        for i in 0..200 {
            let p = tree.join(format!("etc/f{i}"));
            fs::set_permissions(&p, fs::metadata(&p).unwrap().permissions()).unwrap();
        }
        root_filesystem(
            &lowers,
            &two,
            &identity(1_700_000_000),
            FsSize::Fit { extra: 0 },
        )
        .unwrap();
        assert_eq!(fs::metadata(&one).unwrap().len(), size);
        // Compared whole (hashing 300 MB is slow in a debug build).
        let same = |a: &Path, b: &Path| fs::read(a).unwrap() == fs::read(b).unwrap();
        assert!(same(&one, &two), "the same tree gave different filesystems");
        let fsck = Command::new(need("e2fsck", "e2fsprogs").unwrap())
            .args(["-fn"])
            .arg(&one)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        // Another epoch is another filesystem (mkfs's own times, clamped inode times).
        let three = d.path().join("three.ext4");
        root_filesystem(
            &lowers,
            &three,
            &identity(1_600_000_000),
            FsSize::Fit { extra: 0 },
        )
        .unwrap();
        assert!(!same(&one, &three));
    }
}
