//! Regions that are places, end to end: a real build of an image with a container output and
//! a disk, distributed to three real registries on loopback (two regions in one of them, one
//! registry wanting a password, one taking KubeVirt containerDisks) and moto's S3 server; what
//! they hold is read with skopeo and `kiln disk pull`; a registry killed mid-push and kiln
//! killed mid-distribution leave no new tag anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_testkit::registry::Registry;

struct Places {
    one: Registry,
    secure: Registry,
    kube: Registry,
    _s3: moto::Moto,
    config: PathBuf,
}

fn places(dir: &Path) -> Places {
    let one = Registry::start();
    let secure = Registry::start_with(Some(("kiln", "s3cret")));
    let kube = Registry::start();
    let s3 = moto::Moto::start();
    s3.create_bucket("images");
    let config = write(
        dir,
        "config.yaml",
        &format!(
            "regions:\n  east: {{registry: \"{one}\", namespace: east}}\n  west: {{registry: \"{one}\", namespace: west}}\n  secure: {{registry: \"{secure}\", namespace: golden, username: kiln, password: s3cret}}\n  kube: {{registry: \"{kube}\", namespace: kv, containerDisk: true}}\n  archive: {{s3: \"s3://images/prod\"}}\n  late: {{registry: \"{one}\", namespace: late}}\ns3:\n  endpoint: {}\n  region: us-east-1\n  accessKeyId: testing\n  secretAccessKey: testing\n",
            s3.endpoint,
            one = one.host(),
            secure = secure.host(),
            kube = kube.host(),
        ),
    );
    Places {
        one,
        secure,
        kube,
        _s3: s3,
        config,
    }
}

fn recipe(dir: &Path, name: &str, version: &str, content: &str) -> PathBuf {
    write(
        dir,
        "mark.yaml",
        &format!("name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-regions\n            content: {content}\n"),
    );
    write(
        dir,
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: {version}\nparentImage: {}\ncomponents:\n  - path: mark.yaml\noutputs: [oci, disk]\nimageTestsConfiguration:\n  imageTestsEnabled: false\ndistributions:\n  - region: east\n    containerDistributionConfiguration:\n      containerTags: [latest]\n  - region: west\n  - region: secure\n  - region: kube\n  - region: archive\n    amiDistributionConfiguration:\n      name: \"{name}-{{{{ imagebuilder:buildVersion }}}}\"\n",
            disk_base()
        ),
    )
}

fn with_config(c: &mut Command, p: &Places) {
    c.env("KILN_CONFIG", &p.config);
}

fn build(p: &Places, r: &Path) -> std::process::Output {
    let mut c = kiln_cmd(&["build", r.to_str().unwrap()]);
    with_config(&mut c, p);
    c.output().unwrap()
}

fn get(p: &Places, image: &str) -> serde_json::Value {
    let mut c = kiln_cmd(&["image", "get", image, "--output", "json"]);
    with_config(&mut c, p);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// skopeo's answer for an image, or `None` when it has no such image.
fn skopeo_inspect(reference: &str, creds: Option<&str>) -> Option<String> {
    kiln_testkit::require_tool("skopeo");
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(cr) = creds {
        c.args(["--creds", cr]);
    }
    let o = c.arg(reference).output().unwrap();
    o.status.success().then(|| text(&o.stdout))
}

fn output<'a>(rec: &'a serde_json::Value, region: &str, kind: &str) -> &'a serde_json::Value {
    rec["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["region"] == region && o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} output in {region}: {}", rec["outputs"]))
}

fn sent(rec: &serde_json::Value, region: &str, kind: &str) -> u64 {
    output(rec, region, kind)["sent"].as_u64().unwrap()
}

fn pull(p: &Places, reference: &str, file: &Path) -> (String, String) {
    let mut c = kiln_cmd(&["disk", "pull", reference, file.to_str().unwrap()]);
    with_config(&mut c, p);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "disk pull {reference}: {}",
        text(&o.stderr)
    );
    (text(&o.stdout).trim().to_string(), text(&o.stderr))
}

