//! Pull, push and tag calls against a real registry: Debian's `docker-registry` (the CNCF
//! distribution server) on a loopback port, started per test and killed at its end, pass or
//! fail. Images are checked with skopeo. `scripts/setup --test` installs both; a missing one
//! fails the test, it never skips. The token-auth test also signs tokens with the `openssl`
//! command (there through ca-certificates, which depends on it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kiln_image::digest::sha256_file;
use kiln_image::layer::{write_layer, Compression, LayerBlob};
use kiln_image::oci::{read_image, write_image, ImageSettings, WrittenImage};
use kiln_image::registry::{
    delete_manifest, manifest_digest, pull, push, retag, Deleted, RegistryAuth, RegistryError,
    RegistryOptions,
};
use kiln_testkit::registry::{free_port, Registry};

/// Two gzip layers and a config, written into `layout` under `tag`; `variant` changes the
/// second layer so images can share the first.
fn build_image(
    t: &Path,
    layout: &Path,
    tag: &str,
    variant: &str,
) -> (WrittenImage, Vec<LayerBlob>) {
    let base = t.join(format!("upper-base-{variant}"));
    write(&base.join("etc/hostname"), b"kiln\n", 0o644);
    write(&base.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write(&base.join("usr/lib/big"), &vec![42u8; 300_000], 0o644);
    let comp = t.join(format!("upper-comp-{variant}"));
    write(
        &comp.join("etc/app.conf"),
        format!("variant={variant}\n").as_bytes(),
        0o644,
    );
    let blobs = layout.join("blobs");
    let l1 = write_layer(&base, &[], EPOCH, Compression::Gzip, &blobs).unwrap();
    let l2 = write_layer(&comp, &[], EPOCH, Compression::Gzip, &blobs).unwrap();
    let settings = ImageSettings {
        cmd: Some(vec!["/usr/bin/tool".into()]),
        env: vec!["PATH=/usr/bin:/bin".into()],
        created: chrono::DateTime::from_timestamp(EPOCH, 0).unwrap(),
        ..ImageSettings::default()
    };
    let layers = vec![l1, l2];
    let written = write_image(layout, tag, &layers, &settings).unwrap();
    (written, layers)
}

fn anonymous() -> RegistryOptions {
    RegistryOptions::default()
}

fn skopeo_inspect_oci(layout: &Path, tag: &str) -> serde_json::Value {
    require_tool("skopeo");
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{tag}", layout.display())));
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn push_then_pull_gives_the_same_image() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, layers) = build_image(t.path(), &source, "1.0", "a");
    let reference = format!("{}/kiln/base:1.0", registry.host());

    let pushed = push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap();
    assert_eq!(pushed, written.manifest_digest);

    let dest = t.path().join("dest");
    let image = pull(&reference, &dest, "pulled", &anonymous())
        .await
        .unwrap();
    assert_eq!(image.tag.as_deref(), Some("pulled"));
    assert_eq!(image.manifest_digest, written.manifest_digest);
    assert_eq!(image.config_digest, written.config_digest);
    assert_eq!(image.layers.len(), 2);
    for (got, want) in image.layers.iter().zip(&layers) {
        assert_eq!(got.digest, want.digest);
        assert_eq!(got.diff_id, want.diff_id);
        assert_eq!(got.size, want.size);
        assert_eq!(got.media_type, want.media_type);
        assert!(got.path.starts_with(&dest), "{}", got.path.display());
        assert_eq!(sha256_file(&got.path).unwrap(), want.digest);
    }
    // What pull returns is what the layout holds.
    let reread = read_image(&dest, Some("pulled")).unwrap();
    assert_eq!(reread.manifest_digest, image.manifest_digest);
    // No temporary files left behind.
    let leftovers: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let inspected = skopeo_inspect_oci(&dest, "pulled");
    assert_eq!(inspected["Digest"], written.manifest_digest);
    assert_eq!(
        inspected["Layers"],
        serde_json::json!([layers[0].digest, layers[1].digest])
    );

    // Pulling again, under another tag, fetches no blob: the layout has them all.
    let blob_gets = registry.requests("GET /v2/kiln/base/blobs/");
    assert_eq!(blob_gets, 3, "{}", registry.log());
    let again = pull(&reference, &dest, "again", &anonymous())
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, written.manifest_digest);
    assert_eq!(registry.requests("GET /v2/kiln/base/blobs/"), blob_gets);
    assert_eq!(
        kiln_image::oci::list_tags(&dest).unwrap(),
        vec!["pulled".to_string(), "again".to_string()]
    );

    // A digest reference pulls the same image.
    let by_digest = format!("{}/kiln/base@{}", registry.host(), written.manifest_digest);
    let image = pull(&by_digest, &t.path().join("by-digest"), "d", &anonymous())
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, written.manifest_digest);
}

