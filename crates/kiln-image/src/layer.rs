//! OCI layers: written deterministically from an overlayfs upper directory or a tarball, and
//! extracted into overlay lower-directory form.
//!
//! A build captures each component's changes as the upper directory of an overlay mount; the
//! layer written from it must be the same bytes whenever the same tree is captured, so that a
//! step cache keyed by layer digest hits and two builds of one recipe give one image digest.
//! Hence: entries sorted, every timestamp the build epoch, no user or group names, no atime or
//! ctime, fixed compression settings.
//!
//! Layers are stored as blobs named by digest, `<out_dir>/sha256/<hex>`, so an OCI image
//! layout's `blobs` directory can be the `out_dir` and its blobs need no copy.
//!
//! Whiteouts: overlayfs marks a deleted file with a 0:0 character device and a directory whose
//! lower content is hidden with the xattr `trusted.overlay.opaque=y`; OCI layers use
//! `.wh.<name>` and `.wh..wh..opq` files. [`write_layer`] converts the first form into the
//! second, [`extract_layer`] the second back into the first, so extracted layers stack as
//! `lowerdir`s of an overlay mount, with no merge step.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::HashingWriter;

mod extract;
mod pgzip;
mod retar;
mod tarw;
mod times;
mod upper;

pub use extract::extract_layer;
pub use retar::layer_from_tar;
pub use times::align_times;
pub use upper::write_layer;

/// Compression of a layer blob; it decides the blob's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip: what every OCI tool reads; the choice for images leaving kiln. Compressed with
    /// miniz_oxide (pure Rust, no CPU-dependent code paths, so every builder produces the same
    /// bytes), at about 17 MB/s of tar on this project's machines.
    Gzip,
    /// zstd (level 3): as small as gzip at nearly the speed of no compression; for the step
    /// cache and local layers. Older tools cannot read it: Debian 12's umoci 0.4.7 refuses
    /// zstd layers, Docker before 23 too; skopeo 1.9 reads them.
    Zstd,
    /// No compression: for layers that stay on this machine (step cache, local lower dirs).
    None,
}

impl Compression {
    /// The OCI media type of a layer blob with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
            Compression::None => MEDIA_TYPE_TAR,
        }
    }
}

/// Media type of an uncompressed layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layer blob written to a blob folder; everything a manifest and a config need about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:<hex>` of the blob as stored (compressed): the manifest's layer digest.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    /// Size of the blob as stored, in bytes.
    pub size: u64,
    /// OCI media type (see [`Compression::media_type`]).
    pub media_type: String,
    /// Where the blob is: `<out_dir>/sha256/<hex>` for blobs kiln wrote.
    pub path: PathBuf,
}

/// What [`extract_layer`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Tar entries applied (whiteouts and opaque markers included).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Errors of layer writing and extraction.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file operation failed.
    #[error("{path}: {doing}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing with it.
        doing: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The epoch does not fit a tar header.
    #[error(
        "layer epoch {0} is out of range: give seconds since 1970 between 0 and 8589934591 \
         (SOURCE_DATE_EPOCH or the build date)"
    )]
    Epoch(i64),
    /// An exclusion does not name a path inside the upper directory.
    #[error(
        "exclude path `{0}` must name a file inside the upper directory, relative to it and \
         without `..` (like `etc/resolv.conf`)"
    )]
    Exclude(PathBuf),
    /// The upper directory holds something an OCI layer cannot say.
    #[error("{path}: {what}")]
    Unrepresentable {
        /// The file.
        path: PathBuf,
        /// What it is and what to do about it.
        what: String,
    },
    /// A file changed size while it was being read into the layer.
    #[error(
        "{path}: changed while it was being written into the layer (it had {expected} bytes); \
         stop every process that writes to the tree before capturing it"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// The size it had when the tree was scanned.
        expected: u64,
    },
    /// The input is not a tar stream kiln can use.
    #[error("{path}: {message}")]
    BadTar {
        /// The tarball or blob.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
    /// An entry of a layer would write outside the destination or through a symlink.
    #[error(
        "{blob}: entry `{entry}` {reason}; refusing to extract this layer (it is malformed or \
         malicious)"
    )]
    Unsafe {
        /// The layer blob.
        blob: PathBuf,
        /// The entry's path as the tar names it.
        entry: String,
        /// What it would do.
        reason: String,
    },
    /// The destination of an extraction already has content.
    #[error("{0}: already exists and is not empty; remove it or extract somewhere else")]
    DestExists(PathBuf),
}

