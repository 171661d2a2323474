//! Registry regions against a real registry: Debian's `docker-registry` (CNCF distribution) on
//! a loopback port, started per test and killed at its end; what it holds is checked with
//! skopeo. `scripts/setup --test` installs both; a missing one fails the test, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use kiln_dist::{
    distribute, take_back, Artifact, BuildId, DiskFile, DiskImage, OciImage, OutputKind, Region,
    RegistryAccess, RegistryTarget,
};
use kiln_image::registry::{manifest_digest, RegistryOptions};
use kiln_image::{Compression, ImageSettings};
use kiln_testkit::registry::{free_port, Registry};
use kiln_testkit::require_tool as require;

/// An image with one layer holding `content`.
fn artifact(scratch: &Path, build: u32, content: &str) -> Artifact {
    let tree = scratch.join(format!("tree-{build}"));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), content).unwrap();
    let blob =
        kiln_image::write_layer(&tree, &[], 0, Compression::Gzip, &scratch.join("blobs")).unwrap();
    Artifact {
        build: BuildId {
            name: "web".into(),
            version: "1.0.0".into(),
            build,
        },
        image: Some(OciImage {
            blobs: vec![blob],
            settings: ImageSettings::default(),
        }),
        disk: None,
        previous: None,
        scratch: scratch.join(format!("scratch-{build}")),
    }
}

fn region(registry: &Registry) -> Region {
    Region {
        name: "eu".into(),
        targets: vec![Arc::new(RegistryTarget::new(
            "eu",
            &registry.host(),
            Some("golden"),
            RegistryOptions::default(),
        ))],
    }
}

async fn digest(registry: &Registry, tag: &str) -> Option<String> {
    manifest_digest(
        &format!("{}/golden/web:{tag}", registry.host()),
        &RegistryOptions::default(),
    )
    .await
    .unwrap()
}

fn skopeo_digest(registry: &Registry, tag: &str) -> String {
    require("skopeo");
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{}/golden/web:{tag}", registry.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn quiet(_: &str) {}

#[tokio::test]
async fn a_registry_region_is_staged_promoted_and_taken_back() {
    let registry = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let regions = [region(&registry)];

    let one = artifact(d.path(), 1, "one");
    let out = distribute(&regions, &one, &quiet).await.unwrap();
    assert_eq!(
        out.iter()
            .map(|o| (o.kind, o.tag.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (OutputKind::OciRegistry, "1.0.0-1"),
            (OutputKind::OciRegistry, "1.0.0")
        ]
    );
    assert_eq!(out[0].location, format!("{}/golden/web", registry.host()));
    let d1 = digest(&registry, "1.0.0-1").await.unwrap();
    assert_eq!(out[0].manifest_digest, d1);
    assert_eq!(
        digest(&registry, "1.0.0").await.as_deref(),
        Some(d1.as_str())
    );
    assert_eq!(
        skopeo_digest(&registry, "1.0.0"),
        d1,
        "skopeo reads what kiln pushed"
    );

    // Build 2 moves the version's tag.
    let mut two = artifact(d.path(), 2, "two");
    two.previous = Some(1);
    distribute(&regions, &two, &quiet).await.unwrap();
    let d2 = digest(&registry, "1.0.0-2").await.unwrap();
    assert_ne!(d1, d2);
    assert_eq!(
        digest(&registry, "1.0.0").await.as_deref(),
        Some(d2.as_str())
    );

    // Build 2's kiln died while distributing: its record's plan takes it back.
    let planned = kiln_dist::plan(&regions, &two);
    let undone = take_back(&planned, &two.build, Some(1), &RegistryAccess::default()).await;
    assert_eq!(
        undone,
        vec![format!("eu: {}/golden/web:1.0.0-2", registry.host())]
    );
    assert_eq!(digest(&registry, "1.0.0-2").await, None);
    assert_eq!(
        digest(&registry, "1.0.0").await.as_deref(),
        Some(d1.as_str())
    );
    assert_eq!(skopeo_digest(&registry, "1.0.0"), d1);
    assert_eq!(
        digest(&registry, "1.0.0-1").await.as_deref(),
        Some(d1.as_str())
    );
}

#[tokio::test]
async fn a_registry_region_refuses_disks_and_an_unreachable_one_stops_everything() {
    let registry = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("local");
    let mut with_disk = artifact(d.path(), 1, "one");
    with_disk.disk = Some(DiskImage {
        files: vec![DiskFile {
            format: kiln_image::disk::DiskFormat::Qcow2,
            path: d.path().join("disk.qcow2"),
            digest: "sha256:00".into(),
            size: 0,
        }],
    });
    let e = distribute(
        &[Region::local("local", layout.clone()), region(&registry)],
        &with_disk,
        &quiet,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("container images only"), "{e}");
    assert_eq!(digest(&registry, "1.0.0-1").await, None);
    assert!(kiln_image::list_tags(&layout)
        .unwrap_or_default()
        .is_empty());

    // Nothing listens on this port: the check fails before the layout region is written.
    let down = Region {
        name: "down".into(),
        targets: vec![Arc::new(RegistryTarget::new(
            "down",
            &format!("127.0.0.1:{}", free_port()),
            None,
            RegistryOptions::default(),
        ))],
    };
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
