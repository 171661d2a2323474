//! Disk files in a region's `disks/` folder: each build's own file (`NAME-VERSION-BUILD.EXT`),
//! and the version's name (`NAME-VERSION.EXT`), a hard link moved by a rename so that a reader
//! sees the old disk or the new one, never a mix.

use std::path::{Path, PathBuf};

use kiln_image::disk::{self as kdisk, DiskFormat};

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

/// Writes `raw` in `format` into `region/disks/`, as `BUILD_STEM.EXT`; it appears complete or
/// not at all.
pub fn place(
    raw: &Path,
    region: &Path,
    build_stem: &str,
    format: DiskFormat,
    compressed: bool,
) -> Result<Placed, String> {
    let dir = region.join("disks");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ext = format.extension();
    let path = dir.join(format!("{build_stem}.{ext}"));
    kdisk::convert(raw, &path, format, compressed).map_err(|e| e.to_string())?;
    let digest = kiln_image::digest::sha256_file(&path).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Placed { path, digest, size })
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
    Ok(latest)
}
