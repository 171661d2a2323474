//! End to end with the real tools: images kiln writes are read by skopeo and unpacked by
//! umoci, and extracted layers stack under a real overlay mount. Needs root, skopeo and umoci
//! (`scripts/setup --test` installs them); a missing tool fails the test, it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_image::layer::{extract_layer, write_layer, Compression, LayerBlob};
use kiln_image::oci::{write_image, HistoryEntry, ImageSettings};

/// Two layers: a base, then a component that deletes a file, replaces a directory's content
/// (opaque) and adds a file.
fn two_layers(t: &Path, compression: Compression) -> (LayerBlob, LayerBlob) {
    let base = t.join("upper1");
    write(&base.join("etc/hostname"), b"kiln\n", 0o644);
    write(&base.join("etc/motd"), b"hello\n", 0o644);
    write(&base.join("var/lib/app/gone.txt"), b"delete me", 0o644);
    write(&base.join("opt/data/old-a"), b"a", 0o644);
    write(&base.join("opt/data/old-b"), b"b", 0o644);
    write(
        &base.join("usr/bin/tool"),
        b"#!/bin/sh\necho tool\n",
        0o4755,
    );
    write(&base.join("usr/bin/ping"), b"fake ping", 0o755);
    xattr::set(
        base.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
    )
    .unwrap();
    std::os::unix::fs::symlink("tool", base.join("usr/bin/tool-link")).unwrap();
    fs::hard_link(base.join("etc/motd"), base.join("etc/motd.hard")).unwrap();
    write(
        &base.join("etc/resolv.conf"),
        b"nameserver 192.0.2.1\n",
        0o644,
    );
    // What ustar cannot hold goes into PAX records; Go's reader must agree.
    write(&base.join(long_path()), b"deep", 0o644);
    std::os::unix::fs::symlink(long_path(), base.join("long-link")).unwrap();
    write(&base.join("big-uid"), b"u", 0o644);
    std::os::unix::fs::chown(base.join("big-uid"), Some(3_000_000), Some(3_000_001)).unwrap();

    let comp = t.join("upper2");
    mkdir(&comp, 0o755);
    mkdir(&comp.join("var/lib/app"), 0o755);
    whiteout(&comp.join("var/lib/app/gone.txt"));
    mkdir(&comp.join("opt/data"), 0o755);
    set_opaque(&comp.join("opt/data"));
    write(&comp.join("opt/data/new"), b"new", 0o644);
    write(&comp.join("etc/added"), b"added\n", 0o644);

    let out = t.join("blobs-out");
    let exclude = vec![PathBuf::from("etc/resolv.conf")];
    let l1 = write_layer(&base, &exclude, EPOCH, compression, &out).unwrap();
    let l2 = write_layer(&comp, &exclude, EPOCH, compression, &out).unwrap();
    (l1, l2)
}

/// A path longer than ustar's 255 bytes, in components a filesystem accepts.
fn long_path() -> String {
    let dirs: Vec<String> = (0..6).map(|i| format!("{i}{}", "d".repeat(60))).collect();
    format!("{}/file", dirs.join("/"))
}

fn image_settings() -> ImageSettings {
    ImageSettings {
        cmd: Some(vec!["/bin/sh".into()]),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        labels: BTreeMap::from([
            ("org.opencontainers.image.title".into(), "kiln-test".into()),
            ("kiln.recipe".into(), "demo/1.0.0".into()),
        ]),
        exposed_ports: vec!["8080/tcp".into()],
        created: chrono::DateTime::from_timestamp(EPOCH, 0).unwrap(),
        history: vec![
            HistoryEntry {
                created_by: "kiln: base".into(),
                comment: None,
                empty_layer: false,
            },
            HistoryEntry {
                created_by: "kiln: component demo 1.0.0".into(),
                comment: Some("build phase".into()),
                empty_layer: false,
            },
        ],
        ..ImageSettings::default()
    }
}

