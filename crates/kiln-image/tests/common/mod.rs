//! Helpers shared by the integration tests: trees with every kind of entry, tar listings,
//! raw tar building (for malformed archives), and a mount guard.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;

pub const EPOCH: i64 = 1_700_000_000;

/// `security.capability` for `cap_net_raw+ep` (VFS_CAP_REVISION_2 with the effective bit).
pub const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

pub fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An overlay whiteout: a 0:0 character device.
pub fn whiteout(path: &Path) {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
}

pub fn set_opaque(dir: &Path) {
    xattr::set(dir, "trusted.overlay.opaque", b"y").unwrap();
}

/// An upper directory with one of everything a layer must carry.
pub fn full_tree(root: &Path) {
    mkdir(root, 0o755);
    write(&root.join("etc/hostname"), b"kiln\n", 0o644);
    write(
        &root.join("etc/resolv.conf"),
        b"nameserver 10.0.0.1\n",
        0o644,
    );
    write(&root.join("etc/shadow"), b"root:*:1::::::\n", 0o640);
    std::os::unix::fs::chown(root.join("etc/shadow"), Some(0), Some(42)).unwrap();
    write(&root.join("usr/bin/suid"), b"#!/bin/sh\n", 0o4755);
    write(&root.join("usr/bin/ping"), b"\x7fELF fake ping", 0o755);
    xattr::set(
        root.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
    )
    .unwrap();
    write(&root.join("usr/bin/tagged"), b"x", 0o644);
    xattr::set(root.join("usr/bin/tagged"), "user.kiln.note", b"hello").unwrap();
    xattr::set(
        root.join("usr/bin/tagged"),
        "trusted.overlay.origin",
        b"junk",
    )
    .unwrap();
    write(&root.join("usr/lib/libx.so.1"), &vec![7u8; 100_000], 0o644);
    fs::hard_link(
        root.join("usr/lib/libx.so.1"),
        root.join("usr/lib/libx-hard.so"),
    )
    .unwrap();
    symlink("libx.so.1", root.join("usr/lib/libx.so")).unwrap();
    symlink("/nowhere/absolute", root.join("usr/lib/dangling")).unwrap();
    mkdir(&root.join("tmp"), 0o1777);
    write(&root.join("tmp/cache/big"), b"cache", 0o644);
    mkdir(&root.join("home/user"), 0o700);
    std::os::unix::fs::chown(root.join("home/user"), Some(1234), Some(1234)).unwrap();
    write(&root.join("home/user/notes"), b"mine", 0o600);
    std::os::unix::fs::lchown(root.join("home/user/notes"), Some(1234), Some(1234)).unwrap();
    mkdir(&root.join("dev"), 0o755);
    mknod(
        &root.join("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &root.join("dev/loop9"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 9),
    )
    .unwrap();
    nix::unistd::mkfifo(&root.join("dev/fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    // mknod honours the umask; the modes are set after.
    for (dev, mode) in [
        ("dev/null", 0o666),
        ("dev/loop9", 0o660),
        ("dev/fifo", 0o620),
    ] {
        fs::set_permissions(root.join(dev), fs::Permissions::from_mode(mode)).unwrap();
    }
    whiteout(&root.join("etc/gone"));
    mkdir(&root.join("opt/app"), 0o755);
    set_opaque(&root.join("opt/app"));
    write(
        &root.join("opt/app/-first"),
        b"sorts before the marker",
        0o644,
    );
    write(&root.join("opt/app/run"), b"run", 0o755);
    write(&root.join("empty"), b"", 0o644);
}

/// Sets every timestamp in the tree to `secs` (to show they do not matter).
pub fn touch_all(root: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            nix::sys::stat::utimensat(
                None,
                &p,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
    }
}

/// One tar entry as a test looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: Vec<u8>,
    pub link: Option<String>,
    pub device: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub content: Vec<u8>,
}

/// The decompressed bytes of a blob (plain, gzip or zstd).
pub fn decompress(blob: &Path) -> Vec<u8> {
    let raw = fs::read(blob).unwrap();
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&raw[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = raw;
    }
    out
}

pub fn list(blob: &Path) -> Vec<Listed> {
    let bytes = decompress(blob);
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        out.push(Listed {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            link,
            device: (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            ),
            xattrs,
            content,
        });
    }
    out
}

pub fn find<'a>(entries: &'a [Listed], path: &str) -> &'a Listed {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path} in {:?}", paths(entries)))
}

pub fn paths(entries: &[Listed]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

/// A raw tar entry; names are written into the header bytes as given, `..` and all, which
/// the `tar` crate's own builder refuses to do.
pub struct Raw<'a> {
    pub name: &'a str,
    pub kind: tar::EntryType,
    pub link: &'a str,
    pub content: &'a [u8],
    pub mode: u32,
    pub mtime: u64,
}

impl<'a> Raw<'a> {
    pub fn file(name: &'a str, content: &'a [u8]) -> Self {
        Raw {
            name,
            kind: tar::EntryType::Regular,
            link: "",
            content,
            mode: 0o644,
            mtime: 1,
        }
    }
    pub fn dir(name: &'a str) -> Self {
        Raw {
            kind: tar::EntryType::Directory,
            mode: 0o755,
            ..Raw::file(name, b"")
        }
    }
    pub fn symlink(name: &'a str, target: &'a str) -> Self {
        Raw {
            kind: tar::EntryType::Symlink,
            link: target,
            mode: 0o777,
            ..Raw::file(name, b"")
        }
    }
    pub fn hardlink(name: &'a str, target: &'a str) -> Self {
        Raw {
            kind: tar::EntryType::Link,
            link: target,
            ..Raw::file(name, b"")
        }
    }
}

pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(e.mtime);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_size(e.content.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.content);
        let pad = (512 - e.content.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend([0u8; 1024]);
    out
}

/// Fails (never skips) when a tool the test needs is missing.
#[allow(unused_imports)] // not every test file needs it
pub use kiln_testkit::require_tool;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Unmounts on drop, whatever happened in the test.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).unwrap()
}
