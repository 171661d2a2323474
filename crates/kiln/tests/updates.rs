//! kiln's rebuild conditions against real servers: package updates from an apt repository on
//! a loopback port, asked in a real sandbox over a real image's layers; a parent tag re-pushed
//! to a real registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use kiln_core::build::BuildOptions;
use kiln_core::record::{ImageRecord, OutputKind};
use kiln_core::store::{Home, LayerStore};
use kiln_core::updates::{package_updates, parent_moved, PackageUpdate, ParentMoved, UpdateError};
use kiln_instance::LocalLauncher;

/// The launcher builds use, with this test's kiln binary as the sandbox helper (the test
/// binary is not kiln).
fn launcher() -> LocalLauncher {
    let kiln = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    LocalLauncher {
        helper: (
            kiln.clone(),
            vec![kiln_instance::sandbox::HELPER_ARG.into()],
        ),
        keeper: (kiln, vec![kiln_instance::vm::keeper::KEEPER_ARG.into()]),
        agent: None,
    }
}

fn image(build_version: &str) -> ImageRecord {
    serde_json::from_value(record(build_version)).unwrap()
}

fn build(recipe: &Path) {
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A flat apt repository (`deb [trusted=yes] http://127.0.0.1:PORT/ ./`) made with dpkg-deb
/// and dpkg-scanpackages, served by python3's http.server; killed when dropped.
struct AptRepo {
    dir: tempfile::TempDir,
    server: Option<Child>,
    port: u16,
}

impl AptRepo {
    fn start() -> AptRepo {
        for tool in ["dpkg-deb", "dpkg-scanpackages", "python3"] {
            kiln_testkit::require_tool(tool);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let mut server = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir.path().join("repo"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 43239 (http://127.0.0.1:43239/) ..."
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_once(" port ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said: {line}"));
        AptRepo {
            dir,
            server: Some(server),
            port,
        }
    }

    fn source_line(&self) -> String {
        format!("deb [trusted=yes] http://127.0.0.1:{}/ ./", self.port)
    }

    /// Adds `kiln-probe` at `version` and makes the index again.
    fn add_probe(&self, version: &str) {
        let pkg = self.dir.path().join(format!("kiln-probe-{version}"));
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(pkg.join("usr/share/kiln-probe")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            format!("Package: kiln-probe\nVersion: {version}\nArchitecture: all\nMaintainer: kiln tests <kiln@localhost>\nDescription: a package kiln's tests upgrade\n"),
        )
        .unwrap();
        std::fs::write(pkg.join("usr/share/kiln-probe/version"), version).unwrap();
        let repo = self.dir.path().join("repo");
        let o = Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&pkg)
            .arg(repo.join(format!("kiln-probe_{version}_all.deb")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o = Command::new("dpkg-scanpackages")
            .args(["--multiversion", ".", "/dev/null"])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        std::fs::write(repo.join("Packages"), &o.stdout).unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every layer of an image as the store has it: its blob's digest, and every path of its tree
/// with size, mode and modification time.
fn layer_state(home: &Home, rec: &ImageRecord) -> Vec<(String, String, Vec<String>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        use std::os::unix::fs::MetadataExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = e.metadata().unwrap();
            let p = e.path();
            out.push(format!(
                "{} {} {:o} {}.{}",
                p.strip_prefix(root).unwrap().display(),
                m.len(),
                m.mode(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let store = LayerStore::new(home.clone());
    rec.layers
        .iter()
        .map(|d| {
            let layer = store.get(d).unwrap();
            let blob = kiln_image::digest::sha256_file(&layer.blob).unwrap();
            let mut tree = Vec::new();
            walk(&layer.fs, &layer.fs, &mut tree);
            (d.clone(), blob, tree)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn package_updates_come_from_the_images_own_apt_sources() {
    let parent = base();
    let mut repo = AptRepo::start();
    repo.add_probe("1.0");
    let dir = tempfile::tempdir().unwrap();
    let source = repo.source_line();
    write(
        dir.path(),
        "probe.yaml",
        &format!(
            "name: probe\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Install\n        action: ExecuteBash\n        inputs:\n          commands:\n            - rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n            - \"echo '{source}' > /etc/apt/sources.list.d/kiln-probe.list\"\n            - apt-get update\n            - apt-get install -y kiln-probe\n"
        ),
    );
    let name = format!("updates-apt-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        // The apt repository listens on the host's loopback, which only `network: host` reaches.
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ninfrastructure:\n  network: host\ncomponents:\n  - path: probe.yaml\n"),
    );
    build(&recipe);
    let rec = image(&format!("{name}/1.0.0/1"));
    assert!(
        rec.packages
            .iter()
            .any(|p| p.name == "kiln-probe" && p.version == "1.0"),
        "{:?}",
        rec.packages
    );
    // The opt-in is on the record, and `kiln image get` says so.
    assert_eq!(rec.network, Some(kiln_instance::sandbox::Network::Host));
    let shown = kiln(&["image", "get", &format!("{name}/1.0.0/1")]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("network    host (the recipe's opt-in"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    let home = Home::new(home());
    let launcher = launcher();
    let before = layer_state(&home, &rec);

    let t = std::time::Instant::now();
    let none = package_updates(&home, &launcher, &rec).await.unwrap();
    eprintln!("package_updates, nothing new: {:?}", t.elapsed());
    assert_eq!(none, []);

    repo.add_probe("1.1");
    let updates = package_updates(&home, &launcher, &rec).await.unwrap();
    assert_eq!(
        updates,
        [PackageUpdate {
            name: "kiln-probe".into(),
            from: "1.0".into(),
            to: "1.1".into(),
        }]
    );

    // A repository that does not answer is a failed check, never "no updates".
    repo.stop();
    let e = package_updates(&home, &launcher, &rec).await.unwrap_err();
    eprintln!("the check without its repository: {e}");
    match &e {
        UpdateError::Check {
            command,
            status,
            tail,
        } => {
            assert!(command.starts_with("apt-get"), "{e}");
            assert!(command.ends_with(" update"), "{e}");
            assert!(!status.success(), "{e}");
            assert!(
                tail.iter()
                    .any(|l| l.contains(&format!("127.0.0.1:{}", repo.port))),
                "{e}"
            );
        }
        other => panic!("not a failed check: {other}"),
    }

    // The image's layers are as they were, and no sandbox is left behind.
    assert_eq!(layer_state(&home, &rec), before);
    assert_eq!(run_folders_of("updates-"), Vec::<PathBuf>::new());
}

/// skopeo copies an OCI layout's image to a registry tag; returns the registry's digest.
fn push(layout: &Path, tag: &str, to: &str) -> String {
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{to}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{to}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).trim().to_string()
}

fn layout_of(rec: &ImageRecord) -> (PathBuf, String) {
    let out = rec
        .outputs
        .iter()
        .find(|o| o.kind == OutputKind::OciLayout)
        .unwrap();
    (out.path().to_path_buf(), out.tag.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_moved_sees_a_tag_pushed_again() {
    kiln_testkit::require_tool("skopeo");
    base();
    let registry = kiln_testkit::registry::Registry::start();
    let tag = format!("{}/base:1", registry.host());
    let (layout, layout_tag) = layout_of(&image("test-base/1.0.0"));
    let first = push(&layout, &layout_tag, &tag);

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mark.yaml",
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-updates-child\n            content: child\n",
    );
    let name = format!("updates-parent-{}", std::process::id());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!("name: {name}\nsemanticVersion: 1.0.0\nparentImage: docker://{tag}\ncomponents:\n  - path: mark.yaml\n"),
    );
    build(&recipe);
    let rec = image(&format!("{name}/1.0.0/1"));
    let parent = rec.parent.as_ref().unwrap();
    assert_eq!(parent.digest.as_deref(), Some(first.as_str()));

    let options = BuildOptions::default();
    let t = std::time::Instant::now();
    assert_eq!(parent_moved(&options, &rec).await.unwrap(), None);
    eprintln!("parent_moved, unchanged: {:?}", t.elapsed());

    // The same tag, other content: the child image itself.
    let (child_layout, child_tag) = layout_of(&rec);
    let second = push(&child_layout, &child_tag, &tag);
    assert_ne!(first, second);
    assert_eq!(
        parent_moved(&options, &rec).await.unwrap(),
        Some(ParentMoved {
            reference: format!("docker://{tag}"),
            was: first,
            now: second,
        })
    );

    // A tag that is gone is an error, not "unchanged".
    let gone = {
        let mut r = rec.clone();
        let p = r.parent.as_mut().unwrap();
        p.reference = format!("docker://{}/base:2", registry.host());
        r
    };
    let e = parent_moved(&options, &gone).await.unwrap_err();
    assert!(e.to_string().contains("no such tag"), "{e}");
}

/// Records what the scheduler would start, without building.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<kiln_core::pipeline::Plan>>);

#[async_trait::async_trait]
impl kiln_core::scheduler::Starter for Recorded {
    async fn start(&self, plan: kiln_core::pipeline::Plan) -> Result<String, String> {
        let mut plans = self.0.lock().unwrap();
        plans.push(plan);
        Ok(format!("recorded-{}", plans.len()))
    }
}

/// The scheduler of a pipeline with `rebuildWhen: [osPackages]`: its scheduled run skips while
/// the last image's apt sources have nothing new, and builds once a newer `kiln-probe` is in
/// the repository, saying which package.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_run_rebuilds_once_the_images_packages_have_updates() {
    use kiln_core::scheduler::{Decision, LocalChecks, Scheduler};
    use kiln_core::updates::Trigger;

    let parent = base();
    let repo = AptRepo::start();
    repo.add_probe("1.0");
    let dir = tempfile::tempdir().unwrap();
    let n = format!("sched-apt-{}", std::process::id());
    let source = repo.source_line();
    let doc = format!(
        "name: {n}\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Install\n        action: ExecuteBash\n        inputs:\n          commands:\n            - rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n            - \"echo '{source}' > /etc/apt/sources.list.d/kiln-probe.list\"\n            - apt-get update\n            - apt-get install -y kiln-probe\n"
    );
    let arn =
        |kind: &str, rest: &str| format!("arn:kiln:imagebuilder:local:000000000000:{kind}/{rest}");
    let files = [
        (
            "component",
            serde_json::json!({"name": n, "semanticVersion": "1.0.0", "platform": "Linux", "data": doc}),
        ),
        (
            "recipe",
            serde_json::json!({"name": n, "semanticVersion": "1.0.0", "containerType": "DOCKER",
            "parentImage": parent, "components": [{"componentArn": arn("component", &format!("{n}/x.x.x"))}]}),
        ),
        // The apt repository listens on the host's loopback: only `network: host` reaches it.
        (
            "infrastructure",
            serde_json::json!({"name": n, "network": "host"}),
        ),
        (
            "pipeline",
            serde_json::json!({"name": n,
            "containerRecipeArn": arn("container-recipe", &format!("{n}/1.0.0")),
            "infrastructureConfigurationArn": arn("infrastructure-configuration", &n),
            "schedule": {"scheduleExpression": "rate(1 minute)"},
            "rebuildWhen": ["osPackages"]}),
        ),
    ];
    for (noun, body) in files {
        let f = write(dir.path(), &format!("{noun}.json"), &body.to_string());
        let o = kiln(&[noun, "create", f.to_str().unwrap()]);
        assert!(o.status.success(), "{noun}: {}", text(&o.stderr));
    }
    let o = kiln(&["pipeline", "start", &n]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );

    let home = Home::new(home());
    let store = kiln_core::state::Store::open(&home).await.unwrap();
    let resources = kiln_core::resources::Resources::new(store.clone());
    let pipeline = resources
        .get(
            &kiln_core::principal::Principal::local("t"),
            &arn("image-pipeline", &n),
            &[kiln_store::Kind::ImagePipeline],
        )
        .await
        .unwrap();
    let clock =
        kiln_schedule::ManualClock::new(pipeline.date_created + chrono::Duration::minutes(1));
    let recorded = std::sync::Arc::new(Recorded::default());
    let scheduler = Scheduler::new(
        resources,
        kiln_core::record::Records::new(store),
        std::sync::Arc::new(clock.clone()),
        recorded.clone(),
    )
    .with_checks(std::sync::Arc::new(LocalChecks {
        home: home.clone(),
        options: BuildOptions::default(),
        launcher: std::sync::Arc::new(launcher()),
    }));
    let mine = |o: Vec<kiln_core::scheduler::Outcome>| -> Vec<Decision> {
        o.into_iter()
            .filter(|o| o.pipeline == pipeline.arn)
            .map(|o| o.decision)
            .collect()
    };

    // Minutes, not days: the test home is shared, and a scheduler that claimed other tests'
    // pipelines' runs days ahead would hold them back for those days.
    clock.advance(chrono::Duration::minutes(1));
    let first = mine(scheduler.tick().await.unwrap());
    match first.as_slice() {
        [Decision::Skipped { reason }] => {
            assert!(reason.contains("no dependency updates"), "{reason}")
        }
        d => panic!("{d:?}"),
    }
    let of_mine = || {
        recorded
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.pipeline.arn == pipeline.arn)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(of_mine().is_empty());

    repo.add_probe("1.1");
    clock.advance(chrono::Duration::minutes(1));
    let second = mine(scheduler.tick().await.unwrap());
    match second.as_slice() {
        [Decision::Started { reason, .. }] => {
            assert!(reason.contains("kiln-probe 1.0 -> 1.1"), "{reason}")
        }
        d => panic!("{d:?}"),
    }
    let plans = of_mine();
    assert_eq!(plans.len(), 1);
    assert_eq!(
        plans[0].origin.build_type,
        kiln_core::record::BuildType::Scheduled
    );
    assert_eq!(
        plans[0].origin.triggers,
        [Trigger::Packages {
            updates: vec![PackageUpdate {
                name: "kiln-probe".into(),
                from: "1.0".into(),
                to: "1.1".into(),
            }]
        }]
    );
}
