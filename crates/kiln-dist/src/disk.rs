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
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&file.path, &tmp).is_err() {
        let status = std::process::Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(&file.path)
            .arg(&tmp)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "copying {} to {} failed ({status})",
                file.path.display(),
                tmp.display()
            ));
        }
    }
    std::fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(Placed {
        path,
        digest: file.digest.clone(),
        size: file.size,
    })
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
