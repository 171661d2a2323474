//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift), so that tests need no RNG crate.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    crate::testing::noise(seed, len)
}

/// Writes `data` to `dir/name`.
pub(crate) fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}
