//! A stored layer tree's modification times made what its blob says.
//!
//! A layer captured from a builder's writable layer is moved into the store as it is, with the
//! times the build left, while its blob carries the build epoch; the same layer extracted on
//! another host from that blob carries the blob's times. Disks are made from trees, so that
//! they are the same bytes on any host the tree must first say what the blob says.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::{clean_path, open_tar_stream, LayerError};

/// Sets the modification (and access) time of every entry of `tree` that `blob` lists to the
/// blob's, and returns the latest of them (0 for an empty layer). Whiteouts are left alone:
/// they are not part of the image.
pub fn align_times(blob: &Path, tree: &Path) -> Result<i64, LayerError> {
    let (stream, _) = open_tar_stream(blob)?;
    let mut archive = tar::Archive::new(stream);
    let terr = |e: io::Error| LayerError::BadTar {
        path: blob.to_path_buf(),
        message: format!("is not a readable layer: {e}"),
    };
    let mut latest = 0i64;
    for entry in archive.entries().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = clean_path(&raw) else {
            continue;
        };
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(&rel);
        if name.starts_with(b".wh.") {
            continue;
        }
        let mut mtime = entry.header().mtime().map_err(terr)? as i64;
        if let Some(exts) = entry.pax_extensions().map_err(terr)? {
            for ext in exts.flatten() {
                if ext.key_bytes() == b"mtime" {
                    let text = String::from_utf8_lossy(ext.value_bytes()).into_owned();
                    let whole = text.split('.').next().unwrap_or("");
                    mtime = whole.parse::<i64>().map_or(mtime, |t| t.max(0));
                }
            }
        }
        latest = latest.max(mtime);
        let path = if rel.is_empty() {
            tree.to_path_buf()
        } else {
            tree.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let t = TimeSpec::new(mtime, 0);
        match utimensat(None, &path, &t, &t, UtimensatFlags::NoFollowSymlink) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(LayerError::io(&path, "cannot set the time of", e.into())),
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tree moved into the store keeps the build's times; after aligning, it has the blob's
    /// (the build epoch), as the same layer extracted elsewhere has.
    #[test]
    fn a_captured_tree_gets_its_blobs_times() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("etc/app")).unwrap();
        std::fs::write(upper.join("etc/app/conf"), "x=1\n").unwrap();
        std::os::unix::fs::symlink("conf", upper.join("etc/app/link")).unwrap();
        let epoch = 1_600_000_000;
        let blob = crate::write_layer(
            &upper,
            &[],
            epoch,
            crate::Compression::Gzip,
            &d.path().join("blobs"),
        )
        .unwrap();
        let before = std::fs::metadata(upper.join("etc/app/conf"))
            .unwrap()
            .mtime();
        assert_ne!(before, epoch, "the tree starts with the build's times");
        let latest = align_times(&blob.path, &upper).unwrap();
        assert_eq!(latest, epoch);
        for p in ["etc", "etc/app", "etc/app/conf"] {
            assert_eq!(
                std::fs::metadata(upper.join(p)).unwrap().mtime(),
                epoch,
                "{p}"
            );
        }
        let link = std::fs::symlink_metadata(upper.join("etc/app/link")).unwrap();
        assert_eq!(
            link.mtime(),
            epoch,
            "the link itself, not what it points at"
        );
    }
}
