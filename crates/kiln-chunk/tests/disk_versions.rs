//! Two versions of a synthetic 64 MiB disk: the second ships a small pack, and a reader with the
//! first rebuilds it from the packs on disk with few ranged reads.
// The helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kiln_chunk::{chunk_file, pack, rebuild, ChunkIndex, Digest, PackSource, Packed, Params};

const MIB: usize = 1 << 20;

/// Deterministic noise (xorshift): random 4 KiB blocks compress as badly as real binaries.
fn noise(seed: u64, len: usize) -> Vec<u8> {
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
fn first_version() -> Vec<u8> {
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

/// Packs read from a folder of pack files, as `kiln disk pull` might from a local mirror.
struct Folder {
    files: HashMap<Digest, PathBuf>,
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

fn push(dir: &Path, name: &str, disk: &[u8], known: &[ChunkIndex]) -> Packed {
    let path = dir.join(name);
    std::fs::write(&path, disk).unwrap();
    let chunked = chunk_file(&path, &Params::DEFAULT).unwrap();
    pack(&path, &chunked, known, dir).unwrap()
}

#[tokio::test]
async fn a_new_version_ships_a_small_pack_and_rebuilds_from_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = first_version();
    let mut v2 = v1.clone();
    v2[10 * MIB..11 * MIB].copy_from_slice(&noise(7, MIB));
    v2.splice(40 * MIB..40 * MIB, noise(8, 100));

    let p1 = push(dir.path(), "v1.raw", &v1, &[]);
    let p2 = push(dir.path(), "v2.raw", &v2, std::slice::from_ref(&p1.index));
    let full = p1.new_pack.clone().unwrap();
    let delta = p2.new_pack.clone().unwrap();
    eprintln!("v1: {:?}\nv2: {:?}", p1.stats, p2.stats);
    // 1 MiB changed and one insertion: a few percent of the first pack, not all of it.
    assert!(full.size > 40 * MIB as u64, "{full:?}");
    assert!(
        delta.size * 100 < full.size * 4,
        "{} of {}",
        delta.size,
        full.size
    );
    assert_eq!(p2.index.packs.len(), 2);

    // The index: well under 60 bytes a chunk, the zero runs almost free.
    let encoded = p2.index.encode().unwrap();
    let chunks = p2.index.entries.len();
    eprintln!("index: {} bytes for {chunks} chunks", encoded.len());
    assert!(
        encoded.len() < chunks * 60,
        "{} bytes, {chunks} chunks",
        encoded.len()
    );
    let index = ChunkIndex::decode(&encoded).unwrap();
    assert_eq!(index, p2.index);

    // A reader with v1 rebuilds v2 in place.
    let source = Folder {
        files: [&full, &delta]
            .iter()
            .map(|p| (p.digest, p.path.clone()))
            .collect(),
    };
    let local = dir.path().join("local.raw");
    std::fs::write(&local, &v1).unwrap();
    let stats = rebuild(&index, &local, Some(&local), &source)
        .await
        .unwrap();
    eprintln!("rebuild: {stats:?}");
    assert!(std::fs::read(&local).unwrap() == v2);
    assert!(stats.bytes_fetched < 2 * MIB as u64, "{stats:?}");
    assert!(stats.range_requests <= 4, "{stats:?}");
    assert!(stats.bytes_reused > 40 * MIB as u64, "{stats:?}");

    // A reader with nothing fetches from both packs.
    let fresh = dir.path().join("fresh.raw");
    let stats = rebuild(&index, &fresh, None, &source).await.unwrap();
    assert!(std::fs::read(&fresh).unwrap() == v2);
    assert!(stats.bytes_fetched > 40 * MIB as u64, "{stats:?}");
}
