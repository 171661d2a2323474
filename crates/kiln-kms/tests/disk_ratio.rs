//! Encryption must not ruin chunk reuse: the two versions of the synthetic 64 MiB disk of
//! kiln-chunk's `disk_versions` test (1 MiB rewritten, 100 bytes inserted: a package update),
//! packed plain and packed sealed under a per-image data key. The encrypted update must send
//! at most twice the plain update's bytes (new pack + index); it is rebuilt from a local v1
//! with the key, and not at all with another.
// The helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use kiln_chunk::testing::{first_version, push, second_version, Folder, MIB};
use kiln_chunk::{rebuild_sealed, FrameSeal, Packed};
use kiln_kms::{DataKeys, KeyStore};

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
    let v2 = second_version(&v1);

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
