//! What the sandbox tests share: a scratch folder for a sandbox's layers.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

/// A temporary folder holding a sandbox's writable layer, work and root folders.
pub struct Dirs {
    _tmp: tempfile::TempDir,
    /// The folder.
    pub base: PathBuf,
}

/// A new scratch folder.
pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    Dirs { _tmp: tmp, base }
}
