//! Layers from an overlayfs upper directory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::tarw::{AppendError, Head, Kind};
use super::{
    check_epoch, join, keep_xattr, parent_of, relative_bytes, show, sort_key, BlobSink,
    Compression, LayerBlob, LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX,
};

#[derive(Debug)]
enum What {
    File,
    Dir,
    Symlink(Vec<u8>),
    Char(u64, u64),
    Block(u64, u64),
    Fifo,
    /// An overlay whiteout (0:0 character device): written as `.wh.<name>`.
    Whiteout,
    /// The `.wh..wh..opq` marker of an opaque directory.
    Opaque,
}

#[derive(Debug)]
struct Scanned {
    /// The path written into the layer (`.wh.` name for whiteouts).
    path: Vec<u8>,
    /// The path of the file in the upper directory.
    source: Vec<u8>,
    what: What,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    /// Device and inode of files with more than one link: the same pair is one tar hardlink.
    inode: Option<(u64, u64)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes a deterministic OCI layer from an overlayfs upper directory into
/// `<out_dir>/sha256/<hex>`.
///
/// Entries are sorted bytewise by path (an opaque directory's `.wh..wh..opq` right after the
/// directory); every mtime is `epoch` (seconds since 1970: `SOURCE_DATE_EPOCH` or the build
/// date); numeric ids, mode bits (setuid, sticky), symlinks, hardlinks, fifos and devices are
/// kept, user and group names left empty. Overlay whiteouts (0:0 character devices) become
/// `.wh.<name>` files; directories with `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`,
/// for overlays mounted with `userxattr`) get a `.wh..wh..opq` entry. `security.*` (not
/// `security.selinux`), `user.*` and POSIX ACL xattrs travel as PAX records; overlay's own
/// xattrs never do. The upper directory itself is not an entry: its mode is an artifact of the
/// mount, not of the build.
///
/// `exclude` names paths relative to `upper` (`etc/resolv.conf`; a leading `/` is allowed); a
/// directory excludes its whole subtree.
///
/// The same tree gives the same bytes, whatever its files' atimes, mtimes or ctimes.
pub fn write_layer(
    upper: &Path,
    exclude: &[PathBuf],
    epoch: i64,
    compression: Compression,
    out_dir: &Path,
) -> Result<LayerBlob, LayerError> {
    let epoch = check_epoch(epoch)?;
    let mut excluded = HashSet::new();
    for path in exclude {
        excluded.insert(relative_bytes(path).ok_or_else(|| LayerError::Exclude(path.clone()))?);
    }
    let meta = fs::symlink_metadata(upper)
        .map_err(|e| LayerError::io(upper, "cannot read the upper directory", e))?;
    if !meta.is_dir() {
        return Err(LayerError::Unrepresentable {
            path: upper.to_path_buf(),
            what: "is not a directory; give the overlay's upper directory".into(),
        });
    }

    let mut entries = scan(upper, &excluded)?;
    entries.sort_by(|a, b| sort_key(&a.path).cmp(&sort_key(&b.path)));
    for pair in entries.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(LayerError::Unrepresentable {
                path: upper.join(OsStr::from_bytes(&pair[1].source)),
                what: format!(
                    "both it and a whiteout become `{}` in the layer; rename the file",
                    show(&pair[1].path)
                ),
            });
        }
    }
    tracing::debug!(upper = %upper.display(), entries = entries.len(), "writing layer");

    let mut sink = BlobSink::new(out_dir, compression)?;
    let mut first_link: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in &entries {
        let source = upper.join(OsStr::from_bytes(&entry.source));
        let mut head = Head {
            path: &entry.path,
            kind: Kind::File,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: epoch,
            size: 0,
            xattrs: &entry.xattrs,
        };
        if let Some(inode) = entry.inode {
            if let Some(first) = first_link.get(&inode).cloned() {
                head.kind = Kind::HardLink(&first);
                head.xattrs = &[];
                append(&mut sink, &head, None, &source, 0)?;
                continue;
            }
            first_link.insert(inode, entry.path.clone());
        }
        match &entry.what {
            What::File => {
                head.size = entry.size;
                if entry.size == 0 {
                    append(&mut sink, &head, None, &source, 0)?;
                    continue;
                }
                let mut file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&source)
                    .map_err(|e| LayerError::io(&source, "cannot open", e))?;
                append(&mut sink, &head, Some(&mut file), &source, entry.size)?;
                let mut extra = [0u8; 1];
                if file.read(&mut extra).unwrap_or(0) != 0 {
                    return Err(LayerError::Changed {
                        path: source,
                        expected: entry.size,
                    });
                }
            }
            What::Dir => {
                head.kind = Kind::Dir;
                append(&mut sink, &head, None, &source, 0)?;
            }
            What::Symlink(target) => {
                head.kind = Kind::Symlink(target);
                append(&mut sink, &head, None, &source, 0)?;
            }
            What::Char(major, minor) => {
                head.kind = Kind::Char(*major, *minor);
                append(&mut sink, &head, None, &source, 0)?;
            }
            What::Block(major, minor) => {
                head.kind = Kind::Block(*major, *minor);
                append(&mut sink, &head, None, &source, 0)?;
            }
            What::Fifo => {
                head.kind = Kind::Fifo;
                append(&mut sink, &head, None, &source, 0)?;
            }
            What::Whiteout | What::Opaque => {
                append(&mut sink, &head, None, &source, 0)?;
            }
        }
    }
    sink.finish()
}

