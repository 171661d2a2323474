//! Disk files in a region's `disks/` folder: each build's own file (`NAME-VERSION-BUILD.EXT`),
//! and the version's name (`NAME-VERSION.EXT`), a hard link moved by a rename so that a reader
//! sees the old disk or the new one, never a mix.

use std::path::{Path, PathBuf};

use crate::DiskFile;

/// A disk placed in a region.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The file, named after the build (`NAME-VERSION-BUILD.EXT`).
    pub path: PathBuf,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Puts `file` into `region/disks/` as `BUILD_STEM.EXT`, a hard link when the region is on the
/// file's filesystem (a copy-on-write clone or a sparse copy when not); it appears complete or
/// not at all.
pub fn place(file: &DiskFile, region: &Path, build_stem: &str) -> Result<Placed, String> {
    let dir = region.join("disks");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("{build_stem}.{}", file.format.extension()));
    let tmp = path.with_extension("partial");
    link_or_copy(&file.path, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("copying {} to {}: {e}", file.path.display(), tmp.display())
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(Placed {
        path,
        digest: file.digest.clone(),
        size: file.size,
    })
}

/// Gives `from` the second name `to` (replacing it): a hard link when both are on one
/// filesystem, else a copy-on-write clone where the filesystem has them, else a sparse copy.
pub fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let status = std::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("cp failed ({status})")))
    }
}

/// Points `STEM.EXT` (the version's name) at a placed build's file: a hard link swapped in by a
/// rename, so a reader sees the old disk or the new one.
pub fn link_version(placed: &Path, stem: &str) -> Result<PathBuf, String> {
    let dir = placed.parent().unwrap_or(Path::new("."));
    let ext = placed
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let latest = dir.join(format!("{stem}.{ext}"));
    let tmp = dir.join(format!(".{stem}.{ext}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(placed, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &latest))
        .map_err(|e| format!("linking {}: {e}", latest.display()))?;
    // When the version's name already is this file (builds of one disk share it, from the disk
    // cache), rename does nothing and leaves the temporary name.
    let _ = std::fs::remove_file(&tmp);
    Ok(latest)
}
