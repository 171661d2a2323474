//! Signatures, SBOMs and provenance end to end: a real container build distributed to a real
//! docker-registry (2.8: no referrers API, so the tag-schema fallback) and a folder region;
//! skopeo with a `sigstoreSigned` policy accepts the image and refuses the same image copied
//! unsigned; the SBOMs pass PyPI's SPDX and CycloneDX validators; the provenance names every
//! component's digest; `kiln image verify` passes, and fails on a changed image and with
//! another key; a signing key that cannot be read fails the distribution with nothing
//! published.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testkit::registry::Registry;

const VENV_PYTHON: &str = "/opt/kiln-test/venv/bin/python";

fn recipe(dir: &Path, version: &str, here: &Path) -> PathBuf {
    write(
        dir,
        "one.yaml",
        "name: one\nschemaVersion: 1.0\nparameters:\n  - greeting:\n      type: string\n      default: hi\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-sc-one\n            content: '{{ greeting }}'\n",
    );
    write(
        dir,
        "two.yaml",
        "name: two\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-sc-two\n            content: two\n",
    );
    write(
        dir,
        "recipe.yml",
        &format!(
            "name: sc-web\nsemanticVersion: {version}\nparentImage: {}\ncomponents:\n  - path: one.yaml\n    parameters:\n      - name: greeting\n        value: [hello]\n  - path: two.yaml\nimageTestsConfiguration:\n  imageTestsEnabled: false\ndistributions:\n  - region: east\n  - region: here\n    path: {}\n",
            base(),
            here.display()
        ),
    )
}

/// The skopeo that checks signatures: `KILN_TEST_SKOPEO` when set (Debian's skopeo 1.9 is built
/// with sigstore verification disabled: "Debian-local change: sigstore disabled"), else
/// `skopeo`.
fn skopeo(args: &[&str]) -> std::process::Output {
    let program = std::env::var("KILN_TEST_SKOPEO").unwrap_or_else(|_| "skopeo".into());
    kiln_testkit::require_tool(&program);
    Command::new(program).args(args).output().unwrap()
}

/// Checks the signature of `image` in `repo` with OpenSSL, an independent verifier: the payload
/// and its base64 DER signature as the `.sig` tag's manifest holds them.
fn openssl_verifies(host: &str, repo: &str, image: &str, key: &Path, dir: &Path) -> bool {
    use base64::Engine as _;
    let tag = format!("{}.sig", image.replacen(':', "-", 1));
    let o = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}:{tag}"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layer = &m["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = Command::new("curl")
        .args([
            "-sf",
            &format!(
                "http://{host}/v2/{repo}/blobs/{}",
                layer["digest"].as_str().unwrap()
            ),
        ])
        .output()
        .unwrap();
    assert!(payload.status.success());
    let p: serde_json::Value = serde_json::from_slice(&payload.stdout).unwrap();
    assert_eq!(p["critical"]["image"]["docker-manifest-digest"], image);
    assert_eq!(
        p["critical"]["identity"]["docker-reference"],
        format!("{host}/{repo}")
    );
    let sig = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    std::fs::write(dir.join("payload"), &payload.stdout).unwrap();
    std::fs::write(dir.join("payload.sig"), sig).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(key)
        .arg("-signature")
        .arg(dir.join("payload.sig"))
        .arg(dir.join("payload"))
        .output()
        .unwrap()
        .status
        .success()
}

fn verify(config: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["image", "verify"];
    all.extend_from_slice(args);
    let mut c = kiln_cmd(&all);
    c.env("KILN_CONFIG", config);
    c.output().unwrap()
}