fn skopeo_inspect(layout: &Path, tag: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{tag}", layout.display())));
    serde_json::from_str(&out).unwrap()
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> std::process::Output {
    Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .unwrap()
}

#[test]
fn skopeo_and_umoci_read_kiln_images() {
    require_tool("skopeo");
    require_tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (l1, l2) = two_layers(t, Compression::Gzip);
    let layout = t.join("layout");
    let written = write_image(
        &layout,
        "1.0.0",
        &[l1.clone(), l2.clone()],
        &image_settings(),
    )
    .unwrap();

    let info = skopeo_inspect(&layout, "1.0.0");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(layers, vec![l1.digest.as_str(), l2.digest.as_str()]);
    assert_eq!(
        info["Labels"]["org.opencontainers.image.title"],
        "kiln-test"
    );
    assert_eq!(info["Labels"]["kiln.recipe"], "demo/1.0.0");
    assert_eq!(info["Digest"], written.manifest_digest.as_str());
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");

    let bundle = t.join("bundle");
    let out = umoci_unpack(&layout, "1.0.0", &bundle);
    assert!(
        out.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"kiln\n");
    assert_eq!(fs::read(rootfs.join("etc/added")).unwrap(), b"added\n");
    assert!(!rootfs.join("etc/resolv.conf").exists(), "excluded");
    // Layer 2's whiteout deleted layer 1's file; its opaque directory hid layer 1's content.
    assert!(rootfs.join("var/lib/app").is_dir());
    assert!(!rootfs.join("var/lib/app/gone.txt").exists());
    assert!(!rootfs.join("var/lib/app/.wh.gone.txt").exists());
    assert!(rootfs.join("opt/data/new").exists());
    assert!(!rootfs.join("opt/data/old-a").exists());
    assert!(!rootfs.join("opt/data/.wh..wh..opq").exists());
    let tool = fs::metadata(rootfs.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), EPOCH);
    assert_eq!(
        fs::read_link(rootfs.join("usr/bin/tool-link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::metadata(rootfs.join("etc/motd")).unwrap().ino(),
        fs::metadata(rootfs.join("etc/motd.hard")).unwrap().ino()
    );
    assert_eq!(
        xattr_of(&rootfs.join("usr/bin/ping"), "security.capability").as_deref(),
        Some(&CAP_NET_RAW[..])
    );
    assert_eq!(fs::read(rootfs.join(long_path())).unwrap(), b"deep");
    assert_eq!(
        fs::read_link(rootfs.join("long-link")).unwrap(),
        Path::new(&long_path())
    );
    let big = fs::metadata(rootfs.join("big-uid")).unwrap();
    assert_eq!((big.uid(), big.gid()), (3_000_000, 3_000_001));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"][0], "/bin/sh");
}

#[test]
fn zstd_layers_with_the_debian_tools() {
    // skopeo 1.9 reads zstd layers; umoci 0.4.7 refuses them ("blob is not correct
    // mediatype"), so images for umoci must use gzip. Pinned here so that a tool upgrade that
    // changes it is noticed (then update `Compression::Zstd`'s documentation too).
    require_tool("skopeo");
    require_tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (l1, l2) = two_layers(t, Compression::Zstd);
    let layout = t.join("layout");
    write_image(&layout, "z", &[l1, l2], &image_settings()).unwrap();
    assert_eq!(
        skopeo_inspect(&layout, "z")["Layers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = umoci_unpack(&layout, "z", &t.join("bundle"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("mediatype"),
        "umoci's zstd support changed ({}): {stderr}",
        out.status
    );

    // skopeo decodes every zstd byte when it recompresses to gzip, and umoci unpacks that.
    let gz = t.join("layout-gz");
    run(Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--dest-compress-format",
            "gzip",
            "--dest-compress",
        ])
        .arg(format!("oci:{}:z", layout.display()))
        .arg(format!("oci:{}:z", gz.display())));
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:z", gz.display())));
    assert!(
        raw.contains("tar+gzip") && !raw.contains("tar+zstd"),
        "{raw}"
    );
    let bundle = t.join("bundle-gz");
    let out = umoci_unpack(&gz, "z", &bundle);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bundle.join("rootfs/etc/added").exists());
    assert!(!bundle.join("rootfs/var/lib/app/gone.txt").exists());
}

/// Extracted layers stack under a real overlay mount.
#[test]
fn extracted_layers_stack_as_overlay_lower_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (l1, l2) = two_layers(t, Compression::Zstd);
    let lower1 = t.join("lower1");
    let lower2 = t.join("lower2");
    extract_layer(&l1.path, &lower1).unwrap();
    extract_layer(&l2.path, &lower2).unwrap();
    let gone = fs::symlink_metadata(lower2.join("var/lib/app/gone.txt")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);

    let merged = t.join("merged");
    fs::create_dir(&merged).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={}:{}",
            lower2.display(),
            lower1.display()
        ))
        .arg(&merged));
    let _guard = Mounted(merged.clone());

    assert_eq!(fs::read(merged.join("etc/hostname")).unwrap(), b"kiln\n");
    assert_eq!(fs::read(merged.join("etc/added")).unwrap(), b"added\n");
    assert!(!merged.join("var/lib/app/gone.txt").exists());
    assert!(merged.join("var/lib/app").is_dir());
    let mut data: Vec<String> = fs::read_dir(merged.join("opt/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    data.sort();
    assert_eq!(
        data,
        vec!["new"],
        "the opaque directory hides the lower content"
    );
    assert_eq!(
        fs::metadata(merged.join("usr/bin/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        xattr_of(&merged.join("usr/bin/ping"), "security.capability").as_deref(),
        Some(&CAP_NET_RAW[..])
    );
    assert_eq!(fs::read(merged.join(long_path())).unwrap(), b"deep");
    assert_eq!(
        fs::metadata(merged.join("big-uid")).unwrap().uid(),
        3_000_000
    );
}
