//! Registry and bucket regions against real servers: Debian's `docker-registry` (CNCF
//! distribution) on loopback ports and moto's S3 server, started per test and killed at its
//! end; what they hold is checked with skopeo and by pulling disks back. `scripts/setup --test`
//! installs them; a missing one fails the test, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kiln/tests/common/moto.rs"]
mod moto;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use kiln_dist::chunked::{self, ChunkedDisk};
use kiln_dist::pieces::{self, Piece};
use kiln_dist::{
    distribute, take_back, Artifact, BucketPlace, BuildId, Naming, OutputKind, Place, Region,
    RegistryAccess, RegistryPlace, RemoteTarget,
};
use kiln_image::registry::{manifest_digest, RegistryOptions};
use kiln_testkit::registry::{free_port, Registry};
use kiln_testkit::require_tool as require;

mod common;
use common::{artifact, disk};

fn registry_region(name: &str, host: &str, ns: &str, kinds: Vec<OutputKind>) -> Region {
    Region {
        name: name.into(),
        targets: vec![Arc::new(RemoteTarget::new(
            name,
            Box::new(RegistryPlace::new(
                host,
                Some(ns),
                RegistryOptions::default(),
            )),
            kinds,
            Naming::default(),
        ))],
    }
}

fn region(registry: &Registry) -> Region {
    registry_region(
        "eu",
        &registry.host(),
        "golden",
        vec![OutputKind::OciRegistry],
    )
}

async fn digest(registry: &Registry, repo: &str, tag: &str) -> Option<String> {
    manifest_digest(
        &format!("{}/{repo}:{tag}", registry.host()),
        &RegistryOptions::default(),
    )
    .await
    .unwrap()
}

fn skopeo(args: &[&str]) -> String {
    require("skopeo");
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn skopeo_digest(registry: &Registry, tag: &str) -> String {
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/golden/web:{tag}", registry.host()),
    ])
}

fn quiet(_: &str) {}

#[tokio::test]
async fn a_registry_region_is_staged_promoted_and_taken_back() {
    let registry = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let regions = [region(&registry)];

    let one = artifact(d.path(), 1, "one");
    let out = distribute(&regions, &one, &quiet).await.unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].kind, OutputKind::OciRegistry);
    assert_eq!(out[0].tags, vec!["1.0.0-1", "1.0.0"]);
    assert_eq!(
        out[0].reference(),
        format!("docker://{}/golden/web:1.0.0", registry.host())
    );
    assert!(out[0].sent.unwrap() > 0);
    let d1 = digest(&registry, "golden/web", "1.0.0-1").await.unwrap();
    assert_eq!(out[0].manifest_digest, d1);
    assert_eq!(
        digest(&registry, "golden/web", "1.0.0").await.as_deref(),
        Some(d1.as_str())
    );
    assert_eq!(skopeo_digest(&registry, "1.0.0"), d1, "skopeo reads it");

    // Build 2 moves the version's tag.
    let two = artifact(d.path(), 2, "two");
    distribute(&regions, &two, &quiet).await.unwrap();
    let d2 = digest(&registry, "golden/web", "1.0.0-2").await.unwrap();
    assert_ne!(d1, d2);
    assert_eq!(
        digest(&registry, "golden/web", "1.0.0").await.as_deref(),
        Some(d2.as_str())
    );

    // Build 2's kiln died while distributing: its record's plan takes it back.
    let planned = kiln_dist::plan(&regions, &two);
    let undone = take_back(&planned, &two.build, Some(1), &RegistryAccess::default()).await;
    assert_eq!(undone.len(), 2, "{undone:?}");
    assert!(
        undone[0].contains("golden/web:1.0.0 (now build 1)"),
        "{undone:?}"
    );
    assert_eq!(digest(&registry, "golden/web", "1.0.0-2").await, None);
    assert_eq!(skopeo_digest(&registry, "1.0.0"), d1);
    assert_eq!(
        digest(&registry, "golden/web", "1.0.0-1").await.as_deref(),
        Some(d1.as_str())
    );
}

#[tokio::test]
async fn an_unreachable_region_stops_everything_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("local");
    // Nothing listens on this port: the check fails before the layout region is written.
    let down = registry_region(
        "down",
        &format!("127.0.0.1:{}", free_port()),
        "golden",
        vec![OutputKind::OciRegistry],
    );
    let e = distribute(
        &[Region::local("local", layout.clone()), down],
        &artifact(d.path(), 1, "one"),
        &quiet,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().starts_with("region down: "), "{e}");
    assert!(kiln_image::list_tags(&layout)
        .unwrap_or_default()
        .is_empty());
}