fn python(code: &str, file: &Path) -> std::process::Output {
    Command::new(VENV_PYTHON)
        .args(["-c", code])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn signed_attested_verified_and_refused_when_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let host = reg.host();
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "regions:\n  east: {{registry: \"{host}\", namespace: sc}}\n  west: {{registry: \"{host}\", namespace: sc-west}}\n"
        ),
    );
    let here = dir.path().join("here");
    let r = recipe(dir.path(), "1.0.0", &here);
    let mut c = kiln_cmd(&["build", r.to_str().unwrap()]);
    c.env("KILN_CONFIG", &config);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let log = text(&o.stderr) + &text(&o.stdout);
    assert!(log.contains("signed (sha256-"), "{log}");

    let rec = record("sc-web/1.0.0");
    let sc = &rec["supplyChain"];
    let image = rec["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "oci-registry")
        .unwrap()["manifestDigest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sc["subjects"][0]["digest"], image.as_str(), "{sc}");
    let attached = &sc["attached"][0];
    assert_eq!(attached["subject"], image.as_str());
    assert_eq!(
        attached["referrersApi"], false,
        "docker-registry 2.8 has none"
    );
    assert_eq!(attached["referrers"].as_array().unwrap().len(), 3);

    // The public key, as skopeo's policy takes it.
    let o = kiln(&["signing-key", "public"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pem = text(&o.stdout);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let key = write(dir.path(), "kiln.pub", &pem);
    let policy = write(
        dir.path(),
        "policy.json",
        &format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"{host}/sc":[{{"type":"sigstoreSigned","keyPath":"{}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#,
            key.display()
        ),
    );
    let open = write(
        dir.path(),
        "open.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    let regd = dir.path().join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    write(
        &regd,
        "kiln.yaml",
        &format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n"),
    );
    let strict_copy_with = |policy: &Path, from: &str, to: &Path| {
        skopeo(&[
            "--policy",
            policy.to_str().unwrap(),
            "--registries.d",
            regd.to_str().unwrap(),
            "copy",
            "--src-tls-verify=false",
            from,
            &format!("dir:{}", to.display()),
        ])
    };
    let strict_copy = |from: &str, to: &Path| strict_copy_with(&policy, from, to);
    let reference = format!("docker://{host}/sc/sc-web:1.0.0");
    assert!(openssl_verifies(
        &host,
        "sc/sc-web",
        &image,
        &key,
        dir.path()
    ));
    let other = kiln(&["signing-key", "public", "--account", "111111111111"]);
    let other = write(dir.path(), "other.pub", &text(&other.stdout));
    assert!(!openssl_verifies(
        &host,
        "sc/sc-web",
        &image,
        &other,
        dir.path()
    ));
    let o = strict_copy(&reference, &dir.path().join("pulled"));
    let sigstore = !text(&o.stderr).contains("sigstore disabled");
    if sigstore {
        assert!(
            o.status.success(),
            "skopeo refused kiln's signature: {}",
            text(&o.stderr)
        );
        let wrong = write(
            dir.path(),
            "wrong.json",
            &std::fs::read_to_string(&policy)
                .unwrap()
                .replace(key.to_str().unwrap(), other.to_str().unwrap()),
        );
        let o = strict_copy_with(&wrong, &reference, &dir.path().join("wrong"));
        assert!(
            !o.status.success(),
            "skopeo accepted the signature with another key"
        );
    } else {
        eprintln!(
            "this skopeo cannot check sigstore signatures (Debian builds it without); set \
             KILN_TEST_SKOPEO to one that can. The signature was checked with OpenSSL."
        );
    }

    // The same image copied to another repository without its signature is refused.
    let copy = format!("docker://{host}/sc/copy:1.0.0");
    let o = skopeo(&[
        "--policy",
        open.to_str().unwrap(),
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--remove-signatures",
        &reference,
        &copy,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = strict_copy(&copy, &dir.path().join("unsigned"));
    assert!(!o.status.success(), "skopeo accepted an unsigned copy");
    if sigstore {
        assert!(
            text(&o.stderr).contains("A signature was required, but no signature exists"),
            "{}",
            text(&o.stderr)
        );
    }

    // kiln image verify: signature, provenance about this digest, both SBOMs.
    let o = verify(&config, &[&reference]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    for what in [
        "signature sha256-",
        "provenance:",
        "SPDX 2.3 SBOM",
        "CycloneDX 1.6 SBOM",
    ] {
        assert!(out.contains(what), "{what} not checked:\n{out}");
    }
    assert!(
        out.contains(&format!("the tag {}", image.replacen(':', "-", 1))),
        "{out}"
    );
    let o = verify(&config, &["sc-web/1.0.0"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // Distributed again to another region: signed and attached there too.
    let mut c = kiln_cmd(&["image", "distribute", "sc-web/1.0.0", "--region", "west"]);
    c.env("KILN_CONFIG", &config);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = verify(&config, &[&format!("docker://{host}/sc-west/sc-web:1.0.0")]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains("CycloneDX 1.6 SBOM"),
        "{}",
        text(&o.stdout)
    );
    // Another account's key does not verify it; an unsigned copy does not verify.
    let o = verify(&config, &[&reference, "--key", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no signature verifies"),
        "{}",
        text(&o.stderr)
    );
    let o = verify(&config, &[&copy]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is not signed"),
        "{}",
        text(&o.stderr)
    );

    // The documents: in the log folder and beside the folder region's layout.
    let docs = sc["documents"].as_array().unwrap();
    let file = |kind: &str, under: &Path| -> PathBuf {
        docs.iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap(),
                    PathBuf::from(d["path"].as_str().unwrap()),
                )
            })
            .find(|(k, p)| *k == kind && p.starts_with(under))
            .unwrap_or_else(|| panic!("no {kind} under {}: {sc}", under.display()))
            .1
    };
    let logs = PathBuf::from(rec["logs"].as_str().unwrap());
    for kind in ["spdx", "cyclonedx", "provenance"] {
        assert!(file(kind, &logs).is_file());
        assert!(file(kind, &here.join("supply-chain")).is_file());
    }
    let spdx = file("spdx", &logs);
    let o = Command::new("/opt/kiln-test/venv/bin/pyspdxtools")
        .arg("-i")
        .arg(&spdx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pyspdxtools: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let o = python(
        "import sys\nfrom cyclonedx.schema import SchemaVersion\nfrom cyclonedx.validation.json import JsonStrictValidator\n\
         e = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\n\
         sys.exit(f'invalid: {e}' if e else 0)",
        &file("cyclonedx", &logs),
    );
    assert!(o.status.success(), "CycloneDX: {}", text(&o.stderr));
    let bom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file("cyclonedx", &logs)).unwrap()).unwrap();
    let purls: Vec<&str> = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["purl"].as_str().unwrap())
        .collect();
    assert!(
        purls.iter().any(|p| p.starts_with("pkg:deb/debian/libc6@")),
        "{purls:?}"
    );
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file("provenance", &logs)).unwrap()).unwrap();
    assert_eq!(prov["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(prov["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        image.trim_start_matches("sha256:")
    );
    let deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"].to_string();
    for c in rec["components"].as_array().unwrap() {
        let sha = c["documentSha256"].as_str().unwrap();
        assert!(
            deps.contains(sha),
            "component {} ({sha}) missing: {deps}",
            c["name"]
        );
    }
    assert_eq!(
        prov["predicate"]["runDetails"]["metadata"]["invocationId"],
        rec["arn"]
    );

    // A changed image under the same tag (here: the same content as Docker schema 2, another
    // digest) no longer verifies.
    let o = skopeo(&[
        "--policy",
        open.to_str().unwrap(),
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &reference,
        &reference,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = verify(&config, &[&reference]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("is not signed"),
        "{}",
        text(&o.stderr)
    );
    let o = strict_copy(&reference, &dir.path().join("changed"));
    assert!(!o.status.success(), "skopeo accepted a changed image");

    // A key that cannot be read fails the distribution, and nothing of 1.0.1 is published.
    let key_file = home().join("signing/000000000000.pem");
    let kept = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, "not a key").unwrap();
    let r = recipe(dir.path(), "1.0.1", &here);
    let mut c = kiln_cmd(&["build", r.to_str().unwrap()]);
    c.env("KILN_CONFIG", &config);
    let o = c.output().unwrap();
    std::fs::write(&key_file, kept).unwrap();
    assert!(
        !o.status.success(),
        "a build with an unreadable key succeeded"
    );
    let said = text(&o.stdout) + &text(&o.stderr);
    assert!(said.contains("cannot sign the image"), "{said}");
    let o = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/sc/sc-web:1.0.1"),
    ]);
    assert!(!o.status.success(), "1.0.1 was published unsigned");
}
