//! Two versions of a synthetic 64 MiB disk: the second ships a small pack, and a reader with the
//! first rebuilds it from the packs on disk with few ranged reads.
// The helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use kiln_chunk::testing::{first_version, push, second_version, Folder, MIB};
use kiln_chunk::{rebuild, ChunkIndex};

#[tokio::test]
async fn a_new_version_ships_a_small_pack_and_rebuilds_from_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = first_version();
    let v2 = second_version(&v1);

    let p1 = push(dir.path(), "v1.raw", &v1, &[], None);
    let p2 = push(
        dir.path(),
        "v2.raw",
        &v2,
        std::slice::from_ref(&p1.index),
        None,
    );
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
