//! Resources, pipelines and the state store, through the command line: real request files,
//! real builds in sandboxes, real kills.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use moto::Moto;

fn arn(kind: &str, rest: &str) -> String {
    format!("arn:kiln:imagebuilder:local:000000000000:{kind}/{rest}")
}

fn ok(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(
        o.status.success(),
        "kiln {args:?} failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn fails(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(
        !o.status.success(),
        "kiln {args:?} should fail:\n{}",
        text(&o.stdout)
    );
    text(&o.stderr)
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(&a)).unwrap()
}

fn component(dir: &Path, file: &str, name: &str, version: Option<&str>, command: &str) -> String {
    let v = version
        .map(|v| format!("semanticVersion: {v}\n"))
        .unwrap_or_default();
    write(
        dir,
        file,
        &format!(
            "name: {name}\n{v}platform: Linux\ndata: |\n  name: {name}\n  schemaVersion: 1.0\n  phases:\n    - name: build\n      steps:\n        - name: Run\n          action: ExecuteBash\n          inputs:\n            commands:\n              - {command}\n"
        ),
    )
    .to_str()
    .unwrap()
    .to_string()
}

#[test]
fn versions_idempotency_immutability_and_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = format!("res{}", std::process::id());

    // Without a version: 1.0.0, then the same version while nothing changed, then 1.0.1.
    let f = component(d, "c.yaml", &n, None, "echo one");
    let c1 = json(&["component", "create", &f]);
    assert_eq!(c1["version"], "1.0.0");
    assert_eq!(c1["created"], true);
    assert_eq!(c1["arn"], arn("component", &format!("{n}/1.0.0/1")));
    assert_eq!(c1["componentType"], "BUILD");
    let again = json(&["component", "create", &f]);
    assert_eq!(again["created"], false);
    assert_eq!(again["version"], "1.0.0");
    let f = component(d, "c.yaml", &n, None, "echo two");
    assert_eq!(json(&["component", "create", &f])["version"], "1.0.1");

    // An explicit version is immutable: the same content is fine, other content is refused.
    let f = component(d, "c.yaml", &n, Some("1.0.0"), "echo one");
    assert_eq!(json(&["component", "create", &f])["created"], false);
    let f = component(d, "c.yaml", &n, Some("1.0.0"), "echo changed");
    let e = fails(&["component", "create", &f]);
    assert!(e.contains("immutable") && e.contains("1.0.2"), "{e}");
    let f = component(d, "c.yaml", &n, Some("2.0.0"), "echo changed");
    assert_eq!(json(&["component", "create", &f])["version"], "2.0.0");

    // Names are lower-cased in ARNs, as AWS does, and looked up case-insensitively: the
    // upper-case name is the same component, so other content under 1.0.0 is refused.
    let upper = n.to_uppercase();
    assert_eq!(
        json(&["component", "get", &format!("{upper}/1.0.0")])["arn"],
        arn("component", &format!("{n}/1.0.0/1"))
    );
    let f = component(d, "u.yaml", &upper, Some("1.0.0"), "echo one");
    let e = fails(&["component", "create", &f]);
    assert!(e.contains("immutable"), "{e}");

    // clientToken: the same request again returns the first result; another request with
    // the same token is refused.
    let tok = format!("tok-{n}");
    let f = write(d, "t.yaml", &format!("name: {n}-tok\nclientToken: {tok}\nplatform: Linux\ndata: |\n  name: t\n  schemaVersion: 1.0\n  phases:\n    - name: build\n      steps:\n        - name: A\n          action: ExecuteBash\n          inputs:\n            commands: [echo a]\n"));
    let t1 = json(&["component", "create", f.to_str().unwrap()]);
    let t2 = json(&["component", "create", f.to_str().unwrap()]);
    assert_eq!(t1["arn"], t2["arn"]);
    assert_eq!(t2["created"], false);
    let f2 = write(d, "t2.yaml", &format!("name: {n}-other\nclientToken: {tok}\nplatform: Linux\ndata: |\n  name: t\n  schemaVersion: 1.0\n  phases:\n    - name: build\n      steps:\n        - name: B\n          action: ExecuteBash\n          inputs:\n            commands: [echo b]\n"));
    let e = fails(&["component", "create", f2.to_str().unwrap()]);
    assert!(e.contains(&tok) && e.contains("different request"), "{e}");

    // Version filters in lists and gets: newest match; x only to the right.
    let listed = json(&["component", "list", "--name", &n, "--version", "1.x.x"]);
    let versions = field_of(&listed, "version");
    assert_eq!(versions, ["1.0.1", "1.0.0"]);
    assert_eq!(
        json(&["component", "get", &format!("{n}/x.x.x")])["version"],
        "2.0.0"
    );
    assert_eq!(
        json(&["component", "get", &format!("{n}/1.0.x")])["version"],
        "1.0.1"
    );
    let e = fails(&["component", "list", "--version", "1.x.0"]);
    assert!(e.contains("once a node is x"), "{e}");
    let e = fails(&["component", "get", &format!("{n}/3.x.x")]);
    assert!(e.contains("no component matches"), "{e}");
    assert_eq!(
        json(&["component", "list", "--name", &n, "--owner", "nobody-here"]),
        serde_json::json!([])
    );

    // Bad requests: every problem, at its line and column, and nothing stored.
    let bad = write(d, "bad.yaml", &format!("name: {n}-bad\nsemanticVersion: 1.0\nplatform: Windows\ncolour: blue\ndata: |\n  name: x\n  schemaVersion: 1.0\n  phases: []\n"));
    let e = fails(&["component", "create", bad.to_str().unwrap()]);
    assert!(e.contains("bad.yaml:2:18"), "{e}");
    assert!(e.contains("bad.yaml:3:11"), "{e}");
    assert!(e.contains("bad.yaml:4:1"), "{e}");
    assert!(e.contains("nothing was stored"), "{e}");
    assert_eq!(
        json(&["component", "list", "--name", &format!("{n}-bad")]),
        serde_json::json!([])
    );

    // A recipe names components by ARN; a wildcard resolves to the newest at each build.
    let r = write(d, "r.yaml", &format!("name: {n}-r\ncontainerType: DOCKER\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: {}\n  - componentArn: {}\n", arn("component", &format!("{n}/1.0.0")), arn("component", &format!("{n}-tok/x.x.x"))));
    let rec = json(&["recipe", "create", r.to_str().unwrap()]);
    assert_eq!(rec["type"], "container-recipe");
    assert_eq!(rec["version"], "1.0.0");
    let missing = write(d, "m.yaml", &format!("name: {n}-m\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: {}\n", arn("component", "no-such-thing/1.0.0")));
    let e = fails(&["recipe", "create", missing.to_str().unwrap()]);
    assert!(
        e.contains("m.yaml:4:5") && e.contains("no component matches"),
        "{e}"
    );
    let infra_in_recipe = write(d, "i.yaml", &format!("name: {n}-i\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: {}\ninfrastructure:\n  builder: vm\n", arn("component", &format!("{n}/1.0.0"))));
    let e = fails(&["recipe", "create", infra_in_recipe.to_str().unwrap()]);
    assert!(
        e.contains("i.yaml:5:1") && e.contains("kiln infrastructure create"),
        "{e}"
    );

    // Deleting what others use fails and names them.
    let e = fails(&["component", "delete", &format!("{n}/1.0.0")]);
    assert!(
        e.contains(&arn("container-recipe", &format!("{n}-r/1.0.0"))),
        "{e}"
    );
    let e = fails(&["component", "delete", &format!("{n}-tok/1.0.0")]);
    assert!(
        e.contains(&format!("{n}-r/1.0.0")),
        "the last match of a wildcard is used: {e}"
    );
    // 1.0.1 is used by nobody.
    ok(&["component", "delete", &format!("{n}/1.0.1")]);
    let e = fails(&["component", "delete", &n]);
    assert!(e.contains("name one version"), "{e}");

    let infra = write(d, "infra.json", &format!("{{\"name\": \"{n}-small\", \"instanceProfileName\": \"ignored\", \"memory\": \"1GiB\"}}"));
    ok(&["infrastructure", "create", infra.to_str().unwrap()]);
    let pipe = write(d, "p.yaml", &format!("name: {n}-p\ncontainerRecipeArn: {}\ninfrastructureConfigurationArn: {}\nschedule:\n  scheduleExpression: cron(0 3 ? * sun *)\n", arn("container-recipe", &format!("{n}-r/1.0.0")), arn("infrastructure-configuration", &format!("{n}-small"))));
    ok(&["pipeline", "create", pipe.to_str().unwrap()]);
    // Its schedule in words, its next run (a Sunday at 03:00 UTC), no runs yet.
    let shown = ok(&["pipeline", "get", &format!("{n}-p")]);
    assert!(
        shown.contains("schedule    at 03:00 on Sunday")
            && shown.contains("EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"),
        "{shown}"
    );
    let next = json(&["pipeline", "get", &format!("{n}-p")])["dateNextRun"]
        .as_str()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap());
    let next = next.unwrap_or_else(|| panic!("no dateNextRun: {shown}"));
    assert_eq!(
        (
            next.format("%a %H:%M").to_string(),
            next.offset().local_minus_utc()
        ),
        ("Sun 03:00".to_string(), 0)
    );
    assert!(ok(&["pipeline", "runs", &format!("{n}-p")]).contains("no scheduled runs yet"));
    // A schedule AWS would refuse is refused where it is written.
    let bad = write(d, "bad.yaml", &format!("name: {n}-bad\ncontainerRecipeArn: {}\ninfrastructureConfigurationArn: {}\nschedule:\n  scheduleExpression: cron(0 0 1 * SUN *)\n", arn("container-recipe", &format!("{n}-r/1.0.0")), arn("infrastructure-configuration", &format!("{n}-small"))));
    let e = fails(&["pipeline", "create", bad.to_str().unwrap()]);
    assert!(
        e.contains("bad.yaml:5:23") && e.contains("day-of-week"),
        "{e}"
    );
    let e = fails(&["recipe", "delete", &format!("{n}-r/1.0.0")]);
    assert!(e.contains(&arn("image-pipeline", &format!("{n}-p"))), "{e}");
    let e = fails(&["infrastructure", "delete", &format!("{n}-small")]);
    assert!(e.contains(&format!("{n}-p")), "{e}");
    // Configurations are updated in place; pipelines too.
    let infra2 = write(
        d,
        "infra.json",
        &format!("{{\"name\": \"{n}-small\", \"memory\": \"2GiB\"}}"),
    );
    let e = fails(&["infrastructure", "create", infra2.to_str().unwrap()]);
    assert!(e.contains("kiln infrastructure update"), "{e}");
    ok(&["infrastructure", "update", infra2.to_str().unwrap()]);
    assert_eq!(
        json(&["infrastructure", "get", &format!("{n}-small")])["request"]["memory"],
        "2GiB"
    );
    // Once the pipeline is gone, the rest can go.
    ok(&["pipeline", "delete", &format!("{n}-p")]);
    ok(&["recipe", "delete", &format!("{n}-r/1.0.0")]);
    ok(&["infrastructure", "delete", &format!("{n}-small")]);
    ok(&["component", "delete", &format!("{n}/1.0.0")]);
}

