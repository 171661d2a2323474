//! The blob-level registry API ([`Repository`]) against a real registry (Debian's
//! `docker-registry`, started per test), and through a proxy that breaks connections on
//! purpose: blobs present, mounted and uploaded, uploads resumed, retries, ranged reads and
//! OCI 1.1 artifact manifests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kiln_image::digest::{sha256_bytes, sha256_file};
use kiln_image::layer::{write_layer, Compression};
use kiln_image::oci::{write_image, ImageSettings, WrittenImage};
use kiln_image::registry::{
    push, push_with, RegistryAuth, RegistryError, RegistryOptions, Repository, RetryPolicy, Sent,
};
use kiln_testkit::proxy::CutProxy;
use kiln_testkit::registry::{free_port, Registry};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn anonymous() -> RegistryOptions {
    RegistryOptions::default()
}

/// Bytes that do not repeat in any short period (so a misplaced piece changes the digest).
fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// `bytes` in a file under `dir`, and their digest.
fn blob_file(dir: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path.clone(), sha256_file(&path).unwrap())
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    }
}

fn build_image(t: &Path, layout: &Path, tag: &str) -> WrittenImage {
    let base = t.join("upper-base");
    write(&base.join("usr/lib/big"), &data(200_000), 0o644);
    let comp = t.join("upper-comp");
    write(&comp.join("etc/app.conf"), b"variant=a\n", 0o644);
    let blobs = layout.join("blobs");
    let l1 = write_layer(&base, &[], EPOCH, Compression::Gzip, &blobs).unwrap();
    let l2 = write_layer(&comp, &[], EPOCH, Compression::Gzip, &blobs).unwrap();
    let settings = ImageSettings {
        created: chrono::DateTime::from_timestamp(EPOCH, 0).unwrap(),
        ..ImageSettings::default()
    };
    write_image(layout, tag, &[l1, l2], &settings).unwrap()
}

fn skopeo_inspect(reference: &str, raw: bool) -> String {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_blob_is_uploaded_once_then_present() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let bytes = data(100_000);
    let (path, digest) = blob_file(t.path(), "blob", &bytes);
    let repo = Repository::open(&format!("{}/kiln/blobs", registry.host()), &anonymous()).unwrap();
    assert!(!repo.blob_exists(&digest).await.unwrap());

    let sent = repo.put_blob(&digest, 100_000, &path, &[]).await.unwrap();
    assert_eq!(sent, Sent::Uploaded { bytes: 100_000 });
    assert_eq!(std::fs::read(registry.blob_file(&digest)).unwrap(), bytes);
    assert!(repo.blob_exists(&digest).await.unwrap());

    let before = registry.blob_requests("kiln/blobs");
    let again = repo.put_blob(&digest, 100_000, &path, &[]).await.unwrap();
    assert_eq!(again, Sent::Present);
    assert_eq!(again.bytes(), 0);
    // One HEAD, nothing else.
    assert_eq!(registry.blob_requests("kiln/blobs"), before + 1);
    assert_eq!(registry.requests("HEAD /v2/kiln/blobs/blobs/"), 4);
    assert_eq!(registry.requests("POST /v2/kiln/blobs/blobs/uploads/"), 1);

    // Chunked: pieces of 32 KiB, 4 PATCHes, same bytes.
    let chunked = Repository::open(&format!("{}/kiln/chunked", registry.host()), &anonymous())
        .unwrap()
        .with_piece_size(32 << 10);
    let sent = chunked
        .put_blob(&digest, 100_000, &path, &[])
        .await
        .unwrap();
    assert_eq!(sent, Sent::Uploaded { bytes: 100_000 });
    assert_eq!(
        registry.requests("PATCH /v2/kiln/chunked/blobs/uploads/"),
        4
    );
    assert_eq!(
        registry.statuses("PUT /v2/kiln/chunked/blobs/uploads/"),
        vec![201]
    );

    // Ranged reads, past the end included, and an unknown blob.
    assert_eq!(
        repo.read_range(&digest, 1000, 5000).await.unwrap(),
        &bytes[1000..6000]
    );
    assert_eq!(
        repo.read_range(&digest, 99_990, 100).await.unwrap(),
        &bytes[99_990..]
    );
    assert!(repo.read_range(&digest, 5, 0).await.unwrap().is_empty());
    let missing = sha256_bytes(b"missing");
    let err = repo.read_range(&missing, 0, 10).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    // A wrong size is the caller's mistake, said before anything is sent.
    let err = repo.put_blob(&digest, 5, &path, &[]).await.unwrap_err();
    assert!(err.to_string().contains("not the 5 of the blob"), "{err}");
}