#[tokio::test]
async fn second_push_uploads_nothing_and_shared_layers_once() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0", "a");
    let reference = format!("{}/kiln/app:1.0", registry.host());
    let uploads = "POST /v2/kiln/app/blobs/uploads/";

    push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap();
    assert_eq!(registry.requests(uploads), 3, "{}", registry.log());
    let again = push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap();
    assert_eq!(again, written.manifest_digest);
    assert_eq!(registry.requests(uploads), 3, "{}", registry.log());

    // Same base layer, new second layer and config: two uploads.
    let (written2, _) = build_image(t.path(), &source, "2.0", "b");
    let reference2 = format!("{}/kiln/app:2.0", registry.host());
    let pushed = push(&source, "2.0", &reference2, &anonymous())
        .await
        .unwrap();
    assert_eq!(pushed, written2.manifest_digest);
    assert_eq!(registry.requests(uploads), 5, "{}", registry.log());
}

#[tokio::test]
async fn missing_tag_wrong_digest_and_missing_repository_are_named() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    build_image(t.path(), &source, "1.0", "a");
    let host = registry.host();
    push(
        &source,
        "1.0",
        &format!("{host}/kiln/base:1.0"),
        &anonymous(),
    )
    .await
    .unwrap();

    let dest = t.path().join("dest");
    let err = pull(&format!("{host}/kiln/base:2.0"), &dest, "x", &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("registry {host} has no image kiln/base:2.0 (")),
        "{msg}"
    );
    assert!(msg.contains("tags there: 1.0"), "{msg}");
    assert!(!dest.exists(), "a failed pull created the layout");

    let wrong = kiln_image::digest::sha256_bytes(b"no such manifest");
    let err = pull(
        &format!("{host}/kiln/base@{wrong}"),
        &dest,
        "x",
        &anonymous(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(msg.contains(&format!("kiln/base@{wrong}")), "{msg}");

    let err = pull(
        &format!("{host}/kiln/nothing:1.0"),
        &dest,
        "x",
        &anonymous(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("kiln/nothing:1.0"), "{err}");
    assert!(
        err.to_string()
            .contains("the registry has no repository kiln/nothing"),
        "{err}"
    );

    let err = pull("kiln/base:1.0", &dest, "x", &anonymous())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("HOST[:PORT]/REPOSITORY[:TAG]"),
        "{err}"
    );

    // Pushing a tag the layout does not have names the layout's tags.
    let err = push(
        &source,
        "9.9",
        &format!("{host}/kiln/base:9.9"),
        &anonymous(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no image tagged 9.9 (tags: 1.0)"),
        "{err}"
    );
}

#[tokio::test]
async fn corrupt_blob_on_the_registry_is_refused() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (_, layers) = build_image(t.path(), &source, "1.0", "a");
    let reference = format!("{}/kiln/base:1.0", registry.host());
    push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap();

    // Same size, other bytes: only the digest can tell.
    let stored = registry.blob_file(&layers[1].digest);
    let mut bytes = fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&stored, &bytes).unwrap();

    let dest = t.path().join("dest");
    let err = pull(&reference, &dest, "x", &anonymous())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&layers[1].digest), "{msg}");
    assert!(msg.contains(&registry.host()), "{msg}");
    // Nothing tagged, no damaged blob, no temporary file.
    assert!(!dest.join("index.json").exists());
    let hex = layers[1].digest.trim_start_matches("sha256:");
    assert!(!dest.join("blobs/sha256").join(hex).exists());
    let names: Vec<String> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".kiln-tmp-")),
        "{names:?}"
    );
}

