//! Extracting a layer into overlay lower-directory form.
//!
//! Layers come from registries and users, so a layer is hostile until proven otherwise. Every
//! entry is placed by walking its parent directories one component at a time with `lstat`
//! inside a private temporary directory: a component that is a symlink stops the extraction
//! (a layer that plants `lib -> /etc` and then writes `lib/passwd` is refused), `..` is refused,
//! a leading `/` means the layer root, and a hardlink may only point at a file this layer
//! already wrote. Files are created with `O_NOFOLLOW | O_EXCL` after removing whatever was at
//! the path, and metadata is set with the no-follow calls (`lchown`, `lsetxattr`,
//! `utimensat(AT_SYMLINK_NOFOLLOW)`). Nothing else writes into the temporary directory while
//! kiln works there, so the checks cannot be raced.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::{
    base_name, clean_path, join, keep_xattr, open_tar_stream, parent_of, show, ExtractStats,
    LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX,
};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Extracts a layer blob (plain, gzip or zstd, told apart by magic bytes) into `dest` in
/// overlay lower-directory form, so that extracted layers stack as the `lowerdir`s of an
/// overlay mount: `.wh.<name>` becomes a 0:0 character device `<name>`, `.wh..wh..opq` the
/// xattr `trusted.overlay.opaque=y` on its directory, and a whiteout followed by a new
/// directory of the same name in one layer an opaque directory. Owners, modes, mtimes,
/// symlinks, hardlinks, devices, fifos and xattrs are restored (this needs root).
///
/// The layer is extracted into a temporary directory beside `dest`, synced, and renamed to
/// `dest` at the end: a crash leaves no half-extracted `dest`. `dest` must not exist or be an
/// empty directory.
///
/// Refused (nothing is left behind): `..` components, entries that would be written through a
/// symlink, hardlinks to anything but a file earlier in the same layer.
pub fn extract_layer(blob: &Path, dest: &Path) -> Result<ExtractStats, LayerError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut items =
                fs::read_dir(dest).map_err(|e| LayerError::io(dest, "cannot list", e))?;
            if items.next().is_some() {
                return Err(LayerError::DestExists(dest.to_path_buf()));
            }
        }
        Ok(_) => return Err(LayerError::DestExists(dest.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LayerError::io(dest, "cannot stat", e)),
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if dest.file_name().is_none() {
        return Err(LayerError::Unrepresentable {
            path: dest.to_path_buf(),
            what: "cannot be an extraction destination; name a new directory".into(),
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-extract-")
        .tempdir_in(parent)
        .map_err(|e| {
            LayerError::io(
                parent,
                "cannot create a temporary directory for the extraction",
                e,
            )
        })?;

    let (stream, _) = open_tar_stream(blob)?;
    let mut extractor = Extractor {
        blob,
        root: tmp.path().to_path_buf(),
        known_dirs: HashSet::new(),
        dir_times: Vec::new(),
        root_seen: false,
        stats: ExtractStats::default(),
    };
    let mut archive = tar::Archive::new(stream);
    let terr = |e: io::Error| LayerError::BadTar {
        path: blob.to_path_buf(),
        message: format!("is not a readable layer: {e}"),
    };
    for entry in archive.entries().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        extractor.apply(&mut entry)?;
    }
    let stats = extractor.finish()?;

    let root = tmp.path().to_path_buf();
    let dir = fs::File::open(&root).map_err(|e| LayerError::io(&root, "cannot open", e))?;
    nix::unistd::syncfs(dir.as_raw_fd())
        .map_err(|e| LayerError::io(&root, "cannot sync", e.into()))?;
    drop(dir);
    fs::rename(&root, dest)
        .map_err(|e| LayerError::io(dest, "cannot move the extracted layer into place", e))?;
    // The directory is `dest` now; nothing is left to clean up.
    let _ = tmp.keep();
    tracing::debug!(
        blob = %blob.display(),
        dest = %dest.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        "layer extracted"
    );
    Ok(stats)
}

struct Extractor<'a> {
    blob: &'a Path,
    root: PathBuf,
    /// Directories (relative) already checked to be real directories; cleared on any removal.
    known_dirs: HashSet<Vec<u8>>,
    /// Directory mtimes, set last: creating entries inside a directory changes its mtime.
    dir_times: Vec<(PathBuf, u64)>,
    root_seen: bool,
    stats: ExtractStats,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Extractor<'_> {
    fn unsafe_entry(&self, entry: &[u8], reason: impl Into<String>) -> LayerError {
        LayerError::Unsafe {
            blob: self.blob.to_path_buf(),
            entry: show(entry),
            reason: reason.into(),
        }
    }

    fn bad(&self, entry: &[u8], what: impl std::fmt::Display) -> LayerError {
        LayerError::BadTar {
            path: self.blob.to_path_buf(),
            message: format!("entry `{}` {what}", show(entry)),
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(());
        }
        let rel =
            clean_path(&raw).ok_or_else(|| self.unsafe_entry(&raw, "has a `..` component"))?;
        let meta = self.meta(entry, &raw)?;

        if rel.is_empty() {
            if ty != tar::EntryType::Directory {
                return Err(self.unsafe_entry(&raw, "replaces the layer root with a non-directory"));
            }
            let root = self.root.clone();
            self.set_meta(&root, &raw, &meta, false)?;
            self.dir_times.push((root, meta.mtime));
            self.root_seen = true;
            self.stats.entries += 1;
            return Ok(());
        }

        let name = base_name(&rel);
        if name == OPAQUE_MARKER {
            let dir = self
                .dir(parent_of(&rel), &raw, true)?
                .unwrap_or_else(|| self.root.clone());
            xattr::set(&dir, OPAQUE_XATTR, b"y")
                .map_err(|e| LayerError::io(&dir, "cannot mark the directory opaque", e))?;
            self.stats.entries += 1;
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            tracing::debug!(entry = %show(&raw), "whiteout metadata entry ignored");
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self
                .dir(parent_of(&rel), &raw, true)?
                .unwrap_or_else(|| self.root.clone());
            let path = parent.join(OsStr::from_bytes(hidden));
            match fs::symlink_metadata(&path) {
                // Whiteouts only hide lower layers; this layer's own entry stays.
                Ok(_) => {
                    tracing::debug!(entry = %show(&raw), "whiteout of an entry of the same layer ignored")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    stat::mknod(&path, SFlag::S_IFCHR, Mode::empty(), stat::makedev(0, 0))
                        .map_err(|e| LayerError::io(&path, "cannot create a whiteout", e.into()))?;
                }
                Err(e) => return Err(LayerError::io(&path, "cannot stat", e)),
            }
            self.stats.entries += 1;
            return Ok(());
        }

        let parent = self
            .dir(parent_of(&rel), &raw, true)?
            .unwrap_or_else(|| self.root.clone());
        let path = parent.join(OsStr::from_bytes(name));
        match ty {
            tar::EntryType::Directory => {
                let mut opaque = false;
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) => {
                        // A whiteout and then a directory of the same name: the new directory
                        // replaces the lower one, it does not merge with it.
                        opaque = is_whiteout(&m);
                        self.remove(&path)?;
                        self.mkdir(&path)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.mkdir(&path)?,
                    Err(e) => return Err(LayerError::io(&path, "cannot stat", e)),
                }
                self.known_dirs.insert(rel.clone());
                self.set_meta(&path, &raw, &meta, false)?;
                if opaque {
                    xattr::set(&path, OPAQUE_XATTR, b"y").map_err(|e| {
                        LayerError::io(&path, "cannot mark the directory opaque", e)
                    })?;
                }
                self.dir_times.push((path, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&path)
                    .map_err(|e| LayerError::io(&path, "cannot create", e))?;
                let n = io::copy(entry, &mut file).map_err(|e| LayerError::BadTar {
                    path: self.blob.to_path_buf(),
                    message: format!("cannot read the content of `{}`: {e}", show(&raw)),
                })?;
                drop(file);
                self.stats.bytes += n;
                self.set_meta(&path, &raw, &meta, false)?;
                set_time(&path, meta.mtime)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(&raw, "is a symlink without a target"))?
                    .into_owned();
                self.clear(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| LayerError::io(&path, "cannot create the symlink", e))?;
                self.set_meta(&path, &raw, &meta, true)?;
                set_time(&path, meta.mtime)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(&raw, "is a hardlink without a target"))?
                    .into_owned();
                let target = clean_path(&target_raw)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        self.unsafe_entry(
                            &raw,
                            format!(
                                "is a hardlink to `{}`, outside the layer",
                                show(&target_raw)
                            ),
                        )
                    })?;
                let not_here_msg = format!(
                    "is a hardlink to `{}`, which is not a file written earlier in this layer",
                    show(&target_raw)
                );
                let Some(target_dir) = self.dir(parent_of(&target), &raw, false)? else {
                    return Err(self.unsafe_entry(&raw, not_here_msg));
                };
                let target_path = target_dir.join(OsStr::from_bytes(base_name(&target)));
                match fs::symlink_metadata(&target_path) {
                    Ok(m) if m.is_dir() => return Err(self.unsafe_entry(&raw, not_here_msg)),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(self.unsafe_entry(&raw, not_here_msg))
                    }
                    Err(e) => return Err(LayerError::io(&target_path, "cannot stat", e)),
                }
                if target == rel {
                    return Err(self.unsafe_entry(&raw, not_here_msg));
                }
                self.clear(&path)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&target_path, &path)
                    .map_err(|e| LayerError::io(&path, "cannot create the hardlink", e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let header = entry.header();
                let number = |n: io::Result<Option<u32>>| -> Result<u64, LayerError> {
                    Ok(u64::from(n.map_err(|e| self.bad(&raw, e))?.unwrap_or(0)))
                };
                let (kind, dev) = match ty {
                    tar::EntryType::Char => (
                        SFlag::S_IFCHR,
                        stat::makedev(
                            number(header.device_major())?,
                            number(header.device_minor())?,
                        ),
                    ),
                    tar::EntryType::Block => (
                        SFlag::S_IFBLK,
                        stat::makedev(
                            number(header.device_major())?,
                            number(header.device_minor())?,
                        ),
                    ),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.clear(&path)?;
                stat::mknod(
                    &path,
                    kind,
                    Mode::from_bits_truncate(meta.mode & 0o777),
                    dev,
                )
                .map_err(|e| LayerError::io(&path, "cannot create the device node", e.into()))?;
                self.set_meta(&path, &raw, &meta, false)?;
                set_time(&path, meta.mtime)?;
            }
            other => {
                tracing::warn!(
                    blob = %self.blob.display(),
                    entry = %show(&raw),
                    kind = ?other,
                    "tar entry of an unknown kind skipped"
                );
                return Ok(());
            }
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta, LayerError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.bad(raw, e))?;
        let uid = header.uid().map_err(|e| self.bad(raw, e))?;
        let gid = header.gid().map_err(|e| self.bad(raw, e))?;
        let mut mtime = header.mtime().map_err(|e| self.bad(raw, e))?;
        let uid =
            u32::try_from(uid).map_err(|_| self.bad(raw, format!("has uid {uid}, too large")))?;
        let gid =
            u32::try_from(gid).map_err(|_| self.bad(raw, format!("has gid {gid}, too large")))?;
        let mut xattrs = Vec::new();
        let exts = entry.pax_extensions().map_err(|e| self.bad(raw, e))?;
        if let Some(exts) = exts {
            for ext in exts {
                let ext = ext.map_err(|e| self.bad(raw, e))?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if keep_xattr(name) {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    } else {
                        tracing::debug!(entry = %show(raw), xattr = %show(name), "xattr not restored");
                    }
                } else if key == b"mtime" {
                    let text = String::from_utf8_lossy(ext.value_bytes()).into_owned();
                    let whole = text.split('.').next().unwrap_or("");
                    mtime = whole.parse::<i64>().map_or(mtime, |t| t.max(0) as u64);
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// The directory `rel` inside the root, every component checked to be a real directory;
    /// missing ones are created when `create` (layers need not list parents), else `None`.
    fn dir(
        &mut self,
        rel: &[u8],
        entry: &[u8],
        create: bool,
    ) -> Result<Option<PathBuf>, LayerError> {
        let mut path = self.root.clone();
        let mut sofar: Vec<u8> = Vec::new();
        if rel.is_empty() {
            return Ok(Some(path));
        }
        for comp in rel.split(|&b| b == b'/') {
            path.push(OsStr::from_bytes(comp));
            sofar = join(&sofar, comp);
            if self.known_dirs.contains(&sofar) {
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        entry,
                        format!("would be written through the symlink `{}`", show(&sofar)),
                    ))
                }
                Ok(m) if is_whiteout(&m) && create => {
                    // Deleted below and recreated in this layer: an opaque directory.
                    self.remove(&path)?;
                    self.mkdir(&path)?;
                    xattr::set(&path, OPAQUE_XATTR, b"y").map_err(|e| {
                        LayerError::io(&path, "cannot mark the directory opaque", e)
                    })?;
                }
                Ok(_) => {
                    return Err(self.bad(
                        entry,
                        format!(
                            "is inside `{}`, which this layer made a non-directory",
                            show(&sofar)
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    self.mkdir(&path)?;
                }
                Err(e) => return Err(LayerError::io(&path, "cannot stat", e)),
            }
            self.known_dirs.insert(sofar.clone());
        }
        Ok(Some(path))
    }

    fn mkdir(&self, path: &Path) -> Result<(), LayerError> {
        fs::create_dir(path).map_err(|e| LayerError::io(path, "cannot create the directory", e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| LayerError::io(path, "cannot set the mode", e))
    }

    /// Removes whatever is at `path`, if anything.
    fn clear(&mut self, path: &Path) -> Result<(), LayerError> {
        match fs::symlink_metadata(path) {
            Ok(_) => self.remove(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LayerError::io(path, "cannot stat", e)),
        }
    }

    fn remove(&mut self, path: &Path) -> Result<(), LayerError> {
        let meta =
            fs::symlink_metadata(path).map_err(|e| LayerError::io(path, "cannot stat", e))?;
        let result = if meta.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        result.map_err(|e| LayerError::io(path, "cannot replace", e))?;
        self.known_dirs.clear();
        Ok(())
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown clears file
    /// capabilities); never following a symlink.
    fn set_meta(
        &self,
        path: &Path,
        raw: &[u8],
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), LayerError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| LayerError::io(path, "cannot set the owner", e))?;
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
                .map_err(|e| LayerError::io(path, "cannot set the mode", e))?;
        }
        for (name, value) in &meta.xattrs {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                let unsupported = matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOTSUP) | Some(nix::libc::EPERM)
                );
                if unsupported && name.starts_with(b"user.") {
                    // user.* cannot be set on symlinks and devices, nor on some filesystems.
                    tracing::warn!(entry = %show(raw), xattr = %show(name), error = %e, "xattr not restored");
                    continue;
                }
                return Err(LayerError::io(
                    path,
                    format!(
                        "cannot set extended attribute {} (the filesystem under the \
                         destination must support it)",
                        show(name)
                    ),
                    e,
                ));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ExtractStats, LayerError> {
        if !self.root_seen {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))
                .map_err(|e| LayerError::io(&self.root, "cannot set the mode", e))?;
        }
        for (path, mtime) in self.dir_times.drain(..).rev() {
            match set_time(&path, mtime) {
                Ok(()) => {}
                // Replaced by a later entry of the layer.
                Err(LayerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.stats)
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn set_time(path: &Path, mtime: u64) -> Result<(), LayerError> {
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let time = TimeSpec::new(secs, 0);
    stat::utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| LayerError::io(path, "cannot set the modification time", e.into()))
}
