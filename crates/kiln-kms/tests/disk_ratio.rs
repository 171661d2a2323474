//! Encryption must not ruin chunk reuse: the two versions of the synthetic 64 MiB disk of
//! kiln-chunk's `disk_versions` test (1 MiB rewritten, 100 bytes inserted: a package update),
//! packed plain and packed sealed under a per-image data key. The encrypted update must send
//! at most twice the plain update's bytes (new pack + index); it is rebuilt from a local v1
//! with the key, and not at all with another.
// The helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kiln_chunk::{
    chunk_file, pack_sealed, rebuild_sealed, ChunkIndex, Digest, FrameSeal, PackSource, Packed,
    Params,
};
use kiln_kms::{DataKeys, KeyStore};

const MIB: usize = 1 << 20;

/// Deterministic noise (xorshift), as disk_versions makes it.
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

fn push(
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

/// What a region that has v1 receives for v2: the new pack and the index (sealed too when
/// the disk is: the index names chunks by their plain digests).
fn update_bytes(p: &Packed, seal: Option<&dyn FrameSeal>) -> u64 {
    let index = p.index.encode().unwrap();
    let index = match seal {
        Some(s) => s.seal(&index).unwrap(),
        None => index,
    };
    p.new_pack.as_ref().map_or(0, |n| n.size) + index.len() as u64
}

#[tokio::test]
async fn an_encrypted_update_sends_at_most_twice_the_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = first_version();
    let mut v2 = v1.clone();
    v2[10 * MIB..11 * MIB].copy_from_slice(&noise(7, MIB));
    v2.splice(40 * MIB..40 * MIB, noise(8, 100));

    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let p1 = push(&plain_dir, "v1.raw", &v1, &[], None);
    let p2 = push(
        &plain_dir,
        "v2.raw",
        &v2,
        std::slice::from_ref(&p1.index),
        None,
    );

    let home = dir.path().join("home");
    let store = KeyStore::new(&home, None);
    let info = store.create("000000000000", "disks").unwrap();
    let key = store.open(&info.arn.key_id, "000000000000").unwrap();
    let keys = DataKeys::new(&home);
    // v1 and v2 each ask for the image's data key, as two builds would.
    let (dk1, wrapped) = keys.for_image(&key, "000000000000", "golden").unwrap();
    let enc_dir = dir.path().join("enc");
    std::fs::create_dir_all(&enc_dir).unwrap();
    let e1 = push(&enc_dir, "v1.raw", &v1, &[], Some(&dk1));
    let (dk2, _) = keys.for_image(&key, "000000000000", "golden").unwrap();
    let e2 = push(
        &enc_dir,
        "v2.raw",
        &v2,
        std::slice::from_ref(&e1.index),
        Some(&dk2),
    );

    let plain = update_bytes(&p2, None);
    let enc = update_bytes(&e2, Some(&dk2));
    let full = e1.new_pack.as_ref().unwrap().size;
    eprintln!(
        "v1 pack: plain {} B, encrypted {full} B; v2 update: plain {plain} B, encrypted {enc} B (ratio {:.4}); chunks reused {} / new {}",
        p1.new_pack.as_ref().unwrap().size,
        enc as f64 / plain as f64,
        e2.stats.chunks_reused,
        e2.stats.chunks_new
    );
    assert_eq!(e2.stats.chunks_reused, p2.stats.chunks_reused);
    assert!(
        enc <= 2 * plain,
        "encrypted update {enc} B, plain {plain} B"
    );
    assert!(
        enc * 100 < full * 5,
        "the update is not small: {enc} of {full}"
    );

    // The packs are ciphertext: no plain frame of v1's pack appears in the encrypted one.
    let plain_pack = std::fs::read(&p1.new_pack.as_ref().unwrap().path).unwrap();
    let enc_pack = std::fs::read(&e1.new_pack.as_ref().unwrap().path).unwrap();
    assert_ne!(plain_pack.len(), enc_pack.len());
    let probe = &plain_pack[4096..4096 + 64];
    assert!(!enc_pack.windows(64).any(|w| w == probe));

    // A reader with v1 and the unwrapped key rebuilds v2; one with another key cannot.
    let source = Folder {
        files: [e1.new_pack.as_ref().unwrap(), e2.new_pack.as_ref().unwrap()]
            .iter()
            .map(|p| (p.digest, p.path.clone()))
            .collect(),
    };
    let reader_key = key.unwrap_data_key(&wrapped).unwrap();
    let local = dir.path().join("local.raw");
    std::fs::write(&local, &v1).unwrap();
    let stats = rebuild_sealed(&e2.index, &local, Some(&local), &source, Some(&reader_key))
        .await
        .unwrap();
    assert!(std::fs::read(&local).unwrap() == v2);
    assert!(stats.bytes_fetched < 2 * MIB as u64, "{stats:?}");

    let other = store.create("000000000000", "other").unwrap();
    let other = store.open(&other.arn.key_id, "000000000000").unwrap();
    let (wrong, _) = keys.for_image(&other, "000000000000", "golden").unwrap();
    let fresh = dir.path().join("fresh.raw");
    let e = rebuild_sealed(&e2.index, &fresh, None, &source, Some(&wrong))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not decrypt"), "{e}");
    assert!(!fresh.exists());
}