#[tokio::test]
async fn docker_schema2_manifest_is_pulled_as_oci() {
    require_tool("skopeo");
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (_, layers) = build_image(t.path(), &source, "1.0", "a");
    let reference = format!("{}/kiln/v2s2:1.0", registry.host());
    run(Command::new("skopeo")
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1.0", source.display()))
        .arg(format!("docker://{reference}")));
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let dest = t.path().join("dest");
    let image = pull(&reference, &dest, "1.0", &anonymous()).await.unwrap();
    assert_eq!(
        image.manifest.media_type().as_ref().unwrap().to_string(),
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        image.manifest.config().media_type().to_string(),
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        image.config_digest,
        raw["config"]["digest"].as_str().unwrap()
    );
    assert_eq!(image.layers.len(), 2);
    for (got, want) in image.layers.iter().zip(&layers) {
        assert_eq!(
            got.media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        // The bytes are the registry's, and the diff ids come from the config.
        assert_eq!(sha256_file(&got.path).unwrap(), got.digest);
        assert_eq!(got.diff_id, want.diff_id);
    }
    let inspected = skopeo_inspect_oci(&dest, "1.0");
    assert_eq!(inspected["Digest"], image.manifest_digest);
    assert_eq!(inspected["Env"], serde_json::json!(["PATH=/usr/bin:/bin"]));
}

#[tokio::test]
async fn index_gives_its_linux_amd64_image() {
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (amd64, layers) = build_image(t.path(), &source, "amd64", "a");
    let arm64_settings = ImageSettings {
        architecture: "arm64".into(),
        ..ImageSettings::default()
    };
    let arm64 = write_image(&source, "arm64", &layers, &arm64_settings).unwrap();
    let host = registry.host();
    for tag in ["amd64", "arm64"] {
        push(
            &source,
            tag,
            &format!("{host}/kiln/multi:{tag}"),
            &anonymous(),
        )
        .await
        .unwrap();
    }

    let entry = |arch: &str, digest: &str, size: u64| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64", &arm64.manifest_digest, arm64.manifest_size), entry("amd64", &amd64.manifest_digest, amd64.manifest_size)],
    });
    put_manifest(&host, "kiln/multi", "all", &index).await;
    let image = pull(
        &format!("{host}/kiln/multi:all"),
        &t.path().join("dest"),
        "all",
        &anonymous(),
    )
    .await
    .unwrap();
    assert_eq!(image.manifest_digest, amd64.manifest_digest);

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64", &arm64.manifest_digest, arm64.manifest_size)],
    });
    put_manifest(&host, "kiln/multi", "arm", &index).await;
    let err = pull(
        &format!("{host}/kiln/multi:arm"),
        &t.path().join("dest2"),
        "arm",
        &anonymous(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("(it has: linux/arm64)"), "{err}");
}

/// Puts an index under a tag, with oci-client directly (kiln does not push indexes).
async fn put_manifest(host: &str, repository: &str, tag: &str, index: &serde_json::Value) {
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{host}/{repository}:{tag}").parse().unwrap();
    client
        .auth(
            &reference,
            &oci_client::secrets::RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await
        .unwrap();
    client
        .push_manifest_raw(
            &reference,
            serde_json::to_vec(index).unwrap(),
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn basic_auth() {
    let registry = Registry::start_with(Some(("kiln", "s3cret")));
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0", "a");
    let host = registry.host();
    let reference = format!("{host}/kiln/private:1.0");
    let with = |password: &str| RegistryOptions {
        auth: Some(RegistryAuth {
            username: "kiln".into(),
            password: password.into(),
        }),
        insecure_http: false,
    };

    let err = push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host} answered 401 for kiln/private:1.0: it wants credentials: give a \
             username and password for it"
        )
    );
    let err = push(&source, "1.0", &reference, &with("wrong"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host} answered 401 for kiln/private:1.0: it refused the credentials of \
             user `kiln`: check the username and password"
        )
    );

    let pushed = push(&source, "1.0", &reference, &with("s3cret"))
        .await
        .unwrap();
    assert_eq!(pushed, written.manifest_digest);

    let dest = t.path().join("dest");
    let err = pull(&reference, &dest, "1.0", &with("wrong"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    let err = pull(&reference, &dest, "1.0", &anonymous())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("answered 401 for kiln/private:1.0"),
        "{err}"
    );
    let image = pull(&reference, &dest, "1.0", &with("s3cret"))
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, written.manifest_digest);
}

#[tokio::test]
async fn unreachable_registry_is_named() {
    let port = free_port();
    let t = tempfile::tempdir().unwrap();
    let err = pull(
        &format!("127.0.0.1:{port}/kiln/base:1.0"),
        &t.path().join("dest"),
        "1.0",
        &anonymous(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot reach registry 127.0.0.1:{port} at \
             http://127.0.0.1:{port}/v2/kiln/base/manifests/1.0: "
        )),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(!t.path().join("dest").exists());
}

