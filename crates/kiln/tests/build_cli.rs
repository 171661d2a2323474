//! `kiln build` end to end: real bootstraps, sandboxes, OCI layouts, and the tools that read them.
//!
//! The tests share one data directory under the target folder, so Debian is bootstrapped once
//! (and kept between runs); each test builds images of its own names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn golden_nginx_builds_tests_caches_and_is_read_by_skopeo_and_umoci() {
    base(); // the bootstrap is shared; this test's own work starts from a warm parent.
    let work = tempfile::tempdir().unwrap();
    let ex = work.path().join("golden-nginx");
    copy_dir(&repo().join("examples/golden-nginx"), &ex);
    // A name of its own, so runs of this test do not count each other's builds.
    let recipe = ex.join("recipe.yml");
    let name = format!("golden-nginx-test-{}", std::process::id());
    // The container image only: the disk output has its own tests (disk_cli.rs).
    let r = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("name: golden-nginx", &format!("name: {name}"))
        .replace("outputs: [oci, disk]", "outputs: [oci]");
    assert!(r.contains("outputs: [oci]\n"), "{r}");
    let region = work.path().join("region");
    let r = r.replace(
        "distributions:\n  - region: local\n",
        &format!(
            "distributions:\n  - region: local\n    path: {}\n",
            region.display()
        ),
    );
    std::fs::write(&recipe, r).unwrap();
    // The step cache outlives test runs (with the bootstrap): a first component of this run's
    // own makes every layer new, so the first build builds and tests even on a second run.
    let first = ex.join("components/hardening.yaml");
    let mut doc = std::fs::read_to_string(&first).unwrap();
    doc.push_str(&format!("# run {}\n", std::process::id()));
    std::fs::write(&first, doc).unwrap();

    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).starts_with(&format!("AVAILABLE {name}/1.0.0/1")),
        "{}",
        text(&o.stdout)
    );
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["state"], "AVAILABLE");
    // What it used: the builder's and the test's instance time, and all of the image sent to
    // its new region.
    let usage = &rec["usage"];
    assert!(
        usage["builder"]["vcpuSeconds"].as_f64().unwrap() > 0.0,
        "{usage}"
    );
    assert!(
        usage["test"]["gibSeconds"].as_f64().unwrap() > 0.0,
        "{usage}"
    );
    let sent = &usage["regions"][0];
    assert_eq!(sent["region"], "local", "{usage}");
    assert!(sent["bytesStored"].as_u64().unwrap() > 1 << 20, "{usage}");
    assert_eq!(sent["bytesSent"], sent["bytesStored"], "{usage}");
    let o = kiln(&["usage", "--account", "000000000000", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let total: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        total["000000000000"]["images"].as_u64().unwrap() >= 1,
        "{total}"
    );
    assert_eq!(
        states(&rec),
        [
            "PENDING",
            "BUILDING",
            "TESTING",
            "DISTRIBUTING",
            "AVAILABLE"
        ]
    );
    assert_eq!(rec["tests"]["status"], "passed", "the test stage ran");
    assert!(rec["tests"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "test/VersionIsExpected"));
    assert!(rec["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "nginx-light"));
    // The test phase ran in its own sandbox: its log is separate from the build logs.
    let logs = PathBuf::from(rec["logs"].as_str().unwrap());
    // The whole build's log, as `kiln image logs --follow` and the API stream it.
    let build_log = std::fs::read_to_string(logs.join("build.log")).unwrap();
    assert!(build_log.contains("== BUILDING"), "{build_log}");
    assert!(
        build_log.trim_end().ends_with("== AVAILABLE"),
        "{build_log}"
    );
    let o = kiln(&["image", "logs", &format!("{name}/1.0.0/1"), "--follow"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), build_log);
    let test_log = std::fs::read_to_string(logs.join("test/console.log")).unwrap();
    assert!(test_log.contains("==> test/ConfigTest"));
    assert!(
        !std::fs::read_to_string(logs.join("build-02-nginx/console.log"))
            .unwrap()
            .contains("test/")
    );

    // skopeo reads it: one layer for the parent, one per component.
    let o = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:1.0.0", region.display())])
        .output()
        .expect("skopeo is installed by scripts/setup --test");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let inspect: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = inspect["Layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        1 + 3,
        "parent + hardening + nginx + aws hello world"
    );
    assert_eq!(
        inspect["Labels"]["org.opencontainers.image.version"],
        "1.0.0"
    );
    // umoci unpacks it into a root filesystem with the components' work in it.
    let bundle = work.path().join("bundle");
    let o = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:1.0.0", region.display()),
            bundle.to_str().unwrap(),
        ])
        .output()
        .expect("umoci is installed by scripts/setup --test");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("usr/sbin/nginx").exists());
    assert!(
        std::fs::read_to_string(rootfs.join("etc/ssh/sshd_config.d/90-kiln-hardening.conf"))
            .unwrap()
            .contains("PermitRootLogin no")
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("root/helloworld.txt")).unwrap(),
        "hello world\n"
    );
    assert!(!rootfs.join("usr/sbin/policy-rc.d").exists());

    // An identical rebuild takes every component from the cache.
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec2 = record(&format!("{name}/1.0.0/2"));
    let caches = field_of(&rec2["components"], "cache");
    assert_eq!(caches, ["hit", "hit", "hit"]);
    assert_eq!(rec2["layers"], rec["layers"], "the same layers");
    // The region had every layer already: nothing was sent.
    assert_eq!(
        rec2["usage"]["regions"][0]["bytesSent"], 0,
        "{}",
        rec2["usage"]
    );

    // Changing the last component re-runs only that one.
    let last = ex.join("components/aws-hello-world.yaml");
    let mut doc = std::fs::read_to_string(&last).unwrap();
    doc.push_str(&format!("# changed {}\n", std::process::id()));
    std::fs::write(&last, doc).unwrap();
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec3 = record(&format!("{name}/1.0.0/3"));
    let caches = field_of(&rec3["components"], "cache");
    assert_eq!(caches, ["hit", "hit", "miss"]);
    assert_eq!(
        rec3["tests"]["status"], "passed",
        "a changed image is tested again"
    );

    // --no-cache rebuilds everything.
    let o = kiln(&["build", recipe.to_str().unwrap(), "--no-cache", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec4 = record(&format!("{name}/1.0.0/4"));
    let caches = field_of(&rec4["components"], "cache");
    assert_eq!(caches, ["bypassed", "bypassed", "bypassed"]);

    // The listing shows them.
    let o = kiln(&["image", "list", &name]);
    let list = text(&o.stdout);
    assert_eq!(
        list.lines().filter(|l| l.starts_with(&name)).count(),
        4,
        "{list}"
    );
}

#[test]
fn a_failing_step_fails_the_build_and_leaves_nothing_behind() {
    let parent = base();
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    write(
        dir.path(),
        "broken.yaml",
        "name: broken\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Start\n        action: ExecuteBash\n        inputs:\n          commands: ['sleep 900 & echo started-background']\n      - name: Explode\n        action: ExecuteBash\n        inputs:\n          commands:\n            - echo configuring the widget\n            - \"echo 'E: the widget is broken' >&2\"\n            - exit 7\n",
    );
    let name = format!("failing-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: 2.0.0\nparentImage: {parent}\ncomponents:\n  - path: broken.yaml\ndistributions:\n  - region: r1\n    path: {}\n",
            region.display()
        ),
    );
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("FAILED {name}/2.0.0/1 in BUILDING")),
        "{out}"
    );
    assert!(
        out.contains("component broken, step build/Explode"),
        "{out}"
    );
    assert!(out.contains("exit code 7"), "{out}");
    assert!(
        out.contains("E: the widget is broken"),
        "the last output is shown: {out}"
    );
    assert!(out.contains("full log: "), "{out}");
    let rec = record(&format!("{name}/2.0.0/1"));
    assert_eq!(rec["state"], "FAILED");
    assert_eq!(rec["failure"]["step"], "build/Explode");
    assert!(rec["outputs"].as_array().unwrap().is_empty());
    // Nothing in any region, no mount, no process, no scratch folder left behind.
    assert!(!region.exists(), "nothing may be distributed");
    assert!(
        !mounts_mention("kiln-home/run"),
        "a sandbox mount outlived the build"
    );
    assert!(
        processes_with("sleep 900").is_empty(),
        "a process of the build outlived it"
    );
    let leftovers = run_folders_of(&name);
    assert!(leftovers.is_empty(), "scratch left: {leftovers:?}");
}

