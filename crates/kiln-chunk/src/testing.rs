//! Two versions of a synthetic disk for tests of chunk reuse (feature `testing`): kiln-chunk's
//! own `disk_versions` test and kiln-kms's measure of what encryption costs use the same bytes,
//! so their numbers compare.

// A failure here is the calling test's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::{chunk_file, pack_sealed, ChunkIndex, Digest, FrameSeal, PackSource, Packed, Params};

/// A mebibyte.
pub const MIB: usize = 1 << 20;

/// Deterministic noise (xorshift): random 4 KiB blocks compress as badly as real binaries.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 24 MiB of data, 8 MiB of zeros, 24 MiB of data, 8 MiB of zeros: the shape of a raw disk
/// with a filesystem and free space.
pub fn first_version() -> Vec<u8> {
    let mut disk = Vec::with_capacity(64 * MIB);
    for seed in 0..(24 * MIB / 4096) as u64 {
        disk.extend(noise(seed + 1, 4096));
    }
    disk.resize(32 * MIB, 0);
    for seed in 0..(24 * MIB / 4096) as u64 {
        disk.extend(noise(seed + 100_000, 4096));
    }
    disk.resize(64 * MIB, 0);
    disk
}

/// `v1` after a package update: 1 MiB rewritten and 100 bytes inserted.
pub fn second_version(v1: &[u8]) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    v2[10 * MIB..11 * MIB].copy_from_slice(&noise(7, MIB));
    v2.splice(40 * MIB..40 * MIB, noise(8, 100));
    v2
}

/// Writes `disk` to `dir/name`, chunks it and packs it against `known` (sealed by `seal`).
pub fn push(
    dir: &Path,
    name: &str,
    disk: &[u8],
    known: &[ChunkIndex],
    seal: Option<&dyn FrameSeal>,
) -> Packed {
    let path = dir.join(name);
    std::fs::write(&path, disk).unwrap();
    let chunked = chunk_file(&path, &Params::DEFAULT).unwrap();
    pack_sealed(&path, &chunked, known, dir, seal).unwrap()
}

/// Packs read from a folder of pack files, as `kiln disk pull` might from a local mirror.
pub struct Folder {
    /// Each pack's file.
    pub files: HashMap<Digest, PathBuf>,
}

#[async_trait]
impl PackSource for Folder {
    async fn read(&self, pack: &Digest, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
        let path = self.files.get(pack).ok_or(std::io::ErrorKind::NotFound)?;
        let mut buf = vec![0u8; length as usize];
        File::open(path)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}
