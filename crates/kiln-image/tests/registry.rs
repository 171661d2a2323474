//! Pull and push against a real registry: Debian's `docker-registry` (the CNCF distribution
//! server) on a loopback port, started per test and killed at its end, pass or fail. Images are
//! checked with skopeo. `scripts/setup --test` installs both; a missing one fails the test, it
//! never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_image::digest::sha256_file;
use kiln_image::layer::{write_layer, Compression, LayerBlob};
use kiln_image::oci::{read_image, write_image, ImageSettings, WrittenImage};
use kiln_image::registry::{pull, push, RegistryAuth, RegistryError, RegistryOptions};

/// A `docker-registry serve` on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `Some((user, password))`, the registry wants HTTP basic auth (htpasswd, bcrypt).
    fn start_with(user: Option<(&str, &str)>) -> Registry {
        require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            fs::write(dir.path().join("htpasswd"), format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log = fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Registry { child, port, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    s,
                    "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{} within 30 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Requests in the access log whose request line starts with `start` (like
    /// `POST /v2/kiln/app/blobs/uploads/`).
    fn requests(&self, start: &str) -> usize {
        let needle = format!("\"{start}");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// The file where the registry keeps a blob.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
