//! What the sandbox tests share: a scratch folder for a sandbox's layers, and starting one.

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

/// Starts a sandbox with this test binary's helper.
pub async fn start(spec: kiln_instance::sandbox::SandboxSpec) -> kiln_instance::sandbox::Sandbox {
    kiln_instance::sandbox::Sandbox::start(
        spec,
        PathBuf::from(env!("CARGO_BIN_EXE_kiln-sandbox-helper")),
        vec![kiln_instance::sandbox::HELPER_ARG.to_string()],
    )
    .await
    .unwrap()
}