/// Files for a pipeline whose one component runs `command`; returns the pipeline's name.
fn pipeline(dir: &Path, n: &str, command: &str) -> String {
    let parent = base();
    let f = component(dir, &format!("{n}-c.yaml"), n, None, command);
    ok(&["component", "create", &f]);
    let r = write(
        dir,
        &format!("{n}-r.yaml"),
        &format!("name: {n}\ncontainerType: DOCKER\nparentImage: {parent}\ncomponents:\n  - componentArn: {}\n", arn("component", &format!("{n}/x.x.x"))),
    );
    ok(&["recipe", "create", r.to_str().unwrap()]);
    let i = write(
        dir,
        &format!("{n}-i.yaml"),
        &format!("name: {n}\nlogging:\n  localPath: logs\n"),
    );
    ok(&["infrastructure", "create", i.to_str().unwrap()]);
    let dist = write(
        dir,
        &format!("{n}-d.yaml"),
        &format!("name: {n}\ndistributions:\n  - region: local\n    path: region-{n}\n"),
    );
    ok(&["distribution", "create", dist.to_str().unwrap()]);
    let p = write(
        dir,
        &format!("{n}-p.yaml"),
        &format!(
            "name: {n}\ncontainerRecipeArn: {}\ninfrastructureConfigurationArn: {}\ndistributionConfigurationArn: {}\nimageTestsConfiguration:\n  imageTestsEnabled: true\n  timeoutMinutes: 60\n",
            arn("container-recipe", &format!("{n}/x.x.x")),
            arn("infrastructure-configuration", n),
            arn("distribution-configuration", n)
        ),
    );
    ok(&["pipeline", "create", p.to_str().unwrap()]);
    n.to_string()
}

