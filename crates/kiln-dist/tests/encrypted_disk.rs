//! An encrypted disk against a real docker-registry: packed under a per-image data key
//! wrapped by a KMS key, distributed, pulled back by an account allowed to use the key (the
//! digest is the record's), refused to one that is not and to a reader without keys; the
//! next version sends a small pack, as plain disks do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_dist::chunked;
use kiln_dist::pieces;
use kiln_dist::{
    distribute, Artifact, BuildId, Naming, OutputKind, Place, Region, RegistryPlace, RemoteTarget,
};
use kiln_image::registry::RegistryOptions;
use kiln_kms::{DataKeys, KeyStore, WrappedDataKey};
use kiln_testkit::registry::Registry;

mod common;
use common::disk;

const OWNER: &str = "111111111111";
const OTHER: &str = "222222222222";

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

fn quiet(_: &str) {}

fn artifact(d: &Path, version: &str, piece: pieces::Piece) -> Artifact {
    Artifact {
        build: BuildId {
            name: "web".into(),
            version: version.into(),
            build: 1,
        },
        image: None,
        disk: None,
        previous: None,
        scratch: d.join(format!("scratch-{version}")),
        pieces: vec![piece],
    }
}

#[tokio::test]
async fn an_encrypted_disk_is_pulled_only_with_its_key() {
    let registry = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let store = KeyStore::new(&home, None);
    let info = store.create(OWNER, "disks").unwrap();
    let key = store.open(&info.arn.to_string(), OWNER).unwrap();
    let packs = d.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let region = Region {
        name: "eu".into(),
        targets: vec![Arc::new(RemoteTarget::new(
            "eu",
            Box::new(RegistryPlace::new(
                &registry.host(),
                Some("golden"),
                RegistryOptions::default(),
            )),
            vec![OutputKind::DiskChunks],
            Naming::default(),
        ))],
    };

    let raw1 = d.path().join("v1.raw");
    disk(&raw1, b"");
    let (dk, wrapped) = DataKeys::new(&home).for_image(&key, OWNER, "web").unwrap();
    let (c1, i1) = chunked::pack_keyed(&raw1, None, &packs, Some((&dk, &wrapped))).unwrap();
    let p1 = pieces::chunked_disk(&c1, "web-1.0.0.raw");
    let manifest: serde_json::Value = serde_json::from_slice(&p1.manifest).unwrap();
    let carried: WrappedDataKey = serde_json::from_str(
        manifest["annotations"]["dev.kiln.disk.key"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(carried, wrapped);
    let out1 = distribute(
        std::slice::from_ref(&region),
        &artifact(d.path(), "1.0.0", p1),
        &quiet,
    )
    .await
    .unwrap();
    let first = out1[0].sent.unwrap();

    let repo = RegistryPlace::new(&registry.host(), Some("golden"), RegistryOptions::default())
        .repo("web/disk")
        .unwrap();
    let as_account = |account: &'static str| {
        let store = store.clone();
        move |w: &WrappedDataKey| {
            store
                .open(&w.key_arn.to_string(), account)
                .and_then(|k| k.unwrap_data_key(w))
                .map_err(|e| e.to_string())
        }
    };
    // The owner pulls it back bit for bit.
    let pulled = d.path().join("pulled.raw");
    let p = chunked::pull_keyed(repo.as_ref(), "1.0.0", &pulled, None, &as_account(OWNER))
        .await
        .unwrap();
    assert_eq!(p.digest, c1.disk_digest);
    assert_eq!(sha256(&pulled), sha256(&raw1));

    // Another account is refused, and so is a reader with no keys; nothing is written.
    let refused: PathBuf = d.path().join("refused.raw");
    let e = chunked::pull_keyed(repo.as_ref(), "1.0.0", &refused, None, &as_account(OTHER))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("may not use") && e.to_string().contains(OTHER),
        "{e}"
    );
    let e = chunked::pull(repo.as_ref(), "1.0.0", &refused, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("encrypted with the KMS key"), "{e}");
    assert!(!refused.exists());
    // Granted, it may.
    store.grant(&info.arn.to_string(), OWNER, OTHER).unwrap();
    chunked::pull_keyed(repo.as_ref(), "1.0.0", &refused, None, &as_account(OTHER))
        .await
        .unwrap();
    assert_eq!(sha256(&refused), sha256(&raw1));

    // The registry holds no plain chunk: the plain disk's first 4 KiB of noise are nowhere
    // in the packs it stores.
    let probe = std::fs::read(&raw1).unwrap()[..64].to_vec();
    for b in c1.packs.iter() {
        let bytes = std::fs::read(registry.blob_file(&b.digest)).unwrap();
        assert!(!bytes.windows(64).any(|w| w == probe.as_slice()));
    }

    // The next version: the same data key, a small pack, pulled over the first.
    let raw2 = d.path().join("v2.raw");
    disk(&raw2, &[7u8; 20_000]);
    let (dk2, wrapped2) = DataKeys::new(&home).for_image(&key, OWNER, "web").unwrap();
    assert_eq!(wrapped2, wrapped);
    let (c2, _) = chunked::pack_keyed(&raw2, Some(&i1), &packs, Some((&dk2, &wrapped2))).unwrap();
    assert!(c2.new_chunks <= 3, "{} new chunks", c2.new_chunks);
    let out2 = distribute(
        std::slice::from_ref(&region),
        &artifact(
            d.path(),
            "1.0.1",
            pieces::chunked_disk(&c2, "web-1.0.1.raw"),
        ),
        &quiet,
    )
    .await
    .unwrap();
    let second = out2[0].sent.unwrap();
    eprintln!("encrypted disk: v1 sent {first} B, v2 sent {second} B");
    assert!(second * 20 < first, "{second} of {first}");
    let p = chunked::pull_keyed(
        repo.as_ref(),
        "1.0.1",
        &pulled,
        Some(&pulled),
        &as_account(OWNER),
    )
    .await
    .unwrap();
    assert_eq!(sha256(&pulled), sha256(&raw2));
    assert!(p.fetched * 20 < first, "fetched {} of {first}", p.fetched);
}