/// `skopeo inspect` of an image in the registry: its JSON, or skopeo's complaint.
fn skopeo_inspect_remote(reference: &str, raw: bool) -> Result<String, String> {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The digest skopeo sees for an image in the registry.
fn skopeo_digest(reference: &str) -> String {
    let out = skopeo_inspect_remote(reference, false)
        .unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// A skopeo inspect that must fail because the image is not there.
fn assert_gone(reference: &str) {
    let err = skopeo_inspect_remote(reference, true)
        .expect_err(&format!("skopeo still finds {reference}"));
    assert!(err.contains("manifest unknown"), "{reference}: {err}");
}

#[tokio::test]
async fn manifest_digest_of_tags_indexes_and_missing_ones() {
    require_tool("skopeo");
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0", "a");
    let host = registry.host();
    push(
        &source,
        "1.0",
        &format!("{host}/kiln/app:1.0"),
        &anonymous(),
    )
    .await
    .unwrap();

    let heads = "HEAD /v2/kiln/app/manifests/1.0 ";
    let before = registry.requests(heads);
    let digest = manifest_digest(&format!("{host}/kiln/app:1.0"), &anonymous())
        .await
        .unwrap();
    assert_eq!(digest.as_deref(), Some(written.manifest_digest.as_str()));
    // One HEAD, and no GET: the digest comes from the header.
    assert_eq!(registry.requests(heads), before + 1, "{}", registry.log());
    assert_eq!(
        registry.statuses("GET /v2/kiln/app/manifests/1.0 "),
        Vec::<u16>::new()
    );
    // By digest it says whether the repository has the manifest.
    let by_digest = format!("{host}/kiln/app@{}", written.manifest_digest);
    assert_eq!(
        manifest_digest(&by_digest, &anonymous()).await.unwrap(),
        Some(written.manifest_digest.clone())
    );

    // Missing tag, missing manifest, missing repository: no digest, no error.
    let unknown = kiln_image::digest::sha256_bytes(b"no such manifest");
    for missing in [
        format!("{host}/kiln/app:2.0"),
        format!("{host}/kiln/app@{unknown}"),
        format!("{host}/kiln/nothing:1.0"),
    ] {
        assert_eq!(
            manifest_digest(&missing, &anonymous()).await.unwrap(),
            None,
            "{missing}"
        );
    }

    // A Docker schema 2 manifest keeps its digest: the Accept header names its type, so the
    // registry does not convert it.
    let v2s2 = format!("{host}/kiln/app:v2s2");
    run(Command::new("skopeo")
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1.0", source.display()))
        .arg(format!("docker://{v2s2}")));
    let digest = manifest_digest(&v2s2, &anonymous()).await.unwrap().unwrap();
    assert_ne!(digest, written.manifest_digest);
    assert_eq!(digest, skopeo_digest(&v2s2));

    // An index gives its own digest, not one of its images'.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": written.manifest_digest,
            "size": written.manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    put_manifest(&host, "kiln/app", "multi", &index).await;
    let index_digest = kiln_image::digest::sha256_bytes(&serde_json::to_vec(&index).unwrap());
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/app:multi"), &anonymous())
            .await
            .unwrap(),
        Some(index_digest)
    );

    let err = manifest_digest("kiln/app:1.0", &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BadReference { .. }), "{err:?}");
}

/// Two builds, `1.0-1` and `1.0-2` (their second layers differ), in a layout under `t` and
/// pushed to `kiln/app`. Returns the layout and both images.
async fn two_builds_pushed(
    registry: &Registry,
    t: &Path,
) -> (std::path::PathBuf, WrittenImage, WrittenImage) {
    let source = t.join("source");
    let (first, _) = build_image(t, &source, "1.0-1", "a");
    let (second, _) = build_image(t, &source, "1.0-2", "b");
    for build in ["1.0-1", "1.0-2"] {
        push(
            &source,
            build,
            &format!("{}/kiln/app:{build}", registry.host()),
            &anonymous(),
        )
        .await
        .unwrap();
    }
    (source, first, second)
}

