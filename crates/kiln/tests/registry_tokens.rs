//! kiln serve as a registry's token service, end to end: a real docker-registry with `auth:
//! token` pointing at a real `kiln serve`; the local account A builds a tiny container image
//! through a pipeline into that registry (kiln pushes with its service credential); account B
//! logs in with `kiln registry login` and `skopeo login`, is refused the image, can pull it once
//! A's distribution configuration names B in its launch permission, and is refused again when
//! the grant is removed; no image bytes move for any of it. B can never push; no credentials,
//! or wrong ones, get nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_testkit::registry::{free_port, Registry};

const LOCAL: &str = "000000000000";

struct Env {
    home: PathBuf,
    config: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(args)
            .env("KILN_HOME", &self.home)
            .env("KILN_CONFIG", &self.config)
            .env("KILN_PLAIN", "1")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().unwrap();
        assert!(
            o.status.success(),
            "kiln {args:?}:\n{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arn(kind: &str, rest: &str) -> String {
    format!("arn:kiln:imagebuilder:local:{LOCAL}:{kind}/{rest}")
}

/// skopeo with its own auth file; `Ok(stdout)` or `Err(stderr)`.
fn skopeo(auth: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    kiln_testkit::require_tool("skopeo");
    let mut c = Command::new("skopeo");
    c.args(args)
        .env("REGISTRY_AUTH_FILE", auth)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    if o.status.success() {
        Ok(text(&o.stdout))
    } else {
        Err(text(&o.stderr))
    }
}

fn inspect(auth: &Path, reference: &str) -> Result<String, String> {
    skopeo(
        auth,
        &["inspect", "--raw", "--tls-verify=false", reference],
        None,
    )
}

/// A token request to kiln's token service: the HTTP status.
fn token_status(realm: &str, service: &str, user_password: Option<(&str, &str)>) -> u16 {
    token_status_of(
        &format!("{realm}?service={service}&scope=repository:x/y:pull"),
        user_password,
    )
}

fn token_status_of(url: &str, user_password: Option<(&str, &str)>) -> u16 {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    if let Some((u, p)) = user_password {
        c.args(["-u", &format!("{u}:{p}")]);
    }
    let o = c.arg(url).output().unwrap();
    text(&o.stdout).trim().parse().unwrap_or(0)
}

/// Writes the registry accepted (uploads, mounts and manifest PUTs in its access log).
fn writes(registry: &Registry) -> usize {
    ["PUT ", "POST ", "PATCH "]
        .iter()
        .flat_map(|m| registry.statuses(m))
        .filter(|s| (200..300).contains(s))
        .count()
}

#[test]
fn accounts_pull_what_distribution_grants_them_and_nothing_moves() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().to_path_buf();
    let _dir = if std::env::var_os("KILN_TEST_KEEP").is_some() {
        eprintln!("keeping {}", kept.display());
        std::mem::forget(dir);
        None
    } else {
        Some(dir)
    };
    let d = kept.as_path();
    let env = Env {
        home: d.join("home"),
        config: d.join("config.yaml"),
    };
    std::fs::write(&env.config, "{}\n").unwrap();
    // The tiniest parent: a root filesystem of one file (the component only writes a file).
    std::fs::create_dir_all(d.join("root/etc")).unwrap();
    std::fs::create_dir_all(d.join("root/tmp")).unwrap();
    std::fs::write(d.join("root/etc/hostname"), "tiny\n").unwrap();
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(d.join("root"))
        .arg("-cf")
        .arg(d.join("root.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(tarred.success());
    let parent = format!("rootfs:{}", d.join("root.tar").display());

    // The token service's key and certificate, made on first use; the registry trusts them.
    let sp = free_port();
    let realm = format!("http://127.0.0.1:{sp}/registry/token");
    let first = env.ok(&[
        "registry",
        "token-config",
        "--service",
        "placeholder:5000",
        "--realm",
        &realm,
    ]);
    let cert = first
        .lines()
        .find_map(|l| l.trim().strip_prefix("rootcertbundle: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no rootcertbundle in:\n{first}"));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cert.with_file_name("token-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        key_mode & 0o777,
        0o600,
        "the signing key is the owner's only"
    );
    let registry = Registry::start_token_auth(&realm, "kiln", &cert);
    let host = registry.host();
    std::fs::write(
        &env.config,
        format!(
            "regions:\n  tok: {{registry: \"{host}\", namespace: shared, tokenService: true}}\nserve:\n  listen: \"127.0.0.1:{sp}\"\n"
        ),
    )
    .unwrap();
    // The configuration an operator is told names this registry as the service.
    let told = env.ok(&["registry", "token-config", "--region", "tok"]);
    assert!(told.contains(&format!("service: {host}")), "{told}");
    assert!(
        told.contains(&format!("realm: http://127.0.0.1:{sp}/registry/token")),
        "{told}"
    );
    assert!(told.contains("issuer: kiln"), "{told}");

    // Account B, and kiln serve (tokens of 2 s, so a revoke shows at once).
    let b: serde_json::Value =
        serde_json::from_str(&env.ok(&["account", "create", "bee", "-o", "json"])).unwrap();
    let b_id = b["accountId"].as_str().unwrap().to_string();
    let mut serve = Serve(
        env.cmd(&["serve", "--registry-token-seconds", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("serve.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(serve.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("listening on http://"),
        "{line:?}: {}",
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );

    // A (the local account) builds a tiny container image through a pipeline into `tok`.
    let n = format!("tok{}", std::process::id());
    let f = write(d, "c.yaml", &format!("name: {n}\nplatform: Linux\ndata: |\n  name: {n}\n  schemaVersion: 1.0\n  phases:\n    - name: build\n      steps:\n        - name: Mark\n          action: CreateFile\n          inputs:\n            - path: /etc/kiln-tokens\n              content: shared\n"));
    env.ok(&["component", "create", f.to_str().unwrap()]);
    let r = write(
        d,
        "r.yaml",
        &format!("name: {n}\ncontainerType: DOCKER\nparentImage: {parent}\ncomponents:\n  - componentArn: {}\n", arn("component", &format!("{n}/x.x.x"))),
    );
    env.ok(&["recipe", "create", r.to_str().unwrap()]);
    let i = write(d, "i.yaml", &format!("name: {n}\n"));
    env.ok(&["infrastructure", "create", i.to_str().unwrap()]);
    let dist = |users: &str| {
        let f = write(
            d,
            "d.yaml",
            &format!("name: {n}\ndistributions:\n  - region: tok\n    amiDistributionConfiguration:\n      targetAccountIds: [\"{b_id}\"]\n      launchPermission:\n        userIds: [{users}]\n"),
        );
        f.to_str().unwrap().to_string()
    };
    env.ok(&["distribution", "create", &dist("")]);
    let p = write(
        d,
        "p.yaml",
        &format!(
            "name: {n}\ncontainerRecipeArn: {}\ninfrastructureConfigurationArn: {}\ndistributionConfigurationArn: {}\nimageTestsConfiguration:\n  imageTestsEnabled: false\n",
            arn("container-recipe", &format!("{n}/x.x.x")),
            arn("infrastructure-configuration", &n),
            arn("distribution-configuration", &n)
        ),
    );
    env.ok(&["pipeline", "create", p.to_str().unwrap()]);
    let t_build = Instant::now();
    env.ok(&["pipeline", "start", &n]);
    let build_secs = t_build.elapsed().as_secs_f64();
    let image = format!("docker://{host}/shared/{n}:1.0.0");
    // kiln pushed with its service credential: the record has the registry output.
    let rec: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "get", &format!("{n}/1.0.0/1"), "-o", "json"]))
            .unwrap();
    assert_eq!(rec["state"], "AVAILABLE", "{rec}");
    assert!(
        rec["outputs"]
            .to_string()
            .contains(&format!("{host}/shared/{n}")),
        "{}",
        rec["outputs"]
    );

    // targetAccountIds: B's own copy, placed by mounts: only its manifest was sent.
    let copy = format!("{host}/shared/{b_id}/{n}");
    let placed = rec["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["location"] == format!("docker://{copy}"))
        .unwrap_or_else(|| panic!("no copy for B: {}", rec["outputs"]));
    let copy_sent = placed["sent"].as_u64().unwrap();
    assert!(copy_sent < 4096, "only the manifest is sent: {placed}");
    let uploads: Vec<u16> = ["PATCH ", "PUT "]
        .iter()
        .flat_map(|m| registry.statuses(&format!("{m}/v2/shared/{b_id}/{n}/blobs/")))
        .collect();
    assert!(
        uploads.is_empty(),
        "no blob uploaded to the copy: {uploads:?}"
    );
    let mounts = registry.statuses(&format!("POST /v2/shared/{b_id}/{n}/blobs/uploads/?mount="));
    assert!(
        // The first is the registry's challenge for a token; then every blob is mounted.
        mounts.contains(&201) && mounts.iter().all(|s| matches!(s, 201 | 401)),
        "blobs mounted: {mounts:?}\n{}",
        registry.log()
    );

    // Nobody without credentials, or with wrong ones, gets in.
    let none = d.join("none.json");
    std::fs::write(&none, "{\"auths\":{}}").unwrap();
    let e = inspect(&none, &image).unwrap_err();
    assert!(
        e.contains("unauthorized") || e.contains("401") || e.contains("denied"),
        "{e}"
    );
    assert_eq!(token_status(&realm, &host, None), 401);
    assert_eq!(token_status(&realm, &host, Some(("AWS", "hunter2"))), 401);
    assert_eq!(
        token_status(&realm, &host, Some(("kiln", "kilnsvc1.00"))),
        401
    );

    // B logs in with a password made from its keys; skopeo accepts it.
    let login = env
        .cmd(&["registry", "login"])
        .env("AWS_ACCESS_KEY_ID", b["accessKeyId"].as_str().unwrap())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            b["secretAccessKey"].as_str().unwrap(),
        )
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", text(&login.stderr));
    let password = text(&login.stdout).trim().to_string();
    // A good password with a request that names no service, or a malformed scope: 400.
    assert_eq!(token_status_of(&realm, Some(("AWS", &password))), 400);
    let bad_scope = format!("{realm}?service={host}&scope=pull");
    assert_eq!(token_status_of(&bad_scope, Some(("AWS", &password))), 400);
    assert_eq!(token_status(&realm, &host, Some(("AWS", &password))), 200);
    let secret = b["secretAccessKey"].as_str().unwrap();
    assert!(
        !password.contains(secret),
        "the secret is not in the password"
    );
    let wrong = password.replacen("kiln1.", "kiln1.X", 1);
    let auth = d.join("auth.json");
    skopeo(
        &auth,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "AWS",
            "--password-stdin",
            &host,
        ],
        Some(&wrong),
    )
    .expect_err("a changed password is refused");
    skopeo(
        &auth,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            &b_id,
            "--password-stdin",
            &host,
        ],
        Some(&password),
    )
    .expect("skopeo login takes the password");

