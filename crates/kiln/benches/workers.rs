//! Builds per hour with 1, 2 and 3 workers on this machine: for each count, a fresh fleet on
//! one PostgreSQL cluster (a `kiln serve` that runs no builds itself, N `kiln worker run`
//! processes with data directories of their own), BUILDS pipelines (default 6) of distinct
//! one-component container images on a tiny parent, all started at once through the AWS CLI.
//! Each component waits 3 s (as a download would) and then counts for about a second of CPU
//! (as a compiler would). Timed by the records: from the first build queued to the last one
//! AVAILABLE; the mean build is the time a worker ran it.
//!
//! `cargo bench -p kiln --bench workers [-- BUILDS]`, or bench/workers.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/fleet.rs"]
mod fleet;

use std::time::Duration;

use fleet::{aws_cli, wait_until, Api, Fleet};
use kiln_testkit::postgres::Cluster;
use kiln_testkit::registry::Registry;

fn main() {
    let builds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(6);
    let Some(cli) = aws_cli() else { return };
    let cluster = Cluster::start();
    let registry = Registry::start();
    let parent = tempfile::tempdir().unwrap();
    common::push_tiny_parent(
        parent.path(),
        &registry.host(),
        &["bash", "sh", "cat", "sleep"],
    );
    println!("| workers | builds | wall time | builds per hour | mean build |");
    println!("| --- | --- | --- | --- | --- |");
    for workers in 1..=3u32 {
        let db = format!("round{workers}");
        cluster.create_database(&db);
        let tmp = tempfile::tempdir().unwrap();
        let fleet = Fleet::new(tmp.path(), &cluster.url(&db), &registry.host());
        let key = fleet.account("s1", &[]);
        let (_server, url) = fleet.serve("s1", 0);
        let api = Api {
            cli: &cli,
            url: &url,
            key: &key,
        };
        let _workers: Vec<_> = (1..=workers)
            .map(|i| {
                let name = format!("w{i}");
                let token = fleet.token(&name);
                fleet.worker(&name, &token, 1)
            })
            .collect();
        let infra = api.infrastructure("bench");
        let pipelines: Vec<String> = (0..builds)
            .map(|i| {
                let name = format!("b{workers}-{i}");
                let marker = format!("echo {name} > /etc/bench");
                let count = "i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done";
                let c = api.component(&name, &["sleep 3", count, &marker]);
                api.pipeline(&name, &registry.host(), &[&c], &infra)
            })
            .collect();
        let images: Vec<String> = pipelines.iter().map(|p| api.start(p)).collect();
        for image in &images {
            wait_until(image, Duration::from_secs(1800), || {
                let s = api.state(image);
                assert!(s != "FAILED" && s != "CANCELLED", "{image} is {s}");
                s == "AVAILABLE"
            });
        }
        let records: Vec<serde_json::Value> = images
            .iter()
            .map(|i| {
                serde_json::from_str(&fleet.ok("s1", &["image", "get", i, "-o", "json"])).unwrap()
            })
            .collect();
        let secs = |t: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
                .unwrap()
                .timestamp_millis() as f64
                / 1000.0
        };
        // Queued at `created`; AVAILABLE at the last change of state.
        let first = records
            .iter()
            .map(|r| secs(&r["created"]))
            .fold(f64::INFINITY, f64::min);
        let last = records
            .iter()
            .map(|r| secs(&r["history"].as_array().unwrap().last().unwrap()["at"]))
            .fold(0.0, f64::max);
        let wall = last - first;
        let mean = records
            .iter()
            .map(|r| r["durationMs"].as_f64().unwrap_or(0.0) / 1000.0)
            .sum::<f64>()
            / builds as f64;
        println!(
            "| {workers} | {builds} | {wall:.1} s | {:.0} | {mean:.1} s |",
            builds as f64 * 3600.0 / wall
        );
    }
}