fn disk_piece(
    dir: &Path,
    version: &str,
    change: &[u8],
    known: Option<&kiln_chunk::ChunkIndex>,
) -> (Piece, ChunkedDisk, kiln_chunk::ChunkIndex, PathBuf) {
    let raw = dir.join(format!("disk-{version}.raw"));
    disk(&raw, change);
    let packs = dir.join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let (chunked, index) = chunked::pack(&raw, known, &packs).unwrap();
    let piece = pieces::chunked_disk(&chunked, &format!("web-{version}.raw"));
    (piece, chunked, index, raw)
}

fn disk_artifact(d: &Path, version: &str, piece: Piece) -> Artifact {
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

/// Three regions in one registry (the second and third mount from the first), one in a
/// registry that wants a password, one in a bucket: each takes disks as chunks.
fn disk_regions(
    host: String,
    auth_host: String,
    opts: RegistryOptions,
    client: kiln_s3::S3Client,
) -> Vec<Region> {
    let kinds = vec![OutputKind::DiskChunks];
    let mut regions: Vec<Region> = ["east", "west", "north"]
        .iter()
        .map(|ns| {
            let others: Vec<String> = ["east", "west", "north"]
                .iter()
                .filter(|o| *o != ns)
                .map(|o| o.to_string())
                .collect();
            Region {
                name: ns.to_string(),
                targets: vec![Arc::new(
                    RemoteTarget::new(
                        ns,
                        Box::new(RegistryPlace::new(
                            &host,
                            Some(ns),
                            RegistryOptions::default(),
                        )),
                        kinds.clone(),
                        Naming::default(),
                    )
                    .with_siblings(others),
                )],
            }
        })
        .collect();
    regions.push(Region {
        name: "secure".into(),
        targets: vec![Arc::new(RemoteTarget::new(
            "secure",
            Box::new(RegistryPlace::new(&auth_host, Some("golden"), opts)),
            kinds.clone(),
            Naming::default(),
        ))],
    });
    regions.push(Region {
        name: "archive".into(),
        targets: vec![Arc::new(RemoteTarget::new(
            "archive",
            Box::new(BucketPlace::new(client, "images", "prod")),
            kinds.clone(),
            Naming {
                disk_tags: vec!["web-nightly".into()],
                ..Naming::default()
            },
        ))],
    });
    regions
}

#[tokio::test]
async fn disks_go_as_chunks_mounted_within_a_registry_and_pulled_back_bit_for_bit() {
    let one = Registry::start();
    let auth = Registry::start_with(Some(("kiln", "s3cret")));
    let s3 = moto::Moto::start();
    s3.create_bucket("images");
    let d = tempfile::tempdir().unwrap();
    let opts = RegistryOptions {
        auth: Some(kiln_image::registry::RegistryAuth {
            username: "kiln".into(),
            password: "s3cret".into(),
        }),
        insecure_http: false,
    };
    let client = kiln_s3::S3Client::new(s3.config());
    let regions = |()| disk_regions(one.host(), auth.host(), opts.clone(), client.clone());
    let (p1, c1, i1, raw1) = disk_piece(d.path(), "1.0.0", b"", None);
    let out1 = distribute(&regions(()), &disk_artifact(d.path(), "1.0.0", p1), &quiet)
        .await
        .unwrap();
    let sent = |out: &[kiln_dist::Output], region: &str| {
        out.iter()
            .find(|o| o.region == region)
            .unwrap()
            .sent
            .unwrap()
    };
    let first = sent(&out1, "east");
    let whole: u64 = c1.packs.iter().map(|p| p.size).sum();
    assert!(first >= whole, "{first} < {whole}");
    // The other regions of the same registry got the packs by mount: index and manifest only.
    for r in ["west", "north"] {
        assert!(
            sent(&out1, r) < first / 20,
            "{r}: {} of {first}",
            sent(&out1, r)
        );
    }
    let archive = out1.iter().find(|o| o.region == "archive").unwrap();
    assert!(
        archive
            .reference()
            .starts_with("s3://images/prod/web/disk:"),
        "{archive:?}"
    );
    assert!(archive.tags.contains(&"web-nightly".to_string()));

    // skopeo reads the artifact as the registry serves it.
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/east/web/disk:1.0.0", one.host()),
    ]);
    assert!(raw.contains(kiln_chunk::ARTIFACT_TYPE), "{raw}");

    // Pulled back bit for bit, from a registry and from the bucket.
    let place = RegistryPlace::new(&one.host(), Some("west"), RegistryOptions::default());
    let west = place.repo("web/disk").unwrap();
    let pulled = d.path().join("pulled.raw");
    let p = chunked::pull(west.as_ref(), "1.0.0", &pulled, None)
        .await
        .unwrap();
    assert_eq!(p.digest, c1.disk_digest);
    assert_eq!(sha256(&pulled), sha256(&raw1));
    let bucket = BucketPlace::new(client.clone(), "images", "prod");
    let from_s3 = d.path().join("from-s3.raw");
    let archive_repo = bucket.repo("web/disk").unwrap();
    chunked::pull(archive_repo.as_ref(), "web-nightly", &from_s3, None)
        .await
        .unwrap();
    assert_eq!(sha256(&from_s3), sha256(&raw1));

    // A small change: a small pack, in every region.
    let change = vec![7u8; 20_000];
    let (p2, c2, _, raw2) = disk_piece(d.path(), "1.0.1", &change, Some(&i1));
    assert!(c2.new_chunks <= 3, "{} new chunks", c2.new_chunks);
    let out2 = distribute(&regions(()), &disk_artifact(d.path(), "1.0.1", p2), &quiet)
        .await
        .unwrap();
    for r in ["east", "secure", "archive"] {
        assert!(
            sent(&out2, r) * 20 < first,
            "{r}: {} of {first}",
            sent(&out2, r)
        );
    }
    // Pulling 1.0.1 over 1.0.0 fetches about the change.
    let p = chunked::pull(west.as_ref(), "1.0.1", &pulled, Some(&pulled))
        .await
        .unwrap();
    assert_eq!(sha256(&pulled), sha256(&raw2));
    assert!(p.fetched < first / 20, "fetched {} of {first}", p.fetched);
    let secure = RegistryPlace::new(&auth.host(), Some("golden"), opts.clone())
        .repo("web/disk")
        .unwrap();
    let fresh = d.path().join("fresh.raw");
    chunked::pull(secure.as_ref(), "1.0.1", &fresh, None)
        .await
        .unwrap();
    assert_eq!(sha256(&fresh), sha256(&raw2));
}