#[test]
fn a_killed_kiln_leaves_nothing_running_and_the_build_is_marked_interrupted() {
    let parent = base();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("sleep 777{}", std::process::id() % 100);
    write(
        dir.path(),
        "slow.yaml",
        &format!("name: slow\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Wait\n        action: ExecuteBash\n        inputs:\n          commands: ['{marker} & {marker}']\n"),
    );
    let name = format!("killed-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: slow.yaml\n"),
    );
    let mut child = kiln_cmd(&["build", recipe.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = || processes_with(&marker).len() >= 2;
    assert!(
        eventually(Duration::from_secs(120), started),
        "the step never started"
    );
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let gone = || processes_with(&marker).is_empty();
    assert!(
        eventually(Duration::from_secs(20), gone),
        "the build's processes outlived kiln: {:?}",
        processes_with(&marker)
    );
    assert!(
        !mounts_mention(&format!("run/{name}")),
        "a mount outlived kiln"
    );
    // The next kiln notices: the build is FAILED (interrupted) and its scratch is swept.
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["state"], "FAILED");
    assert!(rec["failure"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("interrupted"));
    assert_eq!(rec["failure"]["stage"], "BUILDING");
    let o = kiln(&["cache", "info"]);
    assert!(o.status.success());
    let left = run_folders_of(&name);
    assert!(left.is_empty(), "scratch not swept: {left:?}");
}

#[test]
fn bad_input_gets_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    // A bad recipe: every error, with its position.
    let bad = write(
        dir.path(),
        "bad.yml",
        "name: x\nsemanticVersion: 1.0\nparentImage: ocii:/x\ncomponents: []\n",
    );
    let o = kiln(&["build", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("bad.yml:2:18: error: `1.0` is not a valid semantic version"),
        "{err}"
    );
    assert!(err.contains("bad.yml:3:14: error: `ocii:/x`: unknown image transport `ocii:` (did you mean `oci:`?)"), "{err}");
    assert!(
        err.contains("bad.yml:4:13: error: `components` is empty"),
        "{err}"
    );
    assert!(err.contains("nothing was built"), "{err}");

    // A bad component document: its errors, before anything runs.
    write(dir.path(), "c.yaml", "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: X\n        action: ExecuteBsh\n");
    let r = write(dir.path(), "r.yml", "name: x\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - path: c.yaml\n");
    let o = kiln(&["build", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("c.yaml:6:17: error: phase `build`, step `X`: unknown action `ExecuteBsh`"),
        "{err}"
    );

    // An unknown parent: FAILED, saying what is missing.
    write(dir.path(), "ok.yaml", "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: X\n        action: ExecuteBash\n        inputs: {commands: ['true']}\n");
    let name = format!("noparent-{}", std::process::id());
    let r = write(
        dir.path(),
        "r2.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: oci:/nonexistent/layout:1.0\ncomponents:\n  - path: ok.yaml\n"),
    );
    let o = kiln(&["build", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains("parent image oci:/nonexistent/layout:1.0"),
        "{out}"
    );
    assert!(out.contains("/nonexistent/layout"), "{out}");
    let r = write(
        dir.path(),
        "r3.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: kiln:never-built/1.x.x\ncomponents:\n  - path: ok.yaml\n"),
    );
    let o = kiln(&["build", r.to_str().unwrap()]);
    assert!(
        text(&o.stdout).contains("kiln has built no image named `never-built`"),
        "{}",
        text(&o.stdout)
    );

    // No mmdebstrap: say so, and how to get it (a package list not yet cached needs a bootstrap).
    let r = write(
        dir.path(),
        "r4.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.1\nparentImage: bootstrap:debian/bookworm\nbootstrap:\n  packages: [kiln-no-cache-{}]\ncomponents:\n  - path: ok.yaml\n", std::process::id()),
    );
    let o = kiln_cmd(&["build", r.to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(out.contains("mmdebstrap is not installed"), "{out}");
    assert!(out.contains("scripts/setup"), "{out}");

    // Not root: say so before anything happens.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_kiln"),
            "build",
        ])
        .arg(r.to_str().unwrap())
        .env("KILN_HOME", dir.path().join("nobody-home"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("needs root"),
        "{}",
        text(&o.stderr)
    );
}

/// Debian's docker-registry on a free loopback port, killed when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    assert!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry is not installed: run `scripts/setup --test`"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    assert!(
        eventually(Duration::from_secs(30), up),
        "docker-registry did not start"
    );
    Registry {
        child,
        port,
        _dir: dir,
    }
}