#[tokio::test]
async fn retag_moves_a_tag_without_moving_blobs() {
    require_tool("skopeo");
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let (source, first, second) = two_builds_pushed(&registry, t.path()).await;
    let host = registry.host();
    // Nothing below reads the layout: a retag works from the registry alone.
    fs::remove_dir_all(&source).unwrap();
    let blob_requests = registry.blob_requests("kiln/app");
    // The pushes' requests (a HEAD per blob, a POST and a PUT per upload: 3 + 3 * 2 for the
    // first, 3 + 2 * 2 for the second), so the count below does see kiln's blob requests.
    assert_eq!(blob_requests, 16, "{}", registry.log());
    let blobs = registry.blob_count();
    // Two configs, a shared layer, two second layers, and the two manifests: the registry
    // keeps manifests in its blob store too, so a retag that stored anything would show.
    assert_eq!(blobs, 7);

    // Promote the first build.
    let digest = retag(&format!("{host}/kiln/app:1.0-1"), "1.0", &anonymous())
        .await
        .unwrap();
    assert_eq!(digest, first.manifest_digest);
    assert_eq!(skopeo_digest(&format!("{host}/kiln/app:1.0")), digest);
    assert_eq!(skopeo_digest(&format!("{host}/kiln/app:1.0-1")), digest);
    assert_eq!(
        skopeo_inspect_remote(&format!("{host}/kiln/app:1.0"), true).unwrap(),
        skopeo_inspect_remote(&format!("{host}/kiln/app:1.0-1"), true).unwrap(),
        "the manifest is copied byte for byte"
    );
    assert_eq!(
        registry.statuses("PUT /v2/kiln/app/manifests/1.0 "),
        vec![201]
    );

    // Promote the second, then take it back to the first by digest, as after a dead build.
    retag(&format!("{host}/kiln/app:1.0-2"), "1.0", &anonymous())
        .await
        .unwrap();
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/app:1.0"), &anonymous())
            .await
            .unwrap(),
        Some(second.manifest_digest.clone())
    );
    let back = retag(
        &format!("{host}/kiln/app@{}", first.manifest_digest),
        "1.0",
        &anonymous(),
    )
    .await
    .unwrap();
    assert_eq!(back, first.manifest_digest);
    assert_eq!(skopeo_digest(&format!("{host}/kiln/app:1.0")), back);
    // The second build's own tag is untouched.
    assert_eq!(
        skopeo_digest(&format!("{host}/kiln/app:1.0-2")),
        second.manifest_digest
    );

    // Not one blob checked, uploaded or downloaded, and none added.
    assert_eq!(
        registry.blob_requests("kiln/app"),
        blob_requests,
        "{}",
        registry.log()
    );
    assert_eq!(registry.blob_count(), blobs);

    // A retag refuses what it cannot do before it changes anything.
    let err = retag(&format!("{host}/kiln/app:9.9"), "1.0", &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("kiln/app:9.9"), "{err}");
    let err = retag(&format!("{host}/kiln/app:1.0-2"), "bad/tag", &anonymous())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid tag `bad/tag`"), "{err}");
    let err = retag(&format!("{host}/kiln/app"), "1.0", &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BadReference { .. }), "{err:?}");
    assert_eq!(skopeo_digest(&format!("{host}/kiln/app:1.0")), back);
}

/// The `Content-Type` the registry serves a manifest with (a HEAD accepting every type).
fn served_type(host: &str, repository: &str, tag: &str) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "HEAD /v2/{repository}/manifests/{tag} HTTP/1.1\r\nHost: {host}\r\nAccept: \
         application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.docker.distribution.manifest.list.v2+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap()
}