#[tokio::test]
async fn push_with_mounts_from_another_repository() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let written = build_image(t.path(), &layout, "1.0");
    let host = registry.host();
    let first = push_with(
        &layout,
        "1.0",
        &format!("{host}/a/img:1.0"),
        &anonymous(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(first.digest, written.manifest_digest);
    assert_eq!((first.uploaded, first.mounted, first.present), (3, 0, 0));
    let manifest_len = std::fs::metadata(layout.join(format!(
        "blobs/sha256/{}",
        written.manifest_digest.trim_start_matches("sha256:")
    )))
    .unwrap()
    .len();
    assert!(first.bytes_sent > 200_000, "{first:?}");

    let second = push_with(
        &layout,
        "1.0",
        &format!("{host}/b/img:1.0"),
        &anonymous(),
        &["b/img".to_string(), "a/img".to_string()],
    )
    .await
    .unwrap();
    assert_eq!(second.digest, written.manifest_digest);
    assert_eq!((second.uploaded, second.mounted, second.present), (0, 3, 0));
    assert_eq!(second.bytes_sent, manifest_len);
    assert_eq!(registry.requests("PATCH /v2/b/img/"), 0);
    assert_eq!(registry.requests("PUT /v2/b/img/blobs/"), 0);
    assert_eq!(
        registry.statuses("POST /v2/b/img/blobs/uploads/"),
        vec![201; 3]
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&format!("{host}/b/img:1.0"), false)).unwrap();
    assert_eq!(inspected["Digest"], written.manifest_digest);

    // And again: everything is there.
    let third = push_with(
        &layout,
        "1.0",
        &format!("{host}/b/img:1.0"),
        &anonymous(),
        &["a/img".to_string()],
    )
    .await
    .unwrap();
    assert_eq!((third.uploaded, third.mounted, third.present), (0, 0, 3));
    assert_eq!(
        push(&layout, "1.0", &format!("{host}/b/img:1.0"), &anonymous())
            .await
            .unwrap(),
        written.manifest_digest
    );
}

#[tokio::test]
async fn a_declined_mount_uploads_in_its_session() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let bytes = data(50_000);
    let (path, digest) = blob_file(t.path(), "blob", &bytes);
    let repo = Repository::open(&format!("{}/kiln/target", registry.host()), &anonymous()).unwrap();
    let sent = repo
        .put_blob(&digest, 50_000, &path, &["kiln/lacks-it".to_string()])
        .await
        .unwrap();
    assert_eq!(sent, Sent::Uploaded { bytes: 50_000 });
    // The mount's POST opened the session the upload used: no second POST.
    assert_eq!(
        registry.statuses("POST /v2/kiln/target/blobs/uploads/"),
        vec![202]
    );
    assert_eq!(
        registry.statuses("PUT /v2/kiln/target/blobs/uploads/"),
        vec![201]
    );
    assert_eq!(repo.read_range(&digest, 0, 50_000).await.unwrap(), bytes);
}

