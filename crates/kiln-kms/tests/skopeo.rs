//! The real reader: an OCI layout whose layer kiln-kms encrypted is copied by skopeo. Without
//! the key the layer stays ciphertext (tar cannot read it, umoci refuses it); with `skopeo copy
//! --decryption-key` the plain layer comes back and its file is there.
// The helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use kiln_kms::KeyStore;
use serde_json::json;

fn sha(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

fn blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.trim_start_matches("sha256:")), bytes).unwrap();
    d
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{:?}: {}\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn skopeo_decrypts_what_kiln_encrypts_and_nothing_reads_it_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(&dir.path().join("home"), None);
    let info = store.create("000000000000", "test").unwrap();
    let key = store.open(&info.arn.to_string(), "000000000000").unwrap();

    // A layer: a tar of one file.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/kiln-secret"), "made by kiln\n").unwrap();
    let tar = dir.path().join("layer.tar");
    assert!(run(Command::new("tar")
        .arg("--format=pax")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("etc"))
    .status
    .success());
    let plain = std::fs::read(&tar).unwrap();
    let plain_digest = sha(&plain);

    let src = dir.path().join("src");
    let mut enc = Vec::new();
    let layer = key
        .encrypt_layer(
            &plain_digest,
            "application/vnd.oci.image.layer.v1.tar",
            &mut plain.as_slice(),
            &mut enc,
        )
        .unwrap();
    assert_eq!(blob(&src, &enc), layer.digest);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [plain_digest]},
        "config": {}
    }))
    .unwrap();
    let config_digest = blob(&src, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size, "annotations": layer.annotations}]
    }))
    .unwrap();
    let manifest_digest = blob(&src, &manifest);
    std::fs::write(src.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        src.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
        .unwrap(),
    )
    .unwrap();

    // Without the key: the copy keeps the ciphertext, which is no tar, and umoci refuses it.
    let locked = dir.path().join("locked");
    assert!(run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("oci:{}:v1", locked.display())))
    .status
    .success());
    let copied = locked
        .join("blobs/sha256")
        .join(layer.digest.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&copied).unwrap(), enc);
    assert!(!run(Command::new("tar").arg("-tf").arg(&copied))
        .status
        .success());
    assert!(!run(Command::new("umoci")
        .arg("unpack")
        .arg("--rootless")
        .arg("--image")
        .arg(format!("{}:v1", locked.display()))
        .arg(dir.path().join("bundle-locked")))
    .status
    .success());
    // And a wrong key does not decrypt it.
    let other = store.create("000000000000", "other").unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(
        &other_pem,
        store
            .open(&other.arn.key_id, "000000000000")
            .unwrap()
            .decryption_key_pem()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert!(!run(Command::new("skopeo")
        .arg("copy")
        .arg("--decryption-key")
        .arg(&other_pem)
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("oci:{}:v1", dir.path().join("wrong").display())))
    .status
    .success());

    // With the key: the plain layer, and its file.
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, key.decryption_key_pem().unwrap().as_bytes()).unwrap();
    let open = dir.path().join("open");
    let out = run(Command::new("skopeo")
        .arg("copy")
        .arg("--decryption-key")
        .arg(&pem)
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("oci:{}:v1", open.display())));
    assert!(out.status.success());
    let bundle = dir.path().join("bundle");
    assert!(run(Command::new("umoci")
        .arg("unpack")
        .arg("--rootless")
        .arg("--image")
        .arg(format!("{}:v1", open.display()))
        .arg(&bundle))
    .status
    .success());
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/kiln-secret")).unwrap(),
        "made by kiln\n"
    );
}