#[tokio::test]
async fn retag_keeps_the_media_type() {
    require_tool("skopeo");
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0", "a");
    let host = registry.host();

    // A Docker schema 2 manifest stays one.
    let staged = format!("{host}/kiln/v2s2:1.0-1");
    run(Command::new("skopeo")
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1.0", source.display()))
        .arg(format!("docker://{staged}")));
    let digest = retag(&staged, "1.0", &anonymous()).await.unwrap();
    assert_eq!(digest, skopeo_digest(&staged));
    let raw = skopeo_inspect_remote(&format!("{host}/kiln/v2s2:1.0"), true).unwrap();
    assert_eq!(raw, skopeo_inspect_remote(&staged, true).unwrap());
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        served_type(&host, "kiln/v2s2", "1.0"),
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // An OCI index without a mediaType (OCI allows that) stays an index: the registry refuses
    // it under the manifest type, so the shape must tell.
    push(
        &source,
        "1.0",
        &format!("{host}/kiln/multi:amd64"),
        &anonymous(),
    )
    .await
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": written.manifest_digest,
            "size": written.manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    put_manifest(&host, "kiln/multi", "1.0-1", &index).await;
    let index_digest = kiln_image::digest::sha256_bytes(&serde_json::to_vec(&index).unwrap());
    let digest = retag(&format!("{host}/kiln/multi:1.0-1"), "1.0", &anonymous())
        .await
        .unwrap();
    assert_eq!(digest, index_digest);
    assert_eq!(
        served_type(&host, "kiln/multi", "1.0"),
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/multi:1.0"), &anonymous())
            .await
            .unwrap(),
        Some(index_digest)
    );
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    require_tool("skopeo");
    let registry = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let (_source, first, second) = two_builds_pushed(&registry, t.path()).await;
    let host = registry.host();
    retag(&format!("{host}/kiln/app:1.0-1"), "1.0", &anonymous())
        .await
        .unwrap();

    // By tag: resolved to its digest, then deleted by digest.
    let deleted = delete_manifest(&format!("{host}/kiln/app:1.0-2"), &anonymous())
        .await
        .unwrap();
    assert_eq!(
        deleted,
        Deleted::Deleted {
            digest: second.manifest_digest.clone()
        }
    );
    assert_eq!(
        registry.statuses(&format!(
            "DELETE /v2/kiln/app/manifests/{} ",
            second.manifest_digest
        )),
        vec![202]
    );
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/app:1.0-2"), &anonymous())
            .await
            .unwrap(),
        None
    );
    assert_gone(&format!("{host}/kiln/app:1.0-2"));
    assert_eq!(
        skopeo_digest(&format!("{host}/kiln/app:1.0-1")),
        first.manifest_digest
    );

    // By digest: every tag naming it goes, as documented.
    let by_digest = format!("{host}/kiln/app@{}", first.manifest_digest);
    assert_eq!(
        delete_manifest(&by_digest, &anonymous()).await.unwrap(),
        Deleted::Deleted {
            digest: first.manifest_digest.clone()
        }
    );
    for tag in ["1.0-1", "1.0"] {
        let reference = format!("{host}/kiln/app:{tag}");
        assert_eq!(
            manifest_digest(&reference, &anonymous()).await.unwrap(),
            None,
            "{tag}"
        );
        assert_gone(&reference);
    }
    assert_eq!(
        manifest_digest(&by_digest, &anonymous()).await.unwrap(),
        None
    );

    // Nothing left to delete: not found, whether by digest, tag or repository.
    let deletes = registry.requests("DELETE ");
    assert_eq!(
        delete_manifest(&by_digest, &anonymous()).await.unwrap(),
        Deleted::NotFound
    );
    assert_eq!(registry.requests("DELETE "), deletes + 1);
    for missing in [
        format!("{host}/kiln/app:1.0-1"),
        format!("{host}/kiln/nothing:1.0"),
    ] {
        assert_eq!(
            delete_manifest(&missing, &anonymous()).await.unwrap(),
            Deleted::NotFound,
            "{missing}"
        );
    }
    // A tag that resolves to nothing sends no DELETE.
    assert_eq!(registry.requests("DELETE "), deletes + 1);

    // `latest` is not assumed for a delete.
    let err = delete_manifest(&format!("{host}/kiln/app"), &anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BadReference { .. }), "{err:?}");
    assert!(err.to_string().contains("`latest`"), "{err}");
}

#[tokio::test]
async fn delete_on_a_registry_that_does_not_delete_is_unsupported() {
    require_tool("skopeo");
    let registry = Registry::start_without_delete();
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0", "a");
    let host = registry.host();
    let reference = format!("{host}/kiln/app:1.0");
    push(&source, "1.0", &reference, &anonymous())
        .await
        .unwrap();

    let outcome = delete_manifest(&reference, &anonymous()).await.unwrap();
    let Deleted::Unsupported { digest, detail } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(digest, written.manifest_digest);
    assert!(detail.contains("405"), "{detail}");
    assert!(detail.contains("UNSUPPORTED"), "{detail}");
    // Nothing changed.
    assert_eq!(skopeo_digest(&reference), written.manifest_digest);
    assert_eq!(
        manifest_digest(&reference, &anonymous()).await.unwrap(),
        Some(written.manifest_digest.clone())
    );
    // The registry refuses before it looks: a digest it does not have is unsupported too.
    let unknown = kiln_image::digest::sha256_bytes(b"no such manifest");
    assert!(matches!(
        delete_manifest(&format!("{host}/kiln/app@{unknown}"), &anonymous())
            .await
            .unwrap(),
        Deleted::Unsupported { .. }
    ));
}