#[tokio::test]
async fn basic_auth_for_blobs_and_manifests() {
    let registry = Registry::start_with(Some(("kiln", "s3cret")));
    let t = tempfile::tempdir().unwrap();
    let with = |password: &str| RegistryOptions {
        auth: Some(RegistryAuth {
            username: "kiln".into(),
            password: password.into(),
        }),
        insecure_http: false,
    };
    let name = format!("{}/kiln/private", registry.host());
    let wrong = Repository::open(&name, &with("wrong")).unwrap();
    let err = wrong.blob_exists(&sha256_bytes(b"x")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("refused the credentials of user `kiln`"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains("wrong"));
    let err = Repository::open(&name, &anonymous())
        .unwrap()
        .get_manifest("1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { username: None, .. }),
        "{err:?}"
    );

    let repo = Repository::open(&name, &with("s3cret"))
        .unwrap()
        .with_piece_size(16 << 10);
    let bytes = data(40_000);
    let (path, digest) = blob_file(t.path(), "blob", &bytes);
    assert_eq!(
        repo.put_blob(&digest, 40_000, &path, &[]).await.unwrap(),
        Sent::Uploaded { bytes: 40_000 }
    );
    let config = b"{}";
    let config_digest = sha256_bytes(config);
    repo.put_blob_bytes(&config_digest, config).await.unwrap();
    let manifest = artifact_manifest(&config_digest, &[(&digest, 40_000), (&digest, 40_000)]);
    let pushed = repo
        .put_manifest("1", &manifest, OCI_MANIFEST)
        .await
        .unwrap();
    assert_eq!(pushed, sha256_bytes(&manifest));
    let (got, media_type, got_digest) = repo.get_manifest("1").await.unwrap().unwrap();
    assert_eq!(
        (got, media_type, got_digest),
        (manifest, OCI_MANIFEST.to_string(), pushed)
    );
    assert_eq!(repo.read_range(&digest, 7, 3).await.unwrap(), &bytes[7..10]);
    assert_eq!(repo.tags().await.unwrap(), vec!["1".to_string()]);
    // The credential is kept: one challenge for all of these requests.
    let challenged: usize = ["HEAD", "GET", "PUT", "POST", "PATCH"]
        .iter()
        .map(|m| {
            registry
                .statuses(&format!("{m} /v2/kiln/private/"))
                .iter()
                .filter(|s| **s == 401)
                .count()
        })
        .sum();
    // wrong: the first 401 and the refused answer; anonymous: one; the right one: one.
    assert_eq!(challenged, 4, "{}", registry.log());
}

/// An OCI 1.1 artifact manifest: empty config, kiln's own layer media types.
fn artifact_manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, (digest, size))| {
            serde_json::json!({
                "mediaType": "application/vnd.kiln.disk.chunk.v1+zstd",
                "digest": digest,
                "size": size,
                "annotations": {"kiln.chunk.index": i.to_string()},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.kiln.disk.v1",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": config,
            "size": 2,
            "data": "e30=",
        },
        "layers": layers,
    }))
    .unwrap()
}

#[tokio::test]
async fn artifact_manifests_round_trip() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let repo = Repository::open(&format!("{}/kiln/disk", registry.host()), &anonymous()).unwrap();
    let empty = sha256_bytes(b"{}");
    assert_eq!(
        repo.put_blob_bytes(&empty, b"{}").await.unwrap(),
        Sent::Uploaded { bytes: 2 }
    );
    assert_eq!(
        repo.put_blob_bytes(&empty, b"{}").await.unwrap(),
        Sent::Present
    );
    let err = repo.put_blob_bytes(&empty, b"[]").await.unwrap_err();
    assert!(
        err.to_string().contains("the bytes given have digest"),
        "{err}"
    );
    let (p1, d1) = blob_file(t.path(), "c1", &data(3000));
    let (p2, d2) = blob_file(t.path(), "c2", b"second chunk");
    repo.put_blob(&d1, 3000, &p1, &[]).await.unwrap();
    repo.put_blob(&d2, 12, &p2, &[]).await.unwrap();
    let manifest = artifact_manifest(&empty, &[(&d1, 3000), (&d2, 12)]);
    let digest = sha256_bytes(&manifest);

    assert_eq!(repo.get_manifest("1.0").await.unwrap(), None);
    assert_eq!(repo.tags().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        repo.put_manifest("1.0", &manifest, OCI_MANIFEST)
            .await
            .unwrap(),
        digest
    );
    assert_eq!(
        repo.put_manifest(&digest, &manifest, OCI_MANIFEST)
            .await
            .unwrap(),
        digest
    );
    for reference in ["1.0", digest.as_str()] {
        let (bytes, media_type, got) = repo.get_manifest(reference).await.unwrap().unwrap();
        assert_eq!(bytes, manifest, "{reference}");
        assert_eq!(media_type, OCI_MANIFEST);
        assert_eq!(got, digest);
    }
    assert_eq!(repo.get_manifest("2.0").await.unwrap(), None);
    assert_eq!(repo.tags().await.unwrap(), vec!["1.0".to_string()]);
    let raw = skopeo_inspect(&format!("{}/kiln/disk:1.0", registry.host()), true);
    assert_eq!(raw.trim_end().as_bytes(), manifest.as_slice());
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["artifactType"], "application/vnd.kiln.disk.v1");
    // Bytes whose digest is not the reference given are refused before they are sent.
    let err = repo
        .put_manifest(&d1, &manifest, OCI_MANIFEST)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("have digest"), "{err}");
}

