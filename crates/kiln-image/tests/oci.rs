//! OCI image layouts: writing, tagging, reading back, errors, concurrent writers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use common::*;
use kiln_image::layer::{write_layer, Compression, LayerBlob};
use kiln_image::oci::{list_tags, read_image, write_image, HistoryEntry, ImageSettings, OciError};

fn layer(dir: &Path, name: &str, content: &[u8], out: &Path) -> LayerBlob {
    let upper = dir.join(format!("upper-{name}"));
    write(&upper.join(name), content, 0o644);
    write_layer(&upper, &[], EPOCH, Compression::Gzip, out).unwrap()
}

fn settings(history: &[&str]) -> ImageSettings {
    ImageSettings {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo hi".into()]),
        env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
        working_dir: Some("/srv".into()),
        user: Some("1000:1000".into()),
        labels: BTreeMap::from([
            ("org.opencontainers.image.version".into(), "1.0.0".into()),
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
        ]),
        exposed_ports: vec!["80/tcp".into(), "53/udp".into()],
        created: chrono::DateTime::from_timestamp(EPOCH, 0).unwrap(),
        history: history
            .iter()
            .map(|h| HistoryEntry {
                created_by: h.to_string(),
                comment: Some("kiln".into()),
                empty_layer: false,
            })
            .collect(),
        ..ImageSettings::default()
    }
}