#[tokio::test]
async fn tag_calls_with_wrong_credentials_are_unauthorized() {
    let registry = Registry::start_with(Some(("kiln", "right-horse-battery")));
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0-1", "a");
    let host = registry.host();
    let with = |password: &str| RegistryOptions {
        auth: Some(RegistryAuth {
            username: "kiln".into(),
            password: password.into(),
        }),
        insecure_http: false,
    };
    let right = with("right-horse-battery");
    let wrong = with("wrong-staple-9f3");
    let staged = format!("{host}/kiln/private:1.0-1");
    let by_digest = format!("{host}/kiln/private@{}", written.manifest_digest);
    push(&source, "1.0-1", &staged, &right).await.unwrap();

    let refused = |image: &str| {
        format!(
            "registry {host} answered 401 for {image}: it refused the credentials of user \
             `kiln`: check the username and password"
        )
    };
    let check = |err: RegistryError, image: &str| {
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert_eq!(shown, refused(image));
        for text in [&shown, &debug] {
            assert!(!text.contains("wrong-staple"), "{text}");
            assert!(!text.contains("right-horse"), "{text}");
        }
    };
    check(
        manifest_digest(&staged, &wrong).await.unwrap_err(),
        "kiln/private:1.0-1",
    );
    check(
        retag(&staged, "1.0", &wrong).await.unwrap_err(),
        "kiln/private:1.0-1",
    );
    check(
        delete_manifest(&staged, &wrong).await.unwrap_err(),
        "kiln/private:1.0-1",
    );
    // By digest only kiln's own DELETE speaks to the registry: challenge, answer, refusal.
    let delete_path = format!(
        "DELETE /v2/kiln/private/manifests/{} ",
        written.manifest_digest
    );
    check(
        delete_manifest(&by_digest, &wrong).await.unwrap_err(),
        &format!("kiln/private@{}", written.manifest_digest),
    );
    assert_eq!(registry.statuses(&delete_path), vec![401, 401]);
    let err = delete_manifest(&by_digest, &anonymous()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { username: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("it wants credentials"), "{err}");
    assert_eq!(registry.statuses(&delete_path), vec![401, 401, 401]);

    // Nothing moved; with the right password all of it works.
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/private:1.0"), &right)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        retag(&staged, "1.0", &right).await.unwrap(),
        written.manifest_digest
    );
    assert_eq!(
        delete_manifest(&by_digest, &right).await.unwrap(),
        Deleted::Deleted {
            digest: written.manifest_digest.clone()
        }
    );
    assert_eq!(
        registry.statuses(&delete_path),
        vec![401, 401, 401, 401, 202]
    );
    assert_eq!(manifest_digest(&staged, &right).await.unwrap(), None);
}

/// Base64 of `bytes`: the standard alphabet with padding, or the URL one without (JWT).
fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).unwrap()
}

/// The scopes of each token request, and who asked.
type TokenRequests = std::sync::Arc<std::sync::Mutex<Vec<(Vec<String>, String)>>>;

/// A token service as Docker Hub, Harbor or GitLab run one, for a registry with `auth: token`:
/// it hands the users it knows an RS256 JWT granting the scope asked (less `delete` for those
/// who may not), signed (with the openssl command) by a throwaway key whose self-signed
/// certificate the registry trusts; anonymous clients get a token granting nothing. It records
/// each request's scopes, and who asked (a user, `anonymous` or `wrong`).
struct TokenService {
    port: u16,
    dir: tempfile::TempDir,
    requests: TokenRequests,
}

impl TokenService {
    const ISSUER: &'static str = "kiln-test-tokens";
    const SERVICE: &'static str = "kiln-test-registry";

