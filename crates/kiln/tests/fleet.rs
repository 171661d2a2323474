//! A fleet on PostgreSQL: two `kiln serve` replicas and three `kiln worker run` processes over
//! one real PostgreSQL cluster, building real images that the AWS CLI starts. Workers are
//! killed (SIGKILL), paused past their lease (SIGSTOP) and PostgreSQL is restarted with
//! `pg_ctl -m immediate` while builds run: every image still ends AVAILABLE exactly once, with
//! one build version and one tag in its region, and the paused worker is refused when it
//! comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::process::Command;
use std::time::Duration;

use common::{push_tiny_parent, text};
use fleet::{aws_cli, running, wait_until, Api, Fleet};
use kiln_testkit::postgres::Cluster;
use kiln_testkit::registry::Registry;
use serde_json::Value;

/// A PostgreSQL cluster with database `kiln`, a registry holding the tiny parent of
/// `programs`, and a fleet over them in a temporary folder (kept while the folder is).
fn on_postgres(programs: &[&str]) -> (Cluster, Registry, tempfile::TempDir, Fleet) {
    let cluster = Cluster::start();
    cluster.create_database("kiln");
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    push_tiny_parent(tmp.path(), &registry.host(), programs);
    let fleet = Fleet::new(tmp.path(), &cluster.url("kiln"), &registry.host());
    (cluster, registry, tmp, fleet)
}