#[tokio::test]
async fn a_registry_killed_mid_push_leaves_no_new_tag_in_any_region() {
    let first = Registry::start();
    let second = Arc::new(Mutex::new(Registry::start()));
    let host2 = second.lock().unwrap().host();
    let d = tempfile::tempdir().unwrap();
    let regions = [
        registry_region("a", &first.host(), "golden", vec![OutputKind::OciRegistry]),
        registry_region("b", &host2, "golden", vec![OutputKind::OciRegistry]),
    ];
    distribute(&regions, &artifact(d.path(), 1, "one"), &quiet)
        .await
        .unwrap();
    let d1 = digest(&first, "golden/web", "1.0.0").await.unwrap();

    // Region b's registry dies once region a has its content (and before b gets any).
    let killer = second.clone();
    let progress = move |line: &str| {
        if line.starts_with("region a: ") && line.contains("sent") {
            killer.lock().unwrap().kill();
        }
    };
    let two = artifact(d.path(), 2, "two");
    let e = distribute(&regions, &two, &progress).await.unwrap_err();
    assert!(e.to_string().starts_with("region b: "), "{e}");
    assert!(e.to_string().contains("taken back: a: docker://"), "{e}");
    // Nothing of build 2 in region a: no tag, and its manifest deleted.
    assert_eq!(digest(&first, "golden/web", "1.0.0-2").await, None);
    assert_eq!(
        digest(&first, "golden/web", "1.0.0").await.as_deref(),
        Some(d1.as_str())
    );
    let staged = manifest_digest(
        &format!("{}/golden/web@{}", first.host(), two.pieces[0].digest),
        &RegistryOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(staged, None, "the staged manifest was not deleted");
    // Region b, back up, still serves build 1 only.
    second.lock().unwrap().restart();
    let tag_in_b = |tag: &'static str| {
        let host = host2.clone();
        async move {
            manifest_digest(
                &format!("{host}/golden/web:{tag}"),
                &RegistryOptions::default(),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(tag_in_b("1.0.0-2").await, None);
    assert_eq!(tag_in_b("1.0.0").await.as_deref(), Some(d1.as_str()));
}