    /// `users` are (name, password, may delete).
    fn start(users: &[(&str, &str, bool)]) -> TokenService {
        require_tool("openssl");
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .arg("-subj")
            .arg(format!("/CN={}", TokenService::ISSUER))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let header =
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [base64(&der.stdout, false)]});
        let header = base64(&serde_json::to_vec(&header).unwrap(), true);
        let users: Vec<(String, String, bool)> = users
            .iter()
            .map(|(user, password, delete)| {
                let basic = base64(format!("{user}:{password}").as_bytes(), false);
                (user.to_string(), format!("Basic {basic}"), *delete)
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = TokenRequests::default();
        let seen = requests.clone();
        // The thread blocks in accept for the rest of the test binary; nothing to clean up.
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let scopes: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .collect();
                let authorization = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("authorization")
                        .then(|| value.trim().to_string())
                });
                let known = authorization
                    .as_ref()
                    .and_then(|a| users.iter().find(|(_, basic, _)| basic == a));
                let (who, access) = match (&authorization, known) {
                    (None, _) => ("anonymous".to_string(), vec![]),
                    (Some(_), None) => ("wrong".to_string(), vec![]),
                    (Some(_), Some((user, _, may_delete))) => (
                        user.clone(),
                        scopes
                            .iter()
                            .filter_map(|scope| {
                                let (resource, actions) = scope.rsplit_once(':')?;
                                let name = resource.strip_prefix("repository:")?;
                                let actions: Vec<&str> = actions
                                    .split(',')
                                    .filter(|a| *may_delete || *a != "delete")
                                    .collect();
                                Some(serde_json::json!({
                                    "type": "repository",
                                    "name": name,
                                    "actions": actions,
                                }))
                            })
                            .collect(),
                    ),
                };
                seen.lock().unwrap().push((scopes, who.clone()));
                let answer = if who == "wrong" {
                    let body = r#"{"details":"incorrect username or password"}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let claims = serde_json::json!({
                        "iss": TokenService::ISSUER,
                        "sub": if who == "anonymous" { "" } else { who.as_str() },
                        "aud": TokenService::SERVICE,
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now - 10,
                        "jti": format!("kiln-test-{n}"),
                        "access": access,
                    });
                    let input = format!(
                        "{header}.{}",
                        base64(&serde_json::to_vec(&claims).unwrap(), true)
                    );
                    let mut sign = Command::new("openssl")
                        .args(["dgst", "-sha256", "-sign"])
                        .arg(&key)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    sign.stdin
                        .take()
                        .unwrap()
                        .write_all(input.as_bytes())
                        .unwrap();
                    let signature = sign.wait_with_output().unwrap();
                    assert!(signature.status.success());
                    let body = format!(
                        r#"{{"token":"{input}.{}"}}"#,
                        base64(&signature.stdout, true)
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        TokenService {
            port,
            dir,
            requests,
        }
    }

    /// The registry's `auth:` section for this service.
    fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    \
             issuer: {}\n    rootcertbundle: {}\n",
            self.port,
            TokenService::SERVICE,
            TokenService::ISSUER,
            self.dir.path().join("cert.pem").display()
        )
    }

    fn requests(&self) -> Vec<(Vec<String>, String)> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn tag_calls_with_a_token_service() {
    require_tool("skopeo");
    let tokens = TokenService::start(&[
        ("kiln", "token-horse-battery", true),
        ("reader", "reader-horse", false),
    ]);
    let registry = Registry::spawn(None, true, &tokens.registry_config());
    let t = tempfile::tempdir().unwrap();
    let source = t.path().join("source");
    let (written, _) = build_image(t.path(), &source, "1.0-1", "a");
    let host = registry.host();
    let with = |password: &str| RegistryOptions {
        auth: Some(RegistryAuth {
            username: "kiln".into(),
            password: password.into(),
        }),
        insecure_http: false,
    };
    let right = with("token-horse-battery");
    let staged = format!("{host}/kiln/app:1.0-1");
    push(&source, "1.0-1", &staged, &right).await.unwrap();
    assert_eq!(
        retag(&staged, "1.0", &right).await.unwrap(),
        written.manifest_digest
    );

    // A wrong password: the token service refuses it, and the error keeps it to itself.
    let by_digest = format!("{host}/kiln/app@{}", written.manifest_digest);
    let err = delete_manifest(&by_digest, &with("wrong-token-staple"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let (shown, debug) = (err.to_string(), format!("{err:?}"));
    assert!(
        shown.contains("refused the credentials of user `kiln`"),
        "{shown}"
    );
    for text in [&shown, &debug] {
        assert!(
            !text.contains("staple") && !text.contains("horse"),
            "{text}"
        );
    }
    // Anonymous: a token that grants nothing, so the registry refuses the DELETE.
    let err = delete_manifest(&by_digest, &anonymous()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { username: None, .. }),
        "{err:?}"
    );
    // A user the registry knows but who may not delete: missing access, not a bad password.
    let reader = RegistryOptions {
        auth: Some(RegistryAuth {
            username: "reader".into(),
            password: "reader-horse".into(),
        }),
        insecure_http: false,
    };
    let err = delete_manifest(&staged, &reader).await.unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host} denied delete access to kiln/app:1.0-1: user `reader` may not \
             delete it; check the repository name, or ask the registry's administrators for \
             delete access"
        )
    );
    assert_eq!(
        manifest_digest(&format!("{host}/kiln/app:1.0"), &right)
            .await
            .unwrap(),
        Some(written.manifest_digest.clone())
    );

    // The right one: the DELETE's challenge names the delete scope, the token grants it.
    let asked = tokens.requests().len();
    assert_eq!(
        delete_manifest(&staged, &right).await.unwrap(),
        Deleted::Deleted {
            digest: written.manifest_digest.clone()
        }
    );
    let delete_scope = vec!["repository:kiln/app:delete".to_string()];
    assert!(
        tokens.requests()[asked..].contains(&(delete_scope.clone(), "kiln".to_string())),
        "{:?}",
        tokens.requests()
    );
    assert_eq!(
        registry.statuses(&format!(
            "DELETE /v2/kiln/app/manifests/{} ",
            written.manifest_digest
        )),
        vec![401, 401, 401, 401, 401, 401, 202]
    );
    for tag in ["1.0-1", "1.0"] {
        assert_eq!(
            manifest_digest(&format!("{host}/kiln/app:{tag}"), &right)
                .await
                .unwrap(),
            None,
            "{tag}"
        );
    }
    let wrong_asks: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|(_, who)| who == "wrong")
        .collect();
    assert_eq!(wrong_asks, vec![(delete_scope, "wrong".to_string())]);
}