#[test]
fn write_then_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    // Layers written straight into the layout's blob directory need no link or copy.
    let blobs = layout.join("blobs");
    let l1 = layer(t, "one", b"1", &blobs);
    let l2 = layer(t, "two", b"2", &t.join("elsewhere"));
    let s = settings(&["base", "component"]);
    let written = write_image(&layout, "1.0.0", &[l1.clone(), l2.clone()], &s).unwrap();

    assert_eq!(
        fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let l2_in_layout = blobs
        .join("sha256")
        .join(l2.digest.trim_start_matches("sha256:"));
    assert_eq!(
        fs::metadata(&l2_in_layout).unwrap().ino(),
        fs::metadata(&l2.path).unwrap().ino(),
        "same filesystem: hard-linked"
    );

    let image = read_image(&layout, Some("1.0.0")).unwrap();
    assert_eq!(image.tag.as_deref(), Some("1.0.0"));
    assert_eq!(image.manifest_digest, written.manifest_digest);
    assert_eq!(image.config_digest, written.config_digest);
    assert_eq!(image.layers.len(), 2);
    for (read, orig) in image.layers.iter().zip([&l1, &l2]) {
        assert_eq!(read.digest, orig.digest);
        assert_eq!(read.diff_id, orig.diff_id);
        assert_eq!(read.size, orig.size);
        assert_eq!(read.media_type, orig.media_type);
        assert!(read.path.starts_with(&layout));
    }
    let config = image.config.config().as_ref().unwrap();
    assert_eq!(
        config
            .labels()
            .as_ref()
            .unwrap()
            .get("a")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(config.env().as_ref().unwrap().len(), 2);
    assert_eq!(config.working_dir().as_deref(), Some("/srv"));
    assert_eq!(
        image.config.created().as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert_eq!(image.config.history().as_ref().unwrap().len(), 2);
    let manifest_file = layout
        .join("blobs/sha256")
        .join(written.manifest_digest.trim_start_matches("sha256:"));
    assert_eq!(
        fs::metadata(&manifest_file).unwrap().len(),
        written.manifest_size
    );

    // The config is canonical JSON: keys sorted at every level.
    let config_bytes = fs::read(
        layout
            .join("blobs/sha256")
            .join(written.config_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let text = String::from_utf8(config_bytes).unwrap();
    assert!(
        text.contains(r#""Labels":{"a":"1","b":"2","org.opencontainers.image.version":"1.0.0"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""ExposedPorts":{"53/udp":{},"80/tcp":{}}"#),
        "{text}"
    );

    // Only the image's files are in the layout (no temporary files left).
    let mut top: Vec<String> = fs::read_dir(&layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec![".kiln.lock", "blobs", "index.json", "oci-layout"]);
}

#[test]
fn same_image_same_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let l = layer(t, "one", b"1", &t.join("out"));
    let s = settings(&["base"]);
    let a = write_image(&t.join("a"), "x", std::slice::from_ref(&l), &s).unwrap();
    let b = write_image(&t.join("b"), "y", std::slice::from_ref(&l), &s).unwrap();
    let c = write_image(&t.join("a"), "x", std::slice::from_ref(&l), &s).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn tags_are_replaced_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let out = t.join("out");
    let one = layer(t, "one", b"1", &out);
    let two = layer(t, "two", b"2", &out);
    let first = write_image(
        &layout,
        "1.0.0",
        std::slice::from_ref(&one),
        &settings(&["a"]),
    )
    .unwrap();
    write_image(
        &layout,
        "2.0.0",
        std::slice::from_ref(&two),
        &settings(&["b"]),
    )
    .unwrap();
    assert_eq!(list_tags(&layout).unwrap(), vec!["1.0.0", "2.0.0"]);
    let replaced = write_image(&layout, "1.0.0", &[one, two], &settings(&["a", "b"])).unwrap();
    assert_ne!(first.manifest_digest, replaced.manifest_digest);
    assert_eq!(list_tags(&layout).unwrap(), vec!["1.0.0", "2.0.0"]);
    assert_eq!(read_image(&layout, Some("1.0.0")).unwrap().layers.len(), 2);
    assert_eq!(read_image(&layout, Some("2.0.0")).unwrap().layers.len(), 1);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
}

#[test]
fn errors_name_the_layout_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let out = t.join("out");
    let l = layer(t, "one", b"1", &out);
    for tag in ["1.0.0", "1.1.0"] {
        write_image(&layout, tag, std::slice::from_ref(&l), &settings(&["a"])).unwrap();
    }
    let err = read_image(&layout, Some("1.2.0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "oci:{}: no image tagged 1.2.0 (tags: 1.0.0, 1.1.0)",
            layout.display()
        )
    );
    let err = read_image(&layout, None).unwrap_err();
    assert!(matches!(err, OciError::Ambiguous { count: 2, .. }), "{err}");
    assert!(err.to_string().contains("tags: 1.0.0, 1.1.0"), "{err}");

    let only = t.join("only");
    write_image(&only, "solo", std::slice::from_ref(&l), &settings(&["a"])).unwrap();
    assert_eq!(
        read_image(&only, None).unwrap().tag.as_deref(),
        Some("solo")
    );

    let err = read_image(&t.join("nope"), None).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = list_tags(&out).unwrap_err();
    assert!(err.to_string().contains("not an OCI image layout"), "{err}");

    let err = write_image(&layout, "a:b", std::slice::from_ref(&l), &settings(&["a"])).unwrap_err();
    assert!(matches!(err, OciError::InvalidTag(_)), "{err}");
    let err = write_image(
        &layout,
        "x",
        std::slice::from_ref(&l),
        &settings(&["a", "b"]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("one history entry per layer"),
        "{err}"
    );
    let mut bad_env = settings(&["a"]);
    bad_env.env.push("NOVALUE".into());
    let err = write_image(&layout, "x", std::slice::from_ref(&l), &bad_env).unwrap_err();
    assert!(err.to_string().contains("NAME=value"), "{err}");

    // A directory with other things in it is not taken for a layout.
    let foreign = t.join("foreign");
    write(&foreign.join("notes.txt"), b"mine", 0o644);
    let err = write_image(&foreign, "x", std::slice::from_ref(&l), &settings(&["a"])).unwrap_err();
    assert!(
        err.to_string().contains("is not an OCI image layout"),
        "{err}"
    );
    assert!(!foreign.join("blobs").exists());

    // A missing layer blob is named.
    let image = read_image(&layout, Some("1.0.0")).unwrap();
    fs::remove_file(&image.layers[0].path).unwrap();
    let err = read_image(&layout, Some("1.0.0")).unwrap_err();
    assert!(err.to_string().contains("is missing"), "{err}");

    // A tampered manifest is caught by its digest.
    let image = read_image(&only, None).unwrap();
    let manifest = only
        .join("blobs/sha256")
        .join(image.manifest_digest.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&manifest).unwrap();
    bytes.push(b' ');
    fs::write(&manifest, bytes).unwrap();
    let err = read_image(&only, None).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
}

#[test]
fn blobs_on_another_filesystem_are_copied_and_checked() {
    // /dev/shm is a tmpfs: a hardlink from it into a layout on disk fails with EXDEV.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(shm.path(), "one", b"1", &shm.path().join("out"));
    let layout = tmp.path().join("layout");
    write_image(&layout, "1", std::slice::from_ref(&l), &settings(&["a"])).unwrap();
    let image = read_image(&layout, None).unwrap();
    assert_ne!(
        fs::metadata(&image.layers[0].path).unwrap().dev(),
        fs::metadata(&l.path).unwrap().dev()
    );
    assert_eq!(
        kiln_image::digest::sha256_file(&image.layers[0].path).unwrap(),
        l.digest
    );

    // A blob that changed after it was written is not copied in.
    let other = layer(shm.path(), "two", b"2", &shm.path().join("out"));
    let mut bytes = fs::read(&other.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&other.path, bytes).unwrap();
    let err = write_image(&layout, "2", &[other], &settings(&["b"])).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert_eq!(list_tags(&layout).unwrap(), vec!["1"]);
}

#[test]
fn concurrent_writers_keep_every_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_path_buf();
    let layout = t.join("layout");
    let out = t.join("out");
    let writers = 8;
    let layers: Vec<LayerBlob> = (0..writers)
        .map(|i| layer(&t, &format!("f{i}"), format!("{i}").as_bytes(), &out))
        .collect();
    let barrier = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let layout = layout.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Several rounds each, so index updates really interleave.
                for round in 0..5 {
                    let tag = format!("v{i}");
                    let s = ImageSettings {
                        labels: BTreeMap::from([("round".into(), round.to_string())]),
                        ..ImageSettings::default()
                    };
                    write_image(&layout, &tag, std::slice::from_ref(&l), &s).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut tags = list_tags(&layout).unwrap();
    tags.sort();
    let expected: Vec<String> = (0..writers).map(|i| format!("v{i}")).collect();
    assert_eq!(tags, expected);
    for tag in &expected {
        let image = read_image(&layout, Some(tag)).unwrap();
        let labels = image
            .config
            .config()
            .as_ref()
            .unwrap()
            .labels()
            .clone()
            .unwrap();
        assert_eq!(labels.get("round").map(String::as_str), Some("4"));
    }
}

#[test]
fn two_threads_two_tags() {
    // The orchestrator's case exactly: two builds finishing at once into one layout.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_path_buf();
    let layout = t.join("layout");
    let a = layer(&t, "a", b"a", &t.join("out-a"));
    let b = layer(&t, "b", b"b", &t.join("out-b"));
    let barrier = Arc::new(Barrier::new(2));
    let spawn = |tag: &'static str, l: LayerBlob| {
        let layout = layout.clone();
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            barrier.wait();
            write_image(&layout, tag, &[l], &ImageSettings::default()).unwrap()
        })
    };
    let ha = spawn("1.0.0", a);
    let hb = spawn("2.0.0", b);
    let (wa, wb) = (ha.join().unwrap(), hb.join().unwrap());
    assert_eq!(
        read_image(&layout, Some("1.0.0")).unwrap().manifest_digest,
        wa.manifest_digest
    );
    assert_eq!(
        read_image(&layout, Some("2.0.0")).unwrap().manifest_digest,
        wb.manifest_digest
    );
}