fn append(
    sink: &mut BlobSink,
    head: &Head<'_>,
    data: Option<&mut dyn Read>,
    source: &Path,
    expected: u64,
) -> Result<(), LayerError> {
    let tmp = sink.tmp_path().to_path_buf();
    sink.tar.append(head, data).map_err(|e| match e {
        AppendError::Write(e) => LayerError::io(&tmp, "cannot write the layer blob", e),
        AppendError::Read(e) => LayerError::io(source, "cannot read", e),
        AppendError::Short => LayerError::Changed {
            path: source.to_path_buf(),
            expected,
        },
        AppendError::Unrepresentable(what) => LayerError::Unrepresentable {
            path: source.to_path_buf(),
            what,
        },
    })
}

/// Every entry under `upper` but `upper` itself and the excluded subtrees, unsorted.
fn scan(upper: &Path, excluded: &HashSet<Vec<u8>>) -> Result<Vec<Scanned>, LayerError> {
    let mut out = Vec::new();
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(dir_rel) = dirs.pop() {
        let dir = upper.join(OsStr::from_bytes(&dir_rel));
        let read = fs::read_dir(&dir).map_err(|e| LayerError::io(&dir, "cannot list", e))?;
        for item in read {
            let item = item.map_err(|e| LayerError::io(&dir, "cannot list", e))?;
            let name = item.file_name();
            let rel = join(&dir_rel, name.as_bytes());
            if excluded.contains(&rel) {
                tracing::debug!(path = %show(&rel), "excluded from the layer");
                continue;
            }
            let path = item.path();
            // `DirEntry::metadata` does not follow symlinks.
            let meta = item
                .metadata()
                .map_err(|e| LayerError::io(&path, "cannot stat", e))?;
            let ft = meta.file_type();
            let xattrs = read_xattrs(&path)?;
            let opaque = xattrs.opaque;
            let what = if ft.is_dir() {
                What::Dir
            } else if ft.is_file() {
                What::File
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|e| LayerError::io(&path, "cannot read link", e))?;
                What::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                let (major, minor) = (
                    nix::sys::stat::major(meta.rdev()),
                    nix::sys::stat::minor(meta.rdev()),
                );
                if major == 0 && minor == 0 {
                    What::Whiteout
                } else {
                    What::Char(major, minor)
                }
            } else if ft.is_block_device() {
                What::Block(
                    nix::sys::stat::major(meta.rdev()),
                    nix::sys::stat::minor(meta.rdev()),
                )
            } else if ft.is_fifo() {
                What::Fifo
            } else {
                // Sockets belong to running processes; tar has no type for them.
                tracing::warn!(path = %path.display(), "socket left out of the layer");
                continue;
            };
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                return Err(LayerError::Unrepresentable {
                    path,
                    what: "its name starts with `.wh.`, which OCI layers reserve for whiteouts \
                           (every image tool would read it as a deletion); rename it"
                        .into(),
                });
            }
            let (layer_path, xattr_list) = match what {
                What::Whiteout => {
                    let mut wh = WHITEOUT_PREFIX.to_vec();
                    wh.extend_from_slice(name.as_bytes());
                    (join(parent_of(&rel), &wh), Vec::new())
                }
                _ => (rel.clone(), xattrs.kept),
            };
            let inode = (!ft.is_dir() && !matches!(what, What::Whiteout) && meta.nlink() > 1)
                .then(|| (meta.dev(), meta.ino()));
            let is_dir = matches!(what, What::Dir);
            out.push(Scanned {
                path: layer_path,
                source: rel.clone(),
                mode: meta.mode(),
                uid: u64::from(meta.uid()),
                gid: u64::from(meta.gid()),
                size: if ft.is_file() { meta.size() } else { 0 },
                inode,
                xattrs: xattr_list,
                what,
            });
            if is_dir {
                if opaque {
                    out.push(Scanned {
                        path: join(&rel, OPAQUE_MARKER),
                        source: rel.clone(),
                        what: What::Opaque,
                        mode: 0o600,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        inode: None,
                        xattrs: Vec::new(),
                    });
                }
                dirs.push(rel);
            }
        }
    }
    Ok(out)
}

