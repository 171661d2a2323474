//! How listing and getting images scales: a state store with 10,000 realistic image records
//! (components with steps, ~100 packages each), timed in process (the store calls every
//! command makes) and, when the kiln binary is there, as whole `kiln image ...` commands.
//!
//! `cargo bench -p kiln-core --bench images [-- COUNT]`; bench/images.sh builds kiln in
//! release mode first and runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_core::record::*;
use kiln_core::sample::image_record;
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_store::{Filter, Order};

struct Timing {
    what: String,
    median: Duration,
    p95: Duration,
}

fn time<F: FnMut()>(what: &str, runs: usize, mut f: F) -> Timing {
    let mut all: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    Timing {
        what: what.into(),
        median: all[all.len() / 2],
        p95: all[(all.len() * 95 / 100).min(all.len() - 1)],
    }
}

fn kiln_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    ["release/kiln", "debug/kiln"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("kiln-bench-images-{count}"));
    let _ = std::fs::remove_dir_all(&dir);
    let home = Home::new(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Instant::now();
    let records = rt.block_on(async {
        let store = Store::open(&home).await.unwrap();
        let rows: Vec<_> = (0..count)
            .map(|i| {
                // (name, version) is unique per index: one build each.
                let mut r = image_record(i, LOCAL_ACCOUNT);
                r.build = 1;
                r.arn = image_arn(&r.account, &r.name, &r.version, r.build);
                row_of(&r).unwrap()
            })
            .collect();
        store.db().import(rows).await.unwrap();
        Records::new(store)
    });
    let fill = t.elapsed();
    let db_size = std::fs::metadata(dir.join("kiln.db"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.join("kiln.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "{count} image records stored in {:.1} s ({} MiB)",
        fill.as_secs_f64(),
        db_size >> 20
    );

    let runs = 30;
    let mut out = Vec::new();
    let newest_arn = rt.block_on(async {
        let mut f = Filter {
            name: Some("img-7".into()),
            limit: Some(1),
            ..Filter::default()
        };
        f.order = Order::Version;
        records.summaries(&f).await.unwrap()[0].arn.clone()
    });
    out.push(time("store: list all images (summaries)", runs, || {
        let n = rt
            .block_on(records.summaries(&Filter::default()))
            .unwrap()
            .len();
        assert_eq!(n, count);
    }));
    out.push(time("store: list one name (NAME)", runs, || {
        let f = Filter {
            name: Some("img-7".into()),
            ..Filter::default()
        };
        rt.block_on(records.summaries(&f)).unwrap();
    }));
    out.push(time(
        "store: list a version filter (NAME/1.3.x)",
        runs,
        || {
            let f = Filter {
                name: Some("img-7".into()),
                version: [Some(1), Some(3), None],
                ..Filter::default()
            };
            rt.block_on(records.summaries(&f)).unwrap();
        },
    ));
    out.push(time("store: get one image by ARN", runs, || {
        rt.block_on(records.get(&newest_arn)).unwrap().unwrap();
    }));
    out.push(time("store: newest AVAILABLE of NAME/1.x.x", runs, || {
        let q: ImageQuery = "img-7/1.x.x".parse().unwrap();
        rt.block_on(records.newest_available(&q)).unwrap().unwrap();
    }));
    out.push(time("store: recovery check (every command)", runs, || {
        rt.block_on(
            records.recover_interrupted(&kiln_core::record::LocalRuns, &Default::default()),
        )
        .unwrap();
    }));
    out.push(time("store: previous image of the pipeline", runs, || {
        let r = rt.block_on(records.get(&newest_arn)).unwrap().unwrap();
        rt.block_on(kiln_core::inventory::previous_image(&records, &r))
            .unwrap();
    }));
    if let Some(kiln) = kiln_binary() {
        let cli = |args: &[&str]| {
            let o = std::process::Command::new(&kiln)
                .args(args)
                .env("KILN_HOME", &dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        let short = newest_arn.rsplit("image/").next().unwrap_or("").to_string();
        out.push(time("kiln image list (first 100 rows)", runs, || {
            cli(&["image", "list"])
        }));
        out.push(time("kiln image list --max-results 0 (all)", 10, || {
            cli(&["image", "list", "--max-results", "0"])
        }));
        out.push(time("kiln image list img-7/1.3.x", runs, || {
            cli(&["image", "list", "img-7/1.3.x"])
        }));
        out.push(time("kiln image get NAME/VERSION/BUILD", runs, || {
            cli(&["image", "get", &short])
        }));
        out.push(time("kiln image get img-7 (newest)", runs, || {
            cli(&["image", "get", "img-7"])
        }));
        println!("(commands: {})", kiln.display());
    }
    println!("{:<45} {:>10} {:>10}", "", "median", "p95");
    for t in &out {
        println!(
            "{:<45} {:>8.1}ms {:>8.1}ms",
            t.what,
            t.median.as_secs_f64() * 1e3,
            t.p95.as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