#[test]
fn two_servers_and_three_workers_survive_killed_and_paused_workers_and_a_database_restart() {
    let Some(cli) = aws_cli() else { return };
    let (cluster, registry, _tmp, fleet) = on_postgres(&["bash", "sh", "cat", "sleep"]);

    // One account on both servers, which run no builds themselves.
    let key = fleet.account("s1", &["s2"]);
    let (s1, url1) = fleet.serve("s1", 0);
    let (s2, url2) = fleet.serve("s2", 0);
    let api1 = Api {
        cli: &cli,
        url: &url1,
        key: &key,
    };
    let api2 = Api {
        cli: &cli,
        url: &url2,
        key: &key,
    };
    let tokens: Vec<String> = ["w1", "w2", "w3"].iter().map(|w| fleet.token(w)).collect();
    let w1 = fleet.worker("w1", &tokens[0], 1);
    let w2 = fleet.worker("w2", &tokens[1], 1);

    // Two pipelines, one started through each server; each build sleeps long enough to be
    // interrupted.
    let slow = api1.component("slow", &["sleep 20", "echo built > /etc/fleet"]);
    let infra = api1.infrastructure("fleet");
    let host = registry.host();
    let images = [
        api1.start(&api1.pipeline("fleet-a", &host, &[&slow], &infra)),
        api2.start(&api2.pipeline("fleet-b", &host, &[&slow], &infra)),
    ];

    // w1 and w2 take one build each.
    wait_until("both builds claimed", Duration::from_secs(60), || {
        running(&cluster).len() == 2
    });
    let held = running(&cluster);
    let holder = |w: &str| held.iter().find(|(_, x)| x == w).unwrap().0.clone();
    let (killed_job, paused_job) = (holder("w1"), holder("w2"));
    std::thread::sleep(Duration::from_secs(3));
    w1.signal("KILL");
    w2.signal("STOP");
    let w3 = fleet.worker("w3", &tokens[2], 1);

    // w3 takes both (the killed worker's at once, the paused one's once its lease lapses);
    // PostgreSQL restarts while it runs the first.
    wait_until("w3 takes a build", Duration::from_secs(120), || {
        running(&cluster).iter().any(|(_, w)| w == "w3")
    });
    cluster.restart_immediate();
    for arn in &images {
        wait_until(&format!("{arn} to end"), Duration::from_secs(300), || {
            matches!(
                api2.state(arn).as_str(),
                "AVAILABLE" | "FAILED" | "CANCELLED"
            )
        });
        let got = api1.call(
            "get-image",
            serde_json::json!({ "imageBuildVersionArn": arn }),
        );
        assert_eq!(
            got["image"]["state"]["status"],
            "AVAILABLE",
            "{got}\n{}\n{}",
            w3.log(),
            s1.log()
        );
    }

    // The paused worker comes back: its lease is gone, so it stops and writes nothing.
    w2.signal("CONT");
    wait_until(
        "w2 to see its lease is gone",
        Duration::from_secs(30),
        || w2.log().contains("lost its lease"),
    );
    for arn in &images {
        assert_eq!(api1.state(arn), "AVAILABLE");
    }
    let attempts = |job: &str| {
        cluster.psql(
            "kiln",
            &format!(
                "SELECT worker || ':' || end_state FROM job_attempts WHERE job = '{job}' ORDER BY number"
            ),
        )
    };
    let killed = attempts(&killed_job);
    assert_eq!(
        killed.split_whitespace().collect::<Vec<_>>(),
        ["w1:lost", "w3:finished"],
        "{killed}\nw3:\n{}",
        w3.log()
    );
    let paused = attempts(&paused_job);
    assert_eq!(
        paused.split_whitespace().collect::<Vec<_>>(),
        ["w2:lost", "w3:finished"],
        "{paused}\nw3:\n{}",
        w3.log()
    );

    // One build version each, and one tag in the region.
    let builds = cluster.psql(
        "kiln",
        "SELECT name || '/' || major || '.' || minor || '.' || patch || '/' || build FROM rows WHERE kind = 'image' ORDER BY name",
    );
    assert_eq!(
        builds.split_whitespace().collect::<Vec<_>>(),
        ["fleet-a/1.0.0/1", "fleet-b/1.0.0/1"],
        "{builds}"
    );
    for name in ["fleet-a", "fleet-b"] {
        let o = Command::new("skopeo")
            .args(["list-tags", "--tls-verify=false"])
            .arg(format!("docker://{}/fleet/{name}", registry.host()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let tags: Value = serde_json::from_slice(&o.stdout).unwrap();
        let tags: Vec<&str> = tags["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // The build's tag and the version's, and one signature: no second attempt published.
        let mut builds: Vec<&str> = tags
            .iter()
            .copied()
            .filter(|t| !t.starts_with("sha256-"))
            .collect();
        builds.sort_unstable();
        assert_eq!(builds, ["1.0.0", "1.0.0-1"], "{name}: {tags:?}");
        let signatures = tags.iter().filter(|t| t.ends_with(".sig")).count();
        assert_eq!(signatures, 1, "{name}: {tags:?}");
    }

    // Which worker ran each attempt is shown with the image.
    let shown = fleet.ok("s1", &["image", "get", &images[0]]);
    assert!(
        shown.contains("attempt 2 of 3: w3 (ran it to its end"),
        "{shown}"
    );

    // Its log, as a server shows it: both attempts' lines, numbered once, from the store (the
    // workers' data directories are not the server's).
    let log = fleet.ok("s2", &["image", "logs", &images[0]]);
    assert!(log.contains("### build.log (from the store)"), "{log}");
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
    };
    assert!(at("component 1/1 slow") < at("attempt 2 of 3"), "{log}");
    assert!(at("attempt 2 of 3") < at("== AVAILABLE"), "{log}");
    assert_eq!(log.matches("== AVAILABLE").count(), 1, "{log}");
    drop((s1, s2, w2, w3));
}

#[test]
fn a_worker_with_only_its_token_builds_through_the_server_and_stops_when_revoked() {
    let Some(cli) = aws_cli() else { return };
    let (_cluster, registry, tmp, fleet) = on_postgres(&["bash", "sh", "cat"]);
    let d = tmp.path();
    let key = fleet.account("s1", &[]);
    let (s1, url) = fleet.serve("s1", 0);
    let api = Api {
        cli: &cli,
        url: &url,
        key: &key,
    };
    let token = fleet.token("remote");

    // The worker's configuration names no store: it knows the server and its token only.
    let own = common::write(
        d,
        "worker.yaml",
        &format!(
            "regions:\n  fleet: {{registry: \"{}\", namespace: fleet}}\n",
            registry.host()
        ),
    );
    let (worker, line) = fleet.spawn(
        "remote",
        &["worker", "run", "--server", &url],
        &[
            ("KILN_WORKER_TOKEN", &token),
            ("KILN_CONFIG", own.to_str().unwrap()),
        ],
    );
    assert_eq!(line, "worker remote ready", "{}", worker.log());

    let c = api.component(
        "hello",
        &["echo hello from the worker", "echo hello > /etc/hello"],
    );
    let infra = api.infrastructure("remote");
    let image = api.start(&api.pipeline("remote-a", &registry.host(), &[&c], &infra));
    // The server's side follows the log live while the worker on its own data directory runs
    // the build, and sees it to its end.
    let follow = fleet.spawn_to("s1", "follow", &["image", "logs", &image, "--follow"]);
    wait_until("the build to end", Duration::from_secs(300), || {
        matches!(
            api.state(&image).as_str(),
            "AVAILABLE" | "FAILED" | "CANCELLED"
        )
    });
    assert_eq!(
        api.state(&image),
        "AVAILABLE",
        "{}\n{}",
        worker.log(),
        s1.log()
    );
    let shown = fleet.ok("s1", &["image", "get", &image]);
    assert!(
        shown.contains("attempt 1 of 3: remote (ran it to its end"),
        "{shown}"
    );
    assert!(
        !fleet.home("remote").join("kiln.db").exists(),
        "the worker keeps no store of its own"
    );
    let mut follow = follow;
    assert_eq!(
        wait_for_exit(&mut follow, Duration::from_secs(30)),
        Some(0),
        "{}",
        follow.log()
    );
    let followed = follow.log();
    for line in [
        "component 1/1 hello",
        "hello from the worker",
        "== AVAILABLE",
    ] {
        assert!(followed.contains(line), "{line:?} not in:\n{followed}");
    }
    // The component's own log, sent when the build ended.
    let component = fleet.ok("s1", &["image", "logs", &image, "--component", "hello"]);
    assert!(
        component.contains("### build-01-hello/console.log (from the store)")
            && component.contains("hello from the worker"),
        "{component}"
    );

    // Revoked: its next call is refused and it stops.
    fleet.ok("s1", &["worker", "token", "revoke", "remote"]);
    let mut worker = worker;
    let status = wait_for_exit(&mut worker, Duration::from_secs(60));
    assert_eq!(status, Some(1), "{}", worker.log());
    assert!(worker.log().contains("revoked"), "{}", worker.log());
}

fn wait_for_exit(p: &mut fleet::Proc, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(code) = p.try_wait() {
            return code;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