struct Xattrs {
    kept: Vec<(Vec<u8>, Vec<u8>)>,
    opaque: bool,
}

fn read_xattrs(path: &Path) -> Result<Xattrs, LayerError> {
    let mut out = Xattrs {
        kept: Vec::new(),
        opaque: false,
    };
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(LayerError::io(path, "cannot list extended attributes", e)),
    };
    for name in names {
        let bytes = name.as_bytes();
        let overlay_key = bytes
            .strip_prefix(b"trusted.overlay.")
            .or_else(|| bytes.strip_prefix(b"user.overlay."));
        if let Some(key) = overlay_key {
            match key {
                b"opaque" => {
                    out.opaque = get_xattr(path, &name)?.as_deref() == Some(b"y");
                }
                b"metacopy" => {
                    return Err(LayerError::Unrepresentable {
                        path: path.to_path_buf(),
                        what: "is an overlayfs metacopy file (its data is still in a lower \
                               layer); mount the overlay with `metacopy=off` so changed files \
                               are copied up whole"
                            .into(),
                    })
                }
                b"redirect" => {
                    return Err(LayerError::Unrepresentable {
                        path: path.to_path_buf(),
                        what: "is an overlayfs redirected directory (renamed from a lower \
                               layer, its content stays there); mount the overlay with \
                               `redirect_dir=off` so renamed directories are copied up"
                            .into(),
                    })
                }
                _ => {}
            }
            continue;
        }
        if !keep_xattr(bytes) {
            continue;
        }
        if let Some(value) = get_xattr(path, &name)? {
            out.kept.push((bytes.to_vec(), value));
        }
    }
    out.kept.sort();
    Ok(out)
}

fn get_xattr(path: &Path, name: &OsStr) -> Result<Option<Vec<u8>>, LayerError> {
    xattr::get(path, name).map_err(|e: io::Error| {
        LayerError::io(
            path,
            format!("cannot read extended attribute {}", name.to_string_lossy()),
            e,
        )
    })
}