impl LayerError {
    pub(crate) fn io(path: &Path, doing: impl Into<String>, source: io::Error) -> Self {
        LayerError::Io {
            path: path.to_path_buf(),
            doing: doing.into(),
            source,
        }
    }
}

/// Largest mtime a ustar header holds (11 octal digits); later times would need PAX records,
/// and no build epoch is that late.
const MAX_EPOCH: i64 = 0o777_7777_7777;

pub(crate) fn check_epoch(epoch: i64) -> Result<u64, LayerError> {
    if (0..=MAX_EPOCH).contains(&epoch) {
        Ok(epoch as u64)
    } else {
        Err(LayerError::Epoch(epoch))
    }
}

/// Which extended attributes travel in layers (both ways).
///
/// `security.*` carries file capabilities (`ping`'s `cap_net_raw`) and `user.*` and POSIX ACLs
/// are the file's own; but `trusted.*` is where overlayfs keeps its private state (a forged
/// `trusted.overlay.redirect` in a layer would redirect lookups of the overlay mount), and
/// `security.selinux` is the build host's label, not the image's.
pub(crate) fn keep_xattr(name: &[u8]) -> bool {
    if name == b"security.selinux" {
        return false;
    }
    if name.starts_with(b"security.") {
        return true;
    }
    if name.starts_with(b"user.") {
        return !name.starts_with(b"user.overlay.");
    }
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// Name prefix of OCI whiteout files.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The last component of a relative `/`-separated path.
pub(crate) fn base_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Everything before the last component (empty for a top-level name).
pub(crate) fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// `parent/name` (or `name` at the top).
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Order of entries in a layer: bytewise by path (so parents come before children), except
/// that an opaque marker comes right after its directory, before any sibling: an extractor that
/// empties the directory when it meets the marker then cannot delete this layer's own files.
pub(crate) fn sort_key(path: &[u8]) -> Cow<'_, [u8]> {
    if base_name(path) == OPAQUE_MARKER {
        let parent = parent_of(path);
        let mut key = Vec::with_capacity(parent.len() + 2);
        if !parent.is_empty() {
            key.extend_from_slice(parent);
            key.push(b'/');
        }
        key.push(0);
        Cow::Owned(key)
    } else {
        Cow::Borrowed(path)
    }
}

/// A relative path without `.`, empty or `..` components, or `None` when a component is
/// `..`. A leading `/` is dropped (layers name paths relative to the root either way).
pub(crate) fn clean_path(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return None,
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Some(out)
}

/// A path given by a caller (an exclusion) as `/`-separated bytes relative to the tree.
pub(crate) fn relative_bytes(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name.as_bytes());
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// A path in a tar, for messages.
pub(crate) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// What a tar stream is compressed with, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    Plain,
    Gzip,
    Zstd,
}

/// Opens a tar stream, plain, gzip or zstd (by magic bytes), as plain tar bytes.
pub(crate) fn open_tar_stream(path: &Path) -> Result<(Box<dyn Read>, Detected), LayerError> {
    let file = File::open(path).map_err(|e| LayerError::io(path, "cannot open", e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let magic = reader
        .fill_buf()
        .map_err(|e| LayerError::io(path, "cannot read", e))?;
    let bad = |what: &str| LayerError::BadTar {
        path: path.to_path_buf(),
        message: format!(
            "is compressed with {what}, which OCI layers do not use; decompress it first or \
             recompress it with gzip or zstd"
        ),
    };
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Detected::Gzip,
        ))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(|e| LayerError::io(path, "cannot start zstd decompression", e))?;
        Ok((Box::new(decoder), Detected::Zstd))
    } else if magic.starts_with(b"\xfd7zXZ\x00") {
        Err(bad("xz"))
    } else if magic.starts_with(b"BZh") {
        Err(bad("bzip2"))
    } else {
        Ok((Box::new(reader), Detected::Plain))
    }
}

