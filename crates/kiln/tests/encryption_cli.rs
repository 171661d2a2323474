//! KMS encryption end to end: a real container build (a tiny rootfs parent, one component, in
//! a sandbox) with `kmsKeyId`, distributed to a real docker-registry. What skopeo copies from
//! it without the key is ciphertext that umoci refuses; with `kiln key decryption-key`'s PEM,
//! `skopeo copy --decryption-key` gives the plain image and its file. A second version sends
//! no layer again (the encryption is deterministic). An unknown or disabled key is refused
//! at the recipe's line before the build is numbered; another account cannot have the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

use kiln_testkit::registry::Registry;

fn rootfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    for d in ["etc", "tmp", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/os-release"), "ID=kiln-tiny\n").unwrap();
    let tar = dir.join("rootfs.tar");
    let o = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    tar
}

fn recipe(dir: &Path, name: &str, version: &str, parent: &Path, key: &str) -> std::path::PathBuf {
    write(
        dir,
        "secret.yaml",
        "name: secret\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-crypt\n            content: only with the key\n",
    );
    write(
        dir,
        &format!("{name}-{version}.yml"),
        &format!(
            "name: {name}\nsemanticVersion: {version}\nparentImage: rootfs:{}\ncomponents:\n  - path: secret.yaml\noutputs: [oci]\nimageTestsConfiguration:\n  imageTestsEnabled: false\nkmsKeyId: {key}\ndistributions:\n  - region: vault\n",
            parent.display()
        ),
    )
}

fn kiln_with(config: &Path, args: &[&str]) -> std::process::Output {
    let mut c = kiln_cmd(args);
    c.env("KILN_CONFIG", config);
    c.output().unwrap()
}

fn skopeo(args: &[&str]) -> std::process::Output {
    kiln_testkit::require_tool("skopeo");
    Command::new("skopeo").args(args).output().unwrap()
}