#[tokio::test]
async fn a_cut_upload_is_resumed() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let size = 300_000usize;
    let piece = 64u64 << 10;
    let bytes = data(size);
    let (path, digest) = blob_file(t.path(), "blob", &bytes);
    // The second PATCH is cut after its head, before any of its 64 KiB: the registry keeps
    // the first piece and the session. (Debian's CNCF registry 2.8 cannot resume a session
    // into which part of a piece went: see the next test.)
    let proxy = CutProxy::start(registry.port, Some((2, 0)));
    let repo = Repository::open(&format!("{}/kiln/resume", proxy.host()), &anonymous())
        .unwrap()
        .with_piece_size(piece)
        .with_retry(quick_retries());
    let sent = repo
        .put_blob(&digest, size as u64, &path, &[])
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1);
    let stats = repo.stats();
    assert_eq!(
        (stats.resumes, stats.restarts),
        (1, 0),
        "{stats:?}\n{}",
        registry.log()
    );
    // The cut piece went twice, nothing else did: a resume, not a restart.
    assert_eq!(
        sent,
        Sent::Uploaded {
            bytes: size as u64 + piece
        }
    );
    assert!(sent.bytes() < 2 * size as u64);
    assert_eq!(std::fs::read(registry.blob_file(&digest)).unwrap(), bytes);
    assert_eq!(
        repo.read_range(&digest, 200_000, 10).await.unwrap(),
        &bytes[200_000..200_010]
    );
    // The registry was asked where the upload stood, once.
    assert_eq!(
        registry.statuses("GET /v2/kiln/resume/blobs/uploads/"),
        vec![204]
    );
}

#[tokio::test]
async fn a_session_the_registry_drops_is_begun_again() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let size = 300_000usize;
    let bytes = data(size);
    let (path, digest) = blob_file(t.path(), "blob", &bytes);
    // Most of the second piece reaches the registry's storage before the cut: the CNCF
    // registry then refuses the session (its offset no longer matches), and kiln starts over.
    let proxy = CutProxy::start(registry.port, Some((2, 50_000)));
    let repo = Repository::open(&format!("{}/kiln/restart", proxy.host()), &anonymous())
        .unwrap()
        .with_piece_size(64 << 10)
        .with_retry(quick_retries());
    let sent = repo
        .put_blob(&digest, size as u64, &path, &[])
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1);
    let stats = repo.stats();
    assert_eq!((stats.resumes, stats.restarts), (0, 1), "{stats:?}");
    assert_eq!(
        registry.statuses("GET /v2/kiln/restart/blobs/uploads/"),
        vec![404]
    );
    assert_eq!(
        registry.statuses("POST /v2/kiln/restart/blobs/uploads/"),
        vec![202, 202]
    );
    assert!(sent.bytes() < 2 * size as u64, "{sent:?}");
    assert_eq!(std::fs::read(registry.blob_file(&digest)).unwrap(), bytes);
}

#[tokio::test]
async fn a_registry_down_for_a_moment_is_retried() {
    let registry = Registry::start();
    let proxy = CutProxy::start_down_for(registry.port, Duration::from_millis(1000));
    let repo = Repository::open(&format!("{}/kiln/later", proxy.host()), &anonymous()).unwrap();
    let started = Instant::now();
    // The default policy: 0.25 + 0.5 + 1 s of waiting covers the second of refusals.
    assert!(!repo.blob_exists(&sha256_bytes(b"x")).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(700));
    let retries = repo.stats().retries;
    assert!((2..=4).contains(&retries), "{retries}");
    assert!(proxy.connections() >= 1);
}

#[tokio::test]
async fn a_registry_that_stays_down_is_unreachable() {
    let port = free_port();
    let repo = Repository::open(&format!("127.0.0.1:{port}/kiln/never"), &anonymous())
        .unwrap()
        .with_retry(RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(50),
        });
    let started = Instant::now();
    let err = repo.blob_exists(&sha256_bytes(b"x")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert_eq!(repo.stats().retries, 2);
    assert!(started.elapsed() < Duration::from_secs(2));
    // A 404 is an answer, never retried.
    let registry = Registry::start();
    let repo = Repository::open(&format!("{}/kiln/x", registry.host()), &anonymous()).unwrap();
    assert_eq!(repo.get_manifest("nope").await.unwrap(), None);
    assert_eq!(repo.stats().retries, 0);
    assert_eq!(registry.requests("GET /v2/kiln/x/manifests/nope"), 1);
}
