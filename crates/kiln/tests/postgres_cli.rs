//! kiln on PostgreSQL (`store: postgres://...`): the real binary building real images with its
//! resources, records and workers in a real PostgreSQL cluster the test starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{push_tiny_parent, text, write};
use kiln_testkit::postgres::Cluster;
use kiln_testkit::registry::Registry;

fn kiln(home: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .env("KILN_CONFIG", config)
        .env("KILN_PLAIN", "1")
        .output()
        .expect("kiln runs")
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

#[test]
fn builds_keep_their_records_in_postgres_when_the_configuration_says_so() {
    let cluster = Cluster::start();
    cluster.create_database("kiln");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let registry = Registry::start();
    push_tiny_parent(d, &registry.host(), &["bash", "sh", "cat"]);
    let config = write(
        d,
        "config.yaml",
        &format!(
            "store: {}\ntrust:\n  untrustedComponents: sandbox\n",
            cluster.url("kiln")
        ),
    );
    write(
        d,
        "mark.yaml",
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: ExecuteBash\n        inputs:\n          commands: ['echo on postgres > /etc/kiln-pg']\n",
    );
    let recipe = write(
        d,
        "recipe.yml",
        &format!(
            "name: pg-tiny\nsemanticVersion: 1.0.0\nparentImage: docker://{}/base/tiny:1.0.0\ncomponents:\n  - path: mark.yaml\n",
            registry.host()
        ),
    );
    let r = recipe.to_str().unwrap();
    let out = ok(kiln(&home, &config, &["build", r]), "the first build");
    assert!(out.contains("AVAILABLE pg-tiny/1.0.0/1"), "{out}");
    let out = ok(kiln(&home, &config, &["build", r]), "the second build");
    assert!(
        out.contains("AVAILABLE pg-tiny/1.0.0/2"),
        "numbered by PostgreSQL: {out}"
    );

    let listed: serde_json::Value = serde_json::from_str(&ok(
        kiln(&home, &config, &["image", "list", "--output", "json"]),
        "image list",
    ))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        !home.join("kiln.db").exists(),
        "nothing is kept in the embedded store"
    );
    let stored = cluster.psql(
        "kiln",
        "SELECT state FROM rows WHERE kind = 'image' ORDER BY build",
    );
    assert_eq!(
        stored.split_whitespace().collect::<Vec<_>>(),
        ["AVAILABLE", "AVAILABLE"],
        "{stored}"
    );

    ok(
        kiln(&home, &config, &["worker", "token", "create", "w1"]),
        "worker token",
    );
    let workers = cluster.psql("kiln", "SELECT name FROM workers");
    assert_eq!(workers.trim(), "w1");
}

#[test]
fn a_bad_or_unreachable_store_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let config = write(d, "config.yaml", "store: mysql://kiln@db/kiln\n");
    let o = kiln(&home, &config, &["image", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("config.yaml:1:8") && err.contains("PostgreSQL URL"),
        "{err}"
    );

    let config = write(d, "config.yaml", "cache:\n  region: nowhere\n");
    let o = kiln(&home, &config, &["image", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("config.yaml:2:11") && err.contains("names no region of `regions:`"),
        "{err}"
    );

    // Port 1 on loopback: nothing listens there.
    let config = write(
        d,
        "config.yaml",
        "store: postgres://kiln:hunter2-secret@127.0.0.1:1/images\n",
    );
    let o = kiln(&home, &config, &["image", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("127.0.0.1:1/images"), "{err}");
    assert!(!err.contains("hunter2"), "the password is shown: {err}");
    assert!(!home.join("kiln.db").exists());
}

#[test]
fn a_step_built_on_one_host_is_reused_from_the_shared_step_cache_on_another() {
    let cluster = Cluster::start();
    cluster.create_database("kiln");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start();
    push_tiny_parent(d, &registry.host(), &["bash", "sh", "cat"]);
    let config = write(
        d,
        "config.yaml",
        &format!(
            "store: {}\ntrust:\n  untrustedComponents: sandbox\nregions:\n  cache: {{registry: \"{}\", namespace: shared}}\ncache:\n  region: cache\n",
            cluster.url("kiln"),
            registry.host()
        ),
    );
    // Its output differs on every run: only a reused layer is the same.
    write(
        d,
        "random.yaml",
        "name: random\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Roll\n        action: ExecuteBash\n        inputs:\n          commands: ['echo $RANDOM$RANDOM$RANDOM > /etc/roll']\n",
    );
    let recipe = write(
        d,
        "recipe.yml",
        &format!(
            "name: shared-tiny\nsemanticVersion: 1.0.0\nparentImage: docker://{}/base/tiny:1.0.0\ncomponents:\n  - path: random.yaml\n",
            registry.host()
        ),
    );
    let r = recipe.to_str().unwrap();
    let (one, two) = (d.join("host-1"), d.join("host-2"));
    let first = kiln(&one, &config, &["build", r]);
    let out = ok(first, "the build on the first host");
    assert!(out.contains("AVAILABLE shared-tiny/1.0.0/1"), "{out}");
    let second = kiln(&two, &config, &["build", r]);
    let err = text(&second.stderr);
    let out = ok(second, "the build on the second host");
    assert!(out.contains("AVAILABLE shared-tiny/1.0.0/2"), "{out}");
    assert!(err.contains("from the shared step cache"), "{err}");

    let component = |build: &str| {
        let rec: serde_json::Value = serde_json::from_str(&ok(
            kiln(&one, &config, &["image", "get", build, "-o", "json"]),
            "image get",
        ))
        .unwrap();
        rec["components"][0].clone()
    };
    let (made, reused) = (
        component("shared-tiny/1.0.0/1"),
        component("shared-tiny/1.0.0/2"),
    );
    assert_eq!(made["cache"], "miss", "{made}");
    assert_eq!(reused["cache"], "hit", "{reused}");
    assert_eq!(
        made["layer"], reused["layer"],
        "the same layer, not a rebuild"
    );
    let entries = cluster.psql(
        "kiln",
        "SELECT count(*) FROM rows WHERE kind = 'step-cache-entry'",
    );
    assert_eq!(entries.trim(), "1", "{entries}");
}