/// Runs a build until its stderr shows `line`, then kills `then` (a registry) or, with `None`,
/// kiln itself (SIGKILL to its process group, as a crash would). Returns kiln's exit status.
fn build_until(config: &Path, r: &Path, line: &str, then: Option<&mut Registry>) -> Option<i32> {
    let mut c = kiln_cmd(&["build", r.to_str().unwrap()]);
    c.env("KILN_CONFIG", config);
    let mut child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let kill_kiln = then.is_none();
    let mut then = then;
    for l in stderr.lines() {
        let l = l.unwrap();
        let hit = l.contains(line);
        seen.push(l);
        if hit && kill_kiln {
            nix_kill(child.id() as i32);
            break;
        }
        if hit {
            if let Some(registry) = then.take() {
                registry.kill();
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains(line)),
        "the build never printed `{line}`:\n{}",
        seen.join("\n")
    );
    status.code()
}

fn nix_kill(pgid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

#[test]
fn an_image_and_its_disk_go_to_registries_and_a_bucket_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = places(dir.path());
    let name = format!("regions-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let east_disk = first_version(&p, dir.path(), &name);
    let rec1 = update_and_distribute_again(&p, dir.path(), &name, east_disk);
    a_kiln_parent_from_a_registry(&p, dir.path(), &name, &rec1);
    failures_take_back_everywhere(&mut p, dir.path(), &name);
}

/// 1.0.0 everywhere, read by skopeo and pulled back; returns the bytes the first disk push
/// sent to region east.
fn first_version(p: &Places, dir: &Path, name: &str) -> u64 {
    let (one, secure, kube) = (p.one.host(), p.secure.host(), p.kube.host());
    // 1.0.0: everything everywhere.
    let r = recipe(dir, name, "1.0.0", "one");
    let o = build(p, &r);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let rec = get(p, &format!("{name}/1.0.0/1"));
    let img = output(&rec, "east", "oci-registry");
    assert_eq!(
        img["location"],
        format!("docker://{one}/east/{name}"),
        "{img}"
    );
    assert!(img["tags"].to_string().contains("latest"), "{img}");
    for (region, kind) in [
        ("west", "oci-registry"),
        ("secure", "disk-chunks"),
        ("kube", "containerdisk"),
        ("archive", "oci-bucket"),
        ("archive", "disk-chunks"),
    ] {
        output(&rec, region, kind);
    }
    // Two regions of one registry: the second has its blobs by mount, so it was sent little.
    let (east_disk, west_disk) = (
        sent(&rec, "east", "disk-chunks"),
        sent(&rec, "west", "disk-chunks"),
    );
    assert!(
        west_disk * 20 < east_disk,
        "west {west_disk} of east {east_disk}"
    );
    let usage = rec["usage"]["regions"].to_string();
    assert!(usage.contains("\"archive\""), "{usage}");

    // The real tools read what kiln wrote.
    assert!(skopeo_inspect(&format!("docker://{one}/west/{name}:1.0.0"), None).is_some());
    assert!(
        skopeo_inspect(&format!("docker://{secure}/golden/{name}:1.0.0"), None).is_none(),
        "the secure registry served without a password"
    );
    let raw = skopeo_inspect(
        &format!("docker://{secure}/golden/{name}/disk:1.0.0"),
        Some("kiln:s3cret"),
    )
    .unwrap();
    assert!(raw.contains("application/vnd.kiln.disk.v1"), "{raw}");
    let cd = skopeo_inspect(
        &format!("docker://{kube}/kv/{name}/containerdisk:1.0.0"),
        None,
    )
    .unwrap();
    assert!(
        cd.contains("application/vnd.oci.image.layer.v1.tar"),
        "{cd}"
    );
    let copied = dir.join("copied");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "kiln:s3cret",
        ])
        .arg(format!("docker://{secure}/golden/{name}:1.0.0"))
        .arg(format!("oci:{}:x", copied.display()))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy");

    // The disk back, bit for bit, from a registry and from the bucket.
    let disk_digest = rec["disk"]["digest"].as_str().unwrap().to_string();
    let f = dir.join("east.raw");
    let (d, _) = pull(p, &format!("docker://{one}/east/{name}/disk:1.0.0"), &f);
    assert_eq!(d, disk_digest);
    let (d, _) = pull(
        p,
        &format!("s3://images/prod/{name}/disk:{name}-1"),
        &dir.join("s3.raw"),
    );
    assert_eq!(d, disk_digest);
    let q = dir.join("east.qcow2");
    let mut c = kiln_cmd(&[
        "disk",
        "pull",
        &format!("docker://{one}/east/{name}/disk:1.0.0"),
        q.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    with_config(&mut c, p);
    assert!(c.output().unwrap().status.success());
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&q)
        .output()
        .unwrap();
    assert!(
        text(&info.stdout).contains("\"qcow2\""),
        "{}",
        text(&info.stdout)
    );

    east_disk
}

/// 1.0.1, a small change, and it distributed again to one more region; returns its record.
fn update_and_distribute_again(
    p: &Places,
    dir: &Path,
    name: &str,
    east_disk: u64,
) -> serde_json::Value {
    let one = p.one.host();
    let f = dir.join("east.raw");
    // 1.0.1: one file changed, a small share sent; pulled over 1.0.0, little fetched.
    let r = recipe(dir, name, "1.0.1", "two");
    let o = build(p, &r);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec1 = get(p, &format!("{name}/1.0.1/1"));
    let update = sent(&rec1, "east", "disk-chunks");
    assert!(
        update * 10 < east_disk,
        "the update sent {update} of {east_disk}"
    );
    let (d, log) = pull(p, &format!("docker://{one}/east/{name}/disk:1.0.1"), &f);
    assert_eq!(d, rec1["disk"]["digest"].as_str().unwrap());
    assert!(log.contains("reused"), "{log}");

    // 1.0.1 again, to a region its build did not name: nothing rebuilt, the blobs mounted.
    let mut c = kiln_cmd(&[
        "image",
        "distribute",
        &format!("{name}/1.0.1/1"),
        "--region",
        "late",
    ]);
    with_config(&mut c, p);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again = get(p, &format!("{name}/1.0.1/1"));
    assert!(
        sent(&again, "late", "disk-chunks") * 20 < east_disk,
        "{}",
        again["outputs"]
    );
    assert!(skopeo_inspect(&format!("docker://{one}/late/{name}:1.0.1"), None).is_some());
    let (d, _) = pull(
        p,
        &format!("docker://{one}/late/{name}/disk:1.0.1"),
        &dir.join("late.raw"),
    );
    assert_eq!(d, rec1["disk"]["digest"].as_str().unwrap());

    rec1
}

fn a_kiln_parent_from_a_registry(p: &Places, dir: &Path, name: &str, rec1: &serde_json::Value) {
    // A kiln: parent whose layers this store no longer has and that no folder region holds is
    // read back from its registry region.
    let own_layer = rec1["components"][0]["layer"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::remove_dir_all(home().join("layers").join(&own_layer)).unwrap();
    let child = dir.join("child");
    std::fs::create_dir_all(&child).unwrap();
    write(&child, "c.yaml", "name: c\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: C\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-child\n            content: child\n");
    let cr = write(
        &child,
        "recipe.yml",
        &format!("name: {name}-child\nsemanticVersion: 1.0.0\nparentImage: kiln:{name}/1.0.1\ncomponents:\n  - path: c.yaml\noutputs: [oci]\nimageTestsConfiguration:\n  imageTestsEnabled: false\ndistributions:\n  - region: east\n"),
    );
    let o = build(p, &cr);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let crec = get(p, &format!("{name}-child/1.0.0/1"));
    assert_eq!(
        crec["parent"]["resolved"],
        format!("{name}/1.0.1/1"),
        "{}",
        crec["parent"]
    );
    assert_eq!(crec["parent"]["cached"], false, "{}", crec["parent"]);
}

/// 1.0.2 with a registry killed mid-push, 1.0.3 with kiln killed mid-distribution.
fn failures_take_back_everywhere(p: &mut Places, dir: &Path, name: &str) {
    let one = p.one.host();
    // 1.0.2: the password registry dies while the first region is pushed: the build fails in
    // DISTRIBUTING naming it, and no region has 1.0.2.
    let r = recipe(dir, name, "1.0.2", "three");
    let code = build_until(&p.config.clone(), &r, "region east: ", Some(&mut p.secure));
    assert_ne!(code, Some(0));
    let failed = get(p, &format!("{name}/1.0.2/1"));
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let reason = failed["failure"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("region secure"), "{reason}");
    assert!(reason.contains("taken back: east: "), "{reason}");
    p.secure.restart();
    assert_no_version(p, name, "1.0.2", dir);

    // 1.0.3: kiln itself is killed once two regions have content; the next kiln command finds
    // the dead build, takes its staged content back, and no region has 1.0.3.
    let r = recipe(dir, name, "1.0.3", "four");
    build_until(&p.config, &r, "region west: ", None);
    let dead = get(p, &format!("{name}/1.0.3/1"));
    assert_eq!(dead["state"], "FAILED", "{dead}");
    assert_no_version(p, name, "1.0.3", dir);
    let staged: Vec<String> = dead["distributing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["digest"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(!staged.is_empty(), "{dead}");
    for digest in staged {
        for repo in [
            format!("east/{name}"),
            format!("east/{name}/disk"),
            format!("west/{name}"),
        ] {
            assert!(
                skopeo_inspect(&format!("docker://{one}/{repo}@{digest}"), None).is_none(),
                "{repo}@{digest} is still there after recovery"
            );
        }
    }
    assert!(skopeo_inspect(&format!("docker://{one}/west/{name}/disk:1.0.1"), None).is_some());
}

/// Every registry repository of the test's regions, with the credentials it wants.
fn repositories(p: &Places, name: &str) -> Vec<(String, Option<&'static str>)> {
    let (one, secure, kube) = (p.one.host(), p.secure.host(), p.kube.host());
    let mut all = Vec::new();
    for base in [
        format!("{one}/east"),
        format!("{one}/west"),
        format!("{kube}/kv"),
    ] {
        all.push((format!("docker://{base}/{name}"), None));
        all.push((format!("docker://{base}/{name}/disk"), None));
    }
    all.push((format!("docker://{kube}/kv/{name}/containerdisk"), None));
    for repo in [name.to_string(), format!("{name}/disk")] {
        all.push((
            format!("docker://{secure}/golden/{repo}"),
            Some("kiln:s3cret"),
        ));
    }
    all
}

/// What `kiln disk pull` says of `s3://images/prod/REPO:TAG`: the bucket region's probe
/// (an image that is not a disk is refused as such; a missing tag as missing).
fn bucket_has(p: &Places, repo: &str, tag: &str, dir: &Path) -> bool {
    let mut c = kiln_cmd(&[
        "disk",
        "pull",
        &format!("s3://images/prod/{repo}:{tag}"),
        dir.join("probe.raw").to_str().unwrap(),
    ]);
    with_config(&mut c, p);
    let o = c.output().unwrap();
    let err = text(&o.stderr);
    assert!(
        o.status.success() || err.contains("has no") || err.contains("is not a kiln disk"),
        "{err}"
    );
    !err.contains("has no")
}

/// No region shows `version` (or its build 1), and every region still serves 1.0.1.
fn assert_no_version(p: &Places, name: &str, version: &str, dir: &Path) {
    for tag in [version.to_string(), format!("{version}-1")] {
        for (repo, creds) in repositories(p, name) {
            let reference = format!("{repo}:{tag}");
            assert!(
                skopeo_inspect(&reference, creds).is_none(),
                "{reference} exists after a failed distribution"
            );
        }
        for repo in [name.to_string(), format!("{name}/disk")] {
            assert!(
                !bucket_has(p, &repo, &tag, dir),
                "s3://images/prod/{repo}:{tag} exists after a failed distribution"
            );
        }
    }
    for (repo, creds) in repositories(p, name) {
        let reference = format!("{repo}:1.0.1");
        assert!(
            skopeo_inspect(&reference, creds).is_some(),
            "{reference} is no longer served"
        );
    }
    for repo in [name.to_string(), format!("{name}/disk")] {
        assert!(
            bucket_has(p, &repo, "1.0.1", dir),
            "s3://images/prod/{repo}:1.0.1 is gone"
        );
    }
}