    // B's own copy is B's to pull from the start.
    inspect(&auth, &format!("docker://{copy}:1.0.0")).expect("B pulls its copy");

    // Not shared: refused. The registry's blobs and writes, before granting.
    let e = inspect(&auth, &image).unwrap_err();
    assert!(e.contains("denied") || e.contains("unauthorized"), "{e}");
    let (blobs, written) = (registry.blob_count(), writes(&registry));

    // A grants B in the distribution: B pulls, within a token's lifetime.
    env.ok(&["distribution", "update", &dist(&format!("\"{b_id}\""))]);
    let manifest = inspect(&auth, &image).unwrap_or_else(|e| {
        panic!(
            "B pulls once granted: {e}\n{}",
            std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
        )
    });
    assert!(manifest.contains("layers"), "{manifest}");
    let pulled = d.join("pulled");
    skopeo(
        &auth,
        &[
            "copy",
            "--src-tls-verify=false",
            &image,
            &format!("oci:{}:got", pulled.display()),
        ],
        None,
    )
    .expect("B copies the image");
    // B may pull, never push: its token has no push, so its copy into A's repository fails.
    let e = skopeo(
        &auth,
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:got", pulled.display()),
            &format!("docker://{host}/shared/{n}:overwritten"),
        ],
        None,
    )
    .unwrap_err();
    assert!(e.contains("denied") || e.contains("unauthorized"), "{e}");

    // The grant removed: refused again.
    env.ok(&["distribution", "update", &dist("")]);
    std::thread::sleep(Duration::from_millis(100));
    let e = inspect(&auth, &image).unwrap_err();
    assert!(e.contains("denied") || e.contains("unauthorized"), "{e}");

    // Granting and revoking moved no image bytes: no blob or manifest written since.
    assert_eq!(registry.blob_count(), blobs);
    assert_eq!(writes(&registry), written, "{}", registry.log());
    eprintln!(
        "registry tokens: build {build_secs:.1} s, copy for B sent {copy_sent} bytes, whole test {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