/// The compressor between the tar writer and the blob file.
pub(crate) enum Encoder<W: Write> {
    Gzip(pgzip::ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    fn new(compression: Compression, inner: W) -> io::Result<Self> {
        Ok(match compression {
            // Parallel, in fixed-size members with fixed header fields (no name, mtime 0, OS
            // "unknown"): the bytes do not depend on the machine.
            Compression::Gzip => Encoder::Gzip(pgzip::ParallelGzip::new(inner)),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, 3)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            Compression::None => Encoder::Plain(inner),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

pub(crate) type BlobStream = HashingWriter<Encoder<HashingWriter<BufWriter<File>>>>;

/// A layer blob being written: tar bytes in, hashed twice (diff id, digest), compressed into a
/// temporary file in `out_dir` that becomes `<out_dir>/sha256/<hex>` only once complete.
pub(crate) struct BlobSink {
    out_dir: PathBuf,
    tmp: tempfile::NamedTempFile,
    compression: Compression,
    pub(crate) tar: tarw::TarWriter<BlobStream>,
}

impl BlobSink {
    pub(crate) fn new(out_dir: &Path, compression: Compression) -> Result<Self, LayerError> {
        fs::create_dir_all(out_dir)
            .map_err(|e| LayerError::io(out_dir, "cannot create the blob directory", e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-layer-")
            .tempfile_in(out_dir)
            .map_err(|e| LayerError::io(out_dir, "cannot create a temporary blob file", e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| LayerError::io(tmp.path(), "cannot open the temporary blob file", e))?;
        let blob = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let encoder = Encoder::new(compression, blob)
            .map_err(|e| LayerError::io(tmp.path(), "cannot start compression", e))?;
        Ok(BlobSink {
            out_dir: out_dir.to_path_buf(),
            compression,
            tar: tarw::TarWriter::new(HashingWriter::new(encoder)),
            tmp,
        })
    }

    pub(crate) fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Ends the tar, flushes and syncs the blob, and moves it under its digest.
    pub(crate) fn finish(self) -> Result<LayerBlob, LayerError> {
        let tmp_path = self.tmp.path().to_path_buf();
        let werr = |e| LayerError::io(&tmp_path, "cannot write the layer blob", e);
        let tar = self.tar.finish().map_err(werr)?;
        let (encoder, diff_id, _) = tar.finish();
        let blob = encoder.finish().map_err(werr)?;
        let (buffered, digest, size) = blob.finish();
        let file = buffered.into_inner().map_err(|e| werr(e.into_error()))?;
        file.sync_all().map_err(werr)?;
        // Blobs are content, readable by whoever serves them (a registry, another user's
        // skopeo); the temporary file was created private.
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o644)).map_err(werr)?;
        let hex = digest.trim_start_matches("sha256:").to_string();
        let dir = self.out_dir.join("sha256");
        fs::create_dir_all(&dir).map_err(|e| LayerError::io(&dir, "cannot create", e))?;
        let path = dir.join(&hex);
        self.tmp.persist(&path).map_err(|e| {
            LayerError::io(&path, "cannot move the finished blob into place", e.error)
        })?;
        sync_dir(&dir).map_err(|e| LayerError::io(&dir, "cannot sync", e))?;
        tracing::debug!(%digest, %diff_id, size, path = %path.display(), "layer blob written");
        Ok(LayerBlob {
            digest,
            diff_id,
            size,
            media_type: self.compression.media_type().to_string(),
            path,
        })
    }
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_parent() {
        assert_eq!(base_name(b"a/b/c"), b"c");
        assert_eq!(parent_of(b"a/b/c"), b"a/b");
        assert_eq!(parent_of(b"c"), b"");
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a", b"c"), b"a/c");
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean_path(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(clean_path(b"./").unwrap(), b"");
        assert!(clean_path(b"a/../b").is_none());
        assert!(clean_path(b"../evil").is_none());
    }

    #[test]
    fn opaque_marker_sorts_first_in_its_directory() {
        let mut paths: Vec<&[u8]> = vec![b"d/-x", b"d/.wh..wh..opq", b"d", b"d/a", b"c", b"e"];
        paths.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        assert_eq!(
            paths,
            vec![&b"c"[..], b"d", b"d/.wh..wh..opq", b"d/-x", b"d/a", b"e"]
        );
    }

    #[test]
    fn xattr_filter() {
        assert!(keep_xattr(b"security.capability"));
        assert!(keep_xattr(b"user.foo"));
        assert!(keep_xattr(b"system.posix_acl_access"));
        assert!(!keep_xattr(b"trusted.overlay.opaque"));
        assert!(!keep_xattr(b"user.overlay.opaque"));
        assert!(!keep_xattr(b"security.selinux"));
        assert!(!keep_xattr(b"trusted.foo"));
    }

    #[test]
    fn exclusions_are_relative() {
        assert_eq!(
            relative_bytes(Path::new("/etc/resolv.conf")).unwrap(),
            b"etc/resolv.conf"
        );
        assert_eq!(
            relative_bytes(Path::new("./etc/hosts")).unwrap(),
            b"etc/hosts"
        );
        assert!(relative_bytes(Path::new("../x")).is_none());
        assert!(relative_bytes(Path::new("/")).is_none());
    }
}