/// Adds a package to the image's dpkg database (`\\072` is a colon: the step is YAML).
const FAKE_PACKAGE: &str = "printf 'Package\\072 kiln-marker\\nStatus\\072 install ok installed\\nVersion\\072 2\\nArchitecture\\072 all\\n\\n' >> /var/lib/dpkg/status";

#[test]
fn two_pipelines_run_at_once_and_images_record_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = std::process::id();
    let a = pipeline(d, &format!("pa{id}"), "echo a > /etc/a");
    let b = pipeline(d, &format!("pb{id}"), "echo b > /etc/b");
    // b also uploads its logs to S3.
    let s3 = Moto::start();
    s3.create_bucket("kiln-logs");
    let i = write(
        d,
        "pb-i.yaml",
        &format!("name: {b}\nlogging:\n  localPath: logs\n  s3Logs:\n    s3BucketName: kiln-logs\n    s3KeyPrefix: builds\n"),
    );
    ok(&["infrastructure", "update", i.to_str().unwrap()]);
    let start = |p: &str| {
        kiln_cmd(&["pipeline", "start", p])
            .current_dir(d)
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (start(&a), start(&b));
    let mut errors = String::new();
    for (c, p) in [(ca, &a), (cb, &b)] {
        let o = c.wait_with_output().unwrap();
        errors.push_str(&text(&o.stderr));
        assert!(
            o.status.success(),
            "{p}: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert!(text(&o.stdout).contains(&format!("AVAILABLE {p}/1.0.0/1")));
    }
    let ra = record(&format!("{a}/1.0.0/1"));
    assert_eq!(ra["pipeline"], arn("image-pipeline", &a));
    assert_eq!(
        ra["recipeArn"],
        arn("container-recipe", &format!("{a}/1.0.0"))
    );
    assert_eq!(
        ra["components"][0]["arn"],
        arn("component", &format!("{a}/1.0.0/1"))
    );
    assert_eq!(
        states(&ra),
        [
            "PENDING",
            "BUILDING",
            "TESTING",
            "DISTRIBUTING",
            "AVAILABLE"
        ]
    );
    assert!(d.join(format!("region-{a}/index.json")).exists());
    assert!(
        d.join(format!("logs/{a}/1.0.0/1/parent.log")).exists(),
        "logs go where the infrastructure configuration says"
    );
    let local = std::fs::read(d.join(format!("logs/{b}/1.0.0/1/parent.log"))).unwrap();
    let uploaded = tokio::runtime::Runtime::new().unwrap().block_on(
        kiln_s3::S3Client::new(s3.config())
            .get_object("kiln-logs", &format!("builds/{b}/1.0.0/1/parent.log")),
    );
    let uploaded =
        uploaded.unwrap_or_else(|e| panic!("the logs are in the s3Logs bucket: {e}\n{errors}"));
    assert_eq!(uploaded, local);

    // A new component version is picked up by the wildcard; the image records the package
    // change against the pipeline's previous image.
    let f = component(d, &format!("{a}-c.yaml"), &a, None, FAKE_PACKAGE);
    assert_eq!(json(&["component", "create", &f])["version"], "1.0.1");
    let o = kiln_cmd(&["pipeline", "start", &a])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r2 = record(&format!("{a}/1.0.0/2"));
    assert_eq!(
        r2["components"][0]["arn"],
        arn("component", &format!("{a}/1.0.1/1"))
    );
    assert_eq!(r2["previousImage"], arn("image", &format!("{a}/1.0.0/1")));
    assert_eq!(r2["packageDiff"]["added"][0]["name"], "kiln-marker");
    let shown = ok(&["image", "get", &format!("{a}/1.0.0/2")]);
    assert!(shown.contains("+ kiln-marker 2"), "{shown}");
    // The parent is named by the digest of its content too, the same for both builds.
    let chain = ra["parentChainId"].as_str().unwrap();
    assert!(chain.starts_with("sha256:") && chain.len() == 71, "{chain}");
    assert_eq!(r2["parentChainId"], chain);
    assert!(shown.contains(&format!("content {chain}")), "{shown}");
    let listed = ok(&["image", "list", "--pipeline", &a]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
}

fn wait_for_state(image: &str, state: &str) {
    let reached = || {
        let o = kiln(&["image", "get", image, "-o", "json"]);
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["state"] == state
    };
    assert!(
        eventually(Duration::from_secs(120), reached),
        "{image} never reached {state}"
    );
}

#[test]
fn cancel_and_kill_leave_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = std::process::id();
    let marker = format!("sleep 888{}", id % 100);

    // Cancel: the build stops in BUILDING, its processes go, nothing is distributed.
    let c = pipeline(d, &format!("pc{id}"), &format!("{marker}1"));
    let child = kiln_cmd(&["pipeline", "start", &c])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let step = format!("{marker}1");
    let started = || !processes_with(&step).is_empty();
    assert!(
        eventually(Duration::from_secs(120), started),
        "the step never started"
    );
    let out = ok(&["image", "cancel", &format!("{c}/1.0.0/1")]);
    assert!(out.contains("CANCELLED"), "{out}");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("CANCELLED"), "{}", text(&o.stdout));
    assert!(processes_with(&format!("{marker}1")).is_empty());
    assert!(!d.join(format!("region-{c}/index.json")).exists());
    let e = fails(&["image", "cancel", &format!("{c}/1.0.0/1")]);
    assert!(e.contains("only a running build"), "{e}");

    // Kill: the next kiln marks it FAILED (interrupted); its instance is gone.
    let k = pipeline(d, &format!("pk{id}"), &format!("{marker}2"));
    let mut child = kiln_cmd(&["pipeline", "start", &k])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let step = format!("{marker}2");
    let started = || !processes_with(&step).is_empty();
    assert!(
        eventually(Duration::from_secs(120), started),
        "the step never started"
    );
    wait_for_state(&format!("{k}/1.0.0/1"), "BUILDING");
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    assert!(
        eventually(Duration::from_secs(20), || processes_with(&step).is_empty()),
        "the build's processes outlived kiln"
    );
    let rec = record(&format!("{k}/1.0.0/1"));
    assert_eq!(rec["state"], "FAILED");
    assert!(rec["failure"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("interrupted"));
    assert_eq!(
        rec["history"].as_array().unwrap().last().unwrap()["state"],
        "FAILED"
    );
    assert!(!d.join(format!("region-{k}/index.json")).exists());
    assert!(run_folders_of(&k).is_empty());
}

#[test]
fn a_damaged_or_newer_store_gets_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let k = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_HOME", &home)
            .output()
            .unwrap()
    };
    assert!(k(&["image", "list"]).status.success());
    let db = home.join("kiln.db");
    assert!(db.exists());

    // A store from a newer kiln. The change is made in place: the store's newest pages may
    // still be in its write-ahead log, which a copy of the main file alone would miss; closing
    // the connection folds the log back in.
    let set = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('update kiln_schema set version=99'); c.commit(); c.close()",
            db.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(set.success());
    let before = std::fs::read(&db).unwrap();
    let o = k(&["component", "list"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("newer kiln") && e.contains("99"), "{e}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the store was changed");

    // A damaged file.
    std::fs::write(&db, b"this is not a database, and kiln must not replace it").unwrap();
    let o = k(&["image", "list"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains(db.to_str().unwrap()) && e.contains("backup"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not a database, and kiln must not replace it"
    );

    // A store that vanished.
    std::fs::remove_file(&db).unwrap();
    let o = k(&["image", "list"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("missing") || e.contains("gone"), "{e}");
    assert!(
        !db.exists(),
        "kiln made a new empty store over a missing one"
    );
}