fn layer_types(layout: &Path) -> Vec<(String, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_encrypted_image_is_read_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "regions:\n  vault: {{registry: \"{}\", namespace: vault}}\n",
            registry.host()
        ),
    );
    let parent = rootfs(dir.path());
    let name = format!("crypt-{}", std::process::id());

    let o = kiln_with(
        &config,
        &["key", "create", "--description", "e2e", "-o", "json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arn = key["arn"].as_str().unwrap().to_string();

    // An unknown key and a disabled key are refused at the recipe's line, before numbering.
    let unknown = recipe(
        dir.path(),
        &name,
        "0.0.1",
        &parent,
        "00000000-0000-4000-8000-000000000000",
    );
    let o = kiln_with(&config, &["build", unknown.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}-0.0.1.yml:9:", name)) && err.contains("no KMS key"),
        "{err}"
    );
    assert!(
        !kiln_with(&config, &["image", "get", &format!("{name}/0.0.1/1")])
            .status
            .success()
    );
    assert!(kiln_with(&config, &["key", "disable", &arn])
        .status
        .success());
    let r1 = recipe(dir.path(), &name, "1.0.0", &parent, &arn);
    let o = kiln_with(&config, &["build", r1.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is disabled") && err.contains(&arn), "{err}");
    assert!(kiln_with(&config, &["key", "enable", &arn])
        .status
        .success());

    let o = kiln_with(&config, &["build", r1.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let reference = format!("docker://{}/vault/{name}:1.0.0", registry.host());

    // Without the key: the layers are +encrypted ciphertext, and umoci will not unpack them.
    let locked = dir.path().join("locked");
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:v", locked.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let layers = layer_types(&locked);
    assert!(!layers.is_empty());
    assert!(
        layers.iter().all(|(t, _)| t.ends_with("+encrypted")),
        "{layers:?}"
    );
    for (_, d) in &layers {
        let blob = locked
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        let listed = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
        assert!(!listed.status.success(), "a tar without the key");
    }
    let o = Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v", locked.display()),
            dir.path().join("b0").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("encrypted"), "{}", text(&o.stderr));

    // Another account may not have the key; the owner may, as a 0600 file.
    let o = kiln_with(
        &config,
        &["key", "decryption-key", &arn, "--account", "999999999999"],
    );
    assert!(
        !o.status.success() && text(&o.stderr).contains("may not use"),
        "{}",
        text(&o.stderr)
    );
    let pem = dir.path().join("key.pem");
    let o = kiln_with(
        &config,
        &[
            "key",
            "decryption-key",
            &arn,
            "--out",
            pem.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let open = dir.path().join("open");
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--decryption-key",
        pem.to_str().unwrap(),
        &reference,
        &format!("oci:{}:v", open.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(layer_types(&open)
        .iter()
        .all(|(t, _)| !t.ends_with("+encrypted")));
    let bundle = dir.path().join("bundle");
    let o = Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v", open.display()),
            bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/kiln-crypt")).unwrap(),
        "only with the key"
    );

    // A second version: the same layers, encrypted the same, are not sent again.
    let r2 = recipe(dir.path(), &name, "1.0.1", &parent, &arn);
    let lines_before = registry.log().lines().count();
    let o = kiln_with(&config, &["build", r2.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // The digests of the blobs the second build uploaded (each upload ends in a PUT naming it).
    let finished = format!("\"PUT /v2/vault/{name}/blobs/uploads/");
    let uploaded: Vec<String> = registry
        .log()
        .lines()
        .skip(lines_before)
        .filter(|l| l.contains(&finished))
        .filter_map(|l| {
            let (_, after) = l.split_once("digest=sha256")?;
            let hex = after.trim_start_matches("%3A").trim_start_matches(':');
            Some(format!("sha256:{}", hex.get(..64)?))
        })
        .collect();
    let second = dir.path().join("second");
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/vault/{name}:1.0.1", registry.host()),
        &format!("oci:{}:v", second.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(layer_types(&second), layers);
    // No layer: only the config (its created time and version differ) and what is new by
    // design in every version (its signature and supply-chain documents).
    assert!(
        !uploaded.is_empty(),
        "no upload was seen: the log parse is wrong"
    );
    for (_, digest) in &layers {
        assert!(
            !uploaded.contains(digest),
            "the second version uploaded layer {digest} again: {uploaded:?}"
        );
    }
}

/// A disk of 8 MiB of noise and 4 MiB of zeros.
fn noise_disk(path: &Path) {
    let mut bytes = Vec::with_capacity(12 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..(8 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    std::fs::write(path, bytes).unwrap();
}

/// `kiln disk pull` of an encrypted disk artifact (packed and distributed as a build's
/// distribution does, under a key made with `kiln key create`): the owner gets the disk, whose
/// digest is the artifact's; another account is refused and no file is made.
#[tokio::test]
async fn kiln_disk_pull_decrypts_for_the_key_s_accounts_only() {
    use kiln_dist::{
        chunked, pieces, Artifact, BuildId, Naming, OutputKind, Region, RegistryPlace, RemoteTarget,
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let config = write(dir.path(), "config.yaml", "{}\n");
    let o = kiln_with(
        &config,
        &["key", "create", "--description", "disks", "-o", "json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let arn = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["arn"]
        .as_str()
        .unwrap()
        .to_string();

    let store = kiln_kms::KeyStore::new(&home(), None);
    let key = store.open(&arn, "000000000000").unwrap();
    let (dk, wrapped) = kiln_kms::DataKeys::new(&home())
        .for_image(&key, "000000000000", "pulled")
        .unwrap();
    let raw = dir.path().join("disk.raw");
    noise_disk(&raw);
    let packs = dir.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let (c, _) = chunked::pack_keyed(&raw, None, &packs, Some((&dk, &wrapped))).unwrap();
    let region = Region {
        name: "eu".into(),
        targets: vec![std::sync::Arc::new(RemoteTarget::new(
            "eu",
            Box::new(RegistryPlace::new(
                &registry.host(),
                Some("golden"),
                Default::default(),
            )),
            vec![OutputKind::DiskChunks],
            Naming::default(),
        ))],
    };
    let artifact = Artifact {
        build: BuildId {
            name: "pulled".into(),
            version: "1.0.0".into(),
            build: 1,
        },
        image: None,
        disk: None,
        previous: None,
        scratch: dir.path().join("scratch"),
        pieces: vec![pieces::chunked_disk(&c, "pulled-1.0.0.raw")],
    };
    kiln_dist::distribute(&[region], &artifact, &|_: &str| {})
        .await
        .unwrap();

    let reference = format!("docker://{}/golden/pulled/disk:1.0.0", registry.host());
    let refused = dir.path().join("refused.raw");
    let o = kiln_with(
        &config,
        &[
            "disk",
            "pull",
            &reference,
            refused.to_str().unwrap(),
            "--account",
            "999999999999",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("may not use"),
        "{}",
        text(&o.stderr)
    );
    assert!(!refused.exists());

    let out = dir.path().join("out.raw");
    let o = kiln_with(
        &config,
        &["disk", "pull", &reference, out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), c.disk_digest);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap());
}