#[test]
fn every_parent_transport() {
    base();
    let dir = tempfile::tempdir().unwrap();
    let layout = home().join("regions/local");
    write(
        dir.path(),
        "mark.yaml",
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: ExecuteBash\n        inputs:\n          commands: ['cat /etc/kiln-test-base > /etc/child-saw-base']\n  - name: test\n    steps:\n      - name: Saw\n        action: Assert\n        inputs:\n          fileExists: /etc/child-saw-base\n",
    );
    // The base as a registry image, pushed with skopeo (an independent client).
    let registry = start_registry();
    let pushed = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1.0.0", layout.display()),
            &format!("docker://127.0.0.1:{}/kiln/base:1.0", registry.port),
        ])
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    // And as a rootfs tarball, exported from the base image by umoci.
    let bundle = dir.path().join("bundle");
    let o = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:1.0.0", layout.display()),
            bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A file of this run's own: the tarball is a layer no earlier run (whose cache outlives
    // it) has made.
    std::fs::write(
        bundle.join("rootfs/etc/kiln-test-run"),
        std::process::id().to_string(),
    )
    .unwrap();
    let tarball = dir.path().join("rootfs.tar");
    let o = Command::new("tar")
        .args([
            "-C",
            bundle.join("rootfs").to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            ".",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());

    let parents = [
        ("oci", format!("oci:{}:1.0.0", layout.display())),
        (
            "docker",
            format!("docker://127.0.0.1:{}/kiln/base:1.0", registry.port),
        ),
        ("rootfs", format!("rootfs:{}", tarball.display())),
        ("kiln", "kiln:test-base/1.x.x".to_string()),
    ];
    for (kind, parent) in parents {
        let name = format!("from-{kind}-{}", std::process::id());
        let recipe = write(
            dir.path(),
            &format!("{kind}.yml"),
            &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: mark.yaml\n"),
        );
        let o = kiln(&["build", recipe.to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{kind}: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let rec = record(&format!("{name}/1.0.0/1"));
        let tests = rec["tests"]["status"].as_str().unwrap().to_string();
        let cache = rec["components"][0]["cache"].as_str().unwrap().to_string();
        match kind {
            // The registry image has the very layers of the layout: kiln knows it by content,
            // so the component (and the identical image's tests) come from the cache.
            "docker" | "kiln" => assert_eq!(
                (cache.as_str(), tests.as_str()),
                ("hit", "cached"),
                "{kind}"
            ),
            // A tarball of the unpacked files is one new layer: built and tested anew.
            "rootfs" => assert_eq!(
                (cache.as_str(), tests.as_str()),
                ("miss", "passed"),
                "{kind}"
            ),
            _ => assert!(tests == "passed" || tests == "cached", "{kind}: {tests}"),
        }
        assert_eq!(rec["parent"]["reference"], parent.as_str(), "{kind}");
        assert!(
            !rec["parent"]["resolved"].as_str().unwrap().is_empty(),
            "{kind}"
        );
    }
    // A registry without the tag: the failure names registry, repository and tag.
    let name = format!("from-missing-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "missing.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: docker://127.0.0.1:{}/kiln/base:9.9\ncomponents:\n  - path: mark.yaml\n", registry.port),
    );
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains("kiln/base:9.9") && out.contains(&format!("127.0.0.1:{}", registry.port)),
        "{out}"
    );
}

#[test]
fn cache_opt_out_reboots_disabled_tests_logs_and_prune() {
    let parent = base();
    let dir = tempfile::tempdir().unwrap();
    // The user guide's exit-194 example, unchanged: the sandbox restarts and the step runs again.
    std::fs::copy(
        repo().join("crates/kiln-toe/tests/corpus/awstoe/user-guide/toe-action-modules-01.yaml"),
        dir.path().join("reboot.yaml"),
    )
    .unwrap();
    write(
        dir.path(),
        "stamp.yaml",
        "name: stamp\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Stamp\n        action: ExecuteBash\n        inputs:\n          commands: ['date +%s%N > /etc/stamp; echo stamped']\n",
    );
    let name = format!("features-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: 0.1.0\nparentImage: {parent}\ncomponents:\n  - path: reboot.yaml\n  - path: stamp.yaml\n    cache: false\nimageTestsConfiguration:\n  imageTestsEnabled: false\n"
        ),
    );
    let o = kiln(&[
        "build",
        recipe.to_str().unwrap(),
        "--output",
        "json",
        "--no-cache",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("--output json prints the record");
    assert_eq!(rec["state"], "AVAILABLE");
    assert_eq!(rec["tests"]["status"], "skipped");
    assert!(
        !rec["packages"].as_array().unwrap().is_empty(),
        "the inventory is read even without tests"
    );
    let reboot_log = std::fs::read_to_string(
        PathBuf::from(rec["logs"].as_str().unwrap())
            .join("build-01-ExitCode194Example/console.log"),
    )
    .unwrap();
    assert!(
        reboot_log.contains("exit code 194: rebooting the instance"),
        "{reboot_log}"
    );
    assert!(reboot_log.contains("The reboot file exists. Deleting it and exiting with success."));

    // The opted-out component runs every time; the other comes from the cache.
    let o = kiln(&["build", recipe.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec2 = record(&format!("{name}/0.1.0/2"));
    let caches = field_of(&rec2["components"], "cache");
    assert_eq!(caches, ["hit", "disabled"]);
    let last = |r: &serde_json::Value| r["layers"].as_array().unwrap().last().cloned();
    assert_ne!(last(&rec2), last(&rec), "a fresh stamp, a new layer");
    assert_eq!(
        rec2["components"][0]["layer"],
        rec["components"][0]["layer"]
    );

    // Logs by component name or position, and of the whole build.
    let o = kiln(&[
        "image",
        "logs",
        &format!("{name}/0.1.0/2"),
        "--component",
        "stamp",
    ]);
    assert!(text(&o.stdout).contains("stamped"), "{}", text(&o.stdout));
    let o = kiln(&[
        "image",
        "logs",
        &format!("{name}/0.1.0"),
        "--component",
        "2",
    ]);
    assert!(
        text(&o.stdout).contains("==> build/Stamp"),
        "{}",
        text(&o.stdout)
    );
    let o = kiln(&["image", "get", &format!("{name}/0.1.0/1")]);
    let get = text(&o.stdout);
    assert!(
        get.contains("state      AVAILABLE") && get.contains("tests      skipped"),
        "{get}"
    );
    let o = kiln(&["image", "get", "no-such-image/1.0.0"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no build matches `no-such-image/1.0.0`"),
        "{}",
        text(&o.stderr)
    );

    // The cache reports its size; pruning a private data directory to zero empties it.
    let private = dir.path().join("private-home");
    let o = kiln_cmd(&["build", recipe.to_str().unwrap(), "-q"])
        .env("KILN_HOME", &private)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "this home has no test-base image: the parent is unknown"
    );
    let o = kiln_cmd(&["cache", "info"])
        .env("KILN_HOME", &private)
        .output()
        .unwrap();
    assert!(
        text(&o.stdout).contains("layers        0"),
        "{}",
        text(&o.stdout)
    );
    let o = kiln(&["cache", "info"]);
    let info = text(&o.stdout);
    assert!(info.contains("layers") && info.contains("used"), "{info}");
    let o = kiln_cmd(&["cache", "prune", "--all"])
        .env("KILN_HOME", &private)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("removed 0 layer(s)"),
        "{}",
        text(&o.stdout)
    );
}

/// The scanning hook: the configured scanner sees the image's filesystem read-only, its
/// findings are recorded, `failOn` fails the tests, and with no scanner the record says so.
#[test]
fn the_configured_scanner_sees_the_image_and_its_findings_are_recorded() {
    let parent = base();
    let dir = tempfile::tempdir().unwrap();
    // A scanner of the test's own: it proves it sees the image (a file only the base has, the
    // bash version in its dpkg database) and that it cannot write to it.
    let scanner = write(
        dir.path(),
        "scanner.sh",
        "#!/bin/sh\nroot=\"$1\"\n\
         test -f \"$root/etc/kiln-test-base\" || { echo \"no image at $root\" >&2; exit 3; }\n\
         test -f \"$root/etc/scanned-component\" || { echo 'the component is missing' >&2; exit 3; }\n\
         if touch \"$root/etc/written-by-scanner\" 2>/dev/null; then echo 'the image is writable' >&2; exit 4; fi\n\
         v=$(sed -n '/^Package: bash$/,/^$/s/^Version: //p' \"$root/var/lib/dpkg/status\")\n\
         printf '{\"findings\":[{\"id\":\"KILN-TEST-2\",\"severity\":\"low\",\"package\":\"zlib1g\",\"version\":\"1\"},{\"id\":\"KILN-TEST-1\",\"severity\":\"High\",\"package\":\"bash\",\"version\":\"%s\",\"fixedIn\":\"99\"}]}' \"$v\"\n",
    );
    std::fs::set_permissions(
        &scanner,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    write(
        dir.path(),
        "mark.yaml",
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/scanned-component\n            content: yes\n",
    );
    let config = |extra: &str| {
        write(
            dir.path(),
            "config.yaml",
            &format!(
                "scanning:\n  command: [{}, \"{{root}}\"]\n{extra}",
                scanner.display()
            ),
        )
    };
    let build = |name: &str, config: Option<&Path>| {
        let recipe = write(
            dir.path(),
            "recipe.yml",
            &format!(
                "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: mark.yaml\nimageScanningConfiguration:\n  imageScanningEnabled: true\ndistributions:\n  - region: r1\n    path: {}\n",
                dir.path().join(name).display()
            ),
        );
        let mut c = kiln_cmd(&["build", recipe.to_str().unwrap()]);
        c.env(
            "KILN_CONFIG",
            config.map_or_else(|| dir.path().join("none.yaml"), Path::to_path_buf),
        );
        c.output().unwrap()
    };
    let id = std::process::id();

    let scanned = format!("scanned-{id}");
    let o = build(&scanned, Some(&config("")));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let rec = record(&format!("{scanned}/1.0.0/1"));
    let scan = &rec["scan"];
    assert_eq!(scan["status"], "COMPLETED", "{scan}");
    assert_eq!(scan["total"], 2);
    assert_eq!(scan["counts"]["HIGH"], 1);
    assert_eq!(
        scan["findings"][0]["id"], "KILN-TEST-1",
        "the worst first: {scan}"
    );
    let bash = rec["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bash")
        .unwrap()["version"]
        .clone();
    assert_eq!(
        scan["findings"][0]["version"], bash,
        "the scanner read the image's dpkg database"
    );
    let output = scan["output"].as_str().unwrap();
    assert!(std::fs::read_to_string(output)
        .unwrap()
        .contains("KILN-TEST-2"));
    let shown = text(&kiln(&["image", "get", &format!("{scanned}/1.0.0/1")]).stdout);
    assert!(
        shown.contains("scanned: 2 findings (1 HIGH, 1 LOW)")
            && shown.contains("HIGH KILN-TEST-1 in bash"),
        "{shown}"
    );

    // failOn: the scan's findings fail the tests, and nothing is distributed.
    let refused = format!("scan-refused-{id}");
    let o = build(&refused, Some(&config("  failOn: high\n")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("in TESTING") && out.contains("KILN-TEST-1 (HIGH, bash"),
        "{out}"
    );
    assert!(
        !dir.path().join(&refused).exists(),
        "a refused image was distributed"
    );

    // Asked for, but kiln has no scanner: built, and the record says it was not scanned.
    let unscanned = format!("unscanned-{id}");
    let o = build(&unscanned, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rec = record(&format!("{unscanned}/1.0.0/1"));
    assert_eq!(rec["scan"]["status"], "NOT_SCANNED");
    assert!(
        rec["scan"]["reason"]
            .as_str()
            .unwrap()
            .contains("config.yaml"),
        "{}",
        rec["scan"]
    );
}
