//! The stages over a fake launcher and a store in a temporary folder: no root, no namespaces,
//! no QEMU. The fake's programs do what each test scripts; everything else (parent import,
//! step cache, layer capture, records, the test cache, distribution into layouts) is real.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_instance::fake::{FakeExec, FakeLauncher, FakeReply};
use kiln_instance::{BuilderKind, LaunchSpec};

use super::*;
use crate::recipe::RecipeSource;
use crate::record::{OutputKind, TestStatus};
use crate::state::Store;

/// Collects every event, and checks each one survives the trip to JSON and back.
#[derive(Default)]
struct Collect(Mutex<Vec<BuildEvent>>);

impl BuildObserver for Collect {
    fn event(&self, e: &BuildEvent) {
        let text = serde_json::to_string(e).unwrap();
        let back: BuildEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, e, "{text}");
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Collect {
    fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

pub(crate) const COMPONENT: &str = r#"name: greet
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Greet
        action: ExecuteBash
        inputs:
          commands:
            - echo hello > /etc/greeting
  - name: test
    steps:
      - name: Check
        action: ExecuteBash
        inputs:
          commands:
            - grep -q hello /etc/greeting
"#;

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) home: Home,
    pub(crate) store: Store,
}

impl Fixture {
    /// A data directory, a parent image (an OCI layout with one layer holding a dpkg
    /// database), and the component file.
    pub(crate) async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        let store = Store::open(&home).await.unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        std::fs::write(root.join("etc/os-release"), "ID=fake\n").unwrap();
        std::fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\n\n",
        )
        .unwrap();
        let blobs = dir.path().join("blobs");
        let blob =
            kiln_image::write_layer(&root, &[], 0, kiln_image::Compression::Gzip, &blobs).unwrap();
        kiln_image::write_image(
            &dir.path().join("parent"),
            "base",
            &[blob],
            &kiln_image::ImageSettings::default(),
        )
        .unwrap();
        std::fs::write(dir.path().join("greet.yml"), COMPONENT).unwrap();
        Fixture { dir, home, store }
    }

    fn recipe(&self, extra: &str) -> Recipe {
        let text = format!(
            "name: web\nsemanticVersion: 1.0.0\nparentImage: oci:parent:base\n\
             components:\n  - path: greet.yml\noutputs: [oci]\n{extra}"
        );
        crate::recipe::parse(RecipeSource {
            path: self.dir.path().join("recipe.yml"),
            text,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn builder(&self, launcher: Arc<FakeLauncher>) -> Builder {
        let options = BuildOptions {
            epoch: Some(0),
            cache_max_bytes: u64::MAX,
            ..BuildOptions::default()
        };
        Builder::new(
            self.home.clone(),
            options,
            Origin::of(Principal::local("tester")),
            launcher,
        )
        .with_store(self.store.clone())
    }

    fn region(&self) -> PathBuf {
        self.home.regions().join("local")
    }
}

/// A launcher whose build step writes /etc/greeting and whose other programs succeed.
pub(crate) fn greeting_launcher() -> Arc<FakeLauncher> {
    Arc::new(FakeLauncher::new(|e: &FakeExec| {
        match e.script.as_deref() {
            Some(s) if s.contains("echo hello") => {
                FakeReply::ok().writing("etc/greeting", b"hello\n")
            }
            _ => FakeReply::ok(),
        }
    }))
}

fn sandboxes(launcher: &FakeLauncher) -> Vec<String> {
    launcher
        .launches()
        .iter()
        .filter(|l| l.kind() == BuilderKind::Sandbox)
        .map(|l| l.id().to_string())
        .collect()
}

fn tags(dir: &Path) -> Vec<String> {
    let mut t = kiln_image::list_tags(dir).unwrap_or_default();
    t.sort();
    t
}

#[tokio::test]
async fn a_build_captures_tests_and_distributes_and_a_rebuild_takes_it_all_from_caches() {
    let f = Fixture::new().await;
    let launcher = greeting_launcher();
    let recipe = f.recipe("");
    let events = Arc::new(Collect::default());

    let rec = f
        .builder(launcher.clone())
        .build(&recipe, events.clone())
        .await
        .unwrap();
    assert_eq!(rec.state, State::Available, "{:?}", rec.failure);
    let c = &rec.components[0];
    assert_eq!(c.cache, CacheUse::Miss);
    let layer = c.layer.clone().expect("the component made a layer");
    assert_eq!(rec.layers.last(), Some(&layer));
    assert_eq!(rec.tests.as_ref().unwrap().status, TestStatus::Passed);
    assert_eq!(
        rec.tests.as_ref().unwrap().instance,
        Some(BuilderKind::Sandbox)
    );
    // The component ran in one sandbox, the tests in a fresh one.
    assert_eq!(sandboxes(&launcher).len(), 2);
    let test_exec = launcher.execs().into_iter().last().unwrap();
    assert!(test_exec.script.unwrap().contains("grep -q hello"));
    // The captured layer holds what the step wrote.
    let stored = LayerStore::new(f.home.clone()).get(&layer).unwrap();
    assert_eq!(
        std::fs::read(stored.fs.join("etc/greeting")).unwrap(),
        b"hello\n"
    );
    assert_eq!(tags(&f.region()), vec!["1.0.0", "1.0.0-1"]);
    assert_eq!(rec.outputs.len(), 2);
    assert!(rec.outputs.iter().all(|o| o.kind == OutputKind::OciLayout));
    assert_eq!(
        rec.packages
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        vec!["base-files"],
        "the inventory is read in the test instance"
    );
    let kinds = events.kinds();
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("finished"));
    assert!(kinds.iter().any(|k| k == "step"), "{kinds:?}");

    // Nothing changed: the layer and the test result come from the caches; nothing launches.
    let again = f
        .builder(launcher.clone())
        .build(&recipe, Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(again.state, State::Available);
    assert_eq!(again.build, 2);
    assert_eq!(again.components[0].cache, CacheUse::Hit);
    assert_eq!(again.components[0].layer, Some(layer));
    let t = again.tests.unwrap();
    assert_eq!(t.status, TestStatus::Cached);
    assert_eq!(t.reused_from.as_deref(), Some("web/1.0.0/1"));
    assert_eq!(sandboxes(&launcher).len(), 2, "nothing was launched again");
    assert_eq!(tags(&f.region()), vec!["1.0.0", "1.0.0-1", "1.0.0-2"]);
}

#[tokio::test]
async fn a_failing_step_fails_the_build_with_its_output_and_distributes_nothing() {
    let f = Fixture::new().await;
    let launcher = Arc::new(FakeLauncher::new(|e: &FakeExec| {
        match e.script.as_deref() {
            Some(s) if s.contains("echo hello") => FakeReply::fail(3, "disk quota exceeded"),
            _ => FakeReply::ok(),
        }
    }));
    let rec = f
        .builder(launcher.clone())
        .build(&f.recipe(""), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Failed);
    let failure = rec.failure.clone().unwrap();
    assert_eq!(failure.stage, State::Building);
    assert_eq!(failure.component.as_deref(), Some("greet"));
    assert_eq!(failure.step.as_deref(), Some("build/Greet"));
    assert_eq!(failure.output_tail, vec!["disk quota exceeded"]);
    let log = failure.log.unwrap();
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("disk quota exceeded"));
    assert_eq!(
        sandboxes(&launcher).len(),
        1,
        "no tests after a failed build"
    );
    assert!(rec.outputs.is_empty());
    assert!(tags(&f.region()).is_empty());
    // The failed component left nothing in the step cache.
    assert!(StepCache::new(f.home.clone()).entries().is_empty());
}

#[tokio::test]
async fn a_failing_test_fails_the_build_and_is_not_remembered() {
    let f = Fixture::new().await;
    let launcher = Arc::new(FakeLauncher::new(|e: &FakeExec| {
        match e.script.as_deref() {
            Some(s) if s.contains("echo hello") => {
                FakeReply::ok().writing("etc/greeting", b"hello\n")
            }
            Some(s) if s.contains("grep") => FakeReply::fail(1, "no greeting"),
            _ => FakeReply::ok(),
        }
    }));
    let recipe = f.recipe("");
    for build in 1..=2 {
        let rec = f
            .builder(launcher.clone())
            .build(&recipe, Arc::new(Unobserved))
            .await
            .unwrap();
        assert_eq!(rec.state, State::Failed);
        let failure = rec.failure.unwrap();
        assert_eq!(failure.stage, State::Testing);
        assert_eq!(failure.step.as_deref(), Some("test/Check"));
        assert_eq!(rec.tests.unwrap().status, TestStatus::Failed);
        assert!(tags(&f.region()).is_empty(), "build {build}");
    }
    // Both builds tested: a failure is not cached; the layer was (build 2 did not rebuild it).
    assert_eq!(sandboxes(&launcher).len(), 3);
}

#[tokio::test]
async fn without_tests_the_inventory_comes_from_the_layers() {
    let f = Fixture::new().await;
    let launcher = greeting_launcher();
    let rec = f
        .builder(launcher.clone())
        .build(
            &f.recipe("imageTestsConfiguration:\n  imageTestsEnabled: false\n"),
            Arc::new(Unobserved),
        )
        .await
        .unwrap();
    assert_eq!(rec.state, State::Available);
    assert_eq!(rec.tests.unwrap().status, TestStatus::Skipped);
    assert_eq!(rec.packages.len(), 1);
    assert_eq!(sandboxes(&launcher).len(), 1);
}

#[tokio::test]
async fn a_host_that_cannot_start_sandboxes_is_told_before_a_build_is_numbered() {
    let f = Fixture::new().await;
    let launcher = greeting_launcher();
    launcher.refuse(BuilderKind::Sandbox, "kiln build needs root");
    let e = f
        .builder(launcher.clone())
        .build(&f.recipe(""), Arc::new(Unobserved))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "kiln build needs root");
    let records = Records::new(f.store.clone());
    assert!(records
        .summaries(&kiln_store::Filter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(launcher.launches().is_empty());
}

#[tokio::test]
async fn a_region_that_cannot_be_written_leaves_nothing_in_the_others() {
    let f = Fixture::new().await;
    let blocked = f.dir.path().join("blocked");
    std::fs::write(&blocked, b"a file, not a folder").unwrap();
    let extra = format!(
        "distributions:\n  - region: first\n  - region: second\n    path: {}/sub\n",
        blocked.display()
    );
    let rec = f
        .builder(greeting_launcher())
        .build(&f.recipe(&extra), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Failed);
    let failure = rec.failure.unwrap();
    assert_eq!(failure.stage, State::Distributing);
    assert!(
        failure.reason.starts_with("region second: creating"),
        "{}",
        failure.reason
    );
    assert!(tags(&f.home.regions().join("first")).is_empty());
    assert!(rec.outputs.is_empty());
    assert!(
        rec.distributing.is_empty(),
        "the final record plans nothing"
    );
}

#[tokio::test]
async fn components_run_on_the_builder_the_recipe_names() {
    let f = Fixture::new().await;
    let launcher = greeting_launcher();
    f.builder(launcher.clone())
        .build(&f.recipe(""), Arc::new(Unobserved))
        .await
        .unwrap();
    let first = launcher.launches().into_iter().next().unwrap();
    let LaunchSpec::Sandbox(spec) = first else {
        panic!("a sandbox recipe launched {first:?}");
    };
    // Over the parent's layer, with the recipe's working directory and a writable layer in
    // the build's run folder.
    assert_eq!(spec.lower.len(), 1);
    assert_eq!(spec.working_dir, "/tmp");
    assert!(spec.upper.starts_with(f.home.run()));
}

/// A parent that can make a disk: a kernel, an init, the QEMU guest agent (files only: the fake
/// VM boots nothing), beside the greeting component. Returns the recipe's folder.
fn disk_parent(f: &Fixture) -> PathBuf {
    let root = f.dir.path().join("vm-rootfs");
    for d in ["boot", "usr/sbin", "etc", "var/lib/dpkg"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-9-cloud-amd64"), b"initrd").unwrap();
    std::fs::write(root.join("usr/sbin/init"), b"init").unwrap();
    std::fs::write(root.join("usr/sbin/qemu-ga"), b"qemu-ga").unwrap();
    std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let blob = kiln_image::write_layer(
        &root,
        &[],
        0,
        kiln_image::Compression::Gzip,
        &f.dir.path().join("blobs"),
    )
    .unwrap();
    kiln_image::write_image(
        &f.dir.path().join("vmparent"),
        "base",
        &[blob],
        &kiln_image::ImageSettings::default(),
    )
    .unwrap();
    f.dir.path().to_path_buf()
}

fn disk_recipe(dir: &Path, max_boot_seconds: u32) -> Recipe {
    crate::recipe::parse(RecipeSource {
        path: dir.join("recipe.yml"),
        text: format!(
            "name: vm-web\nsemanticVersion: 1.0.0\nparentImage: oci:vmparent:base\n\
             components:\n  - path: greet.yml\noutputs: [disk]\ndisk:\n  formats: [raw]\n\
             imageTestsConfiguration:\n  maxBootSeconds: {max_boot_seconds}\n"
        ),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_test_vm_slower_to_boot_than_max_boot_seconds_fails_the_tests_with_its_breakdown() {
    let f = Fixture::new().await;
    let dir = disk_parent(&f);
    // The guest's systemd: init 9 s after the kernel started, the guest agent at 26 s, the
    // whole startup done at 30 s.
    let launcher = Arc::new(FakeLauncher::new(|e: &FakeExec| {
        let script = e.request.args.get(1).map(String::as_str).unwrap_or("");
        match e.script.as_deref() {
            Some(s) if s.contains("echo hello") => {
                FakeReply::ok().writing("etc/greeting", b"hello\n")
            }
            _ if script.contains("UserspaceTimestampMonotonic") => {
                let mut r = FakeReply::ok();
                for l in [
                    "UserspaceTimestampMonotonic=9000000",
                    "FinishTimestampMonotonic=30000000",
                    "ActiveEnterTimestampMonotonic=26000000",
                ] {
                    r.lines.push((kiln_instance::Stream::Stdout, l.into()));
                }
                r
            }
            _ => FakeReply::ok(),
        }
    }));
    launcher.boot_as(kiln_instance::Boot {
        duration: std::time::Duration::from_millis(31_500),
        accel: kiln_instance::vm::Accel::Tcg,
        kernel_started: Some(std::time::Duration::from_millis(4_000)),
        kiln_agent: Some(std::time::Duration::from_millis(1_000)),
    });

    let rec = f
        .builder(launcher.clone())
        .build(&disk_recipe(&dir, 20), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Failed, "{:?}", rec.failure);
    let failure = rec.failure.clone().unwrap();
    assert_eq!(failure.stage, State::Testing);
    assert!(
        failure.reason.contains("took 31.5 s to boot")
            && failure.reason.contains("maxBootSeconds (20 s)"),
        "{}",
        failure.reason
    );
    assert!(rec.outputs.is_empty(), "nothing is distributed");
    // The tests ran all the same, and the record says where the boot went.
    let t = rec.tests.clone().unwrap();
    assert_eq!(t.status, TestStatus::Failed);
    assert_eq!(t.boot_ms, Some(31_500));
    let b = t.boot_breakdown.unwrap();
    assert_eq!(b.firmware_ms, Some(4_000));
    assert_eq!(b.userspace_ms, Some(26_000 - 9_000));
    assert_eq!(b.agent_ms, Some(31_500 - 4_000 - 26_000));
    assert_eq!(b.finished_ms, Some(30_000));
    assert_eq!(b.kiln_agent_ms, Some(1_000));
    let analysis = failure.log.unwrap();
    assert!(analysis.ends_with("test/boot-analysis.log"), "{analysis:?}");
    let text = std::fs::read_to_string(&analysis).unwrap();
    assert!(
        text.contains("ActiveEnterTimestampMonotonic=26000000"),
        "{text}"
    );
    // The too slow boot was asked for its critical chain as well.
    assert!(launcher.execs().iter().any(|e| e
        .request
        .args
        .iter()
        .any(|a| a.contains("critical-chain"))));

    // Under a limit it keeps, the same image passes and is distributed.
    let rec = f
        .builder(launcher.clone())
        .build(&disk_recipe(&dir, 40), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Available, "{:?}", rec.failure);
    let t = rec.tests.unwrap();
    assert_eq!(t.status, TestStatus::Passed);
    assert_eq!(t.boot_breakdown.unwrap().agent_ms, Some(1_500));
    assert!(!rec.outputs.is_empty());
}

#[tokio::test]
async fn a_build_keeps_its_triggers_and_its_parent_tags_digest() {
    use crate::updates::{PackageUpdate, Trigger};
    let f = Fixture::new().await;
    let triggers = vec![
        Trigger::Schedule,
        Trigger::Packages {
            updates: vec![PackageUpdate {
                name: "base-files".into(),
                from: "12.4".into(),
                to: "12.5".into(),
            }],
        },
    ];
    let mut origin = Origin::of(Principal::local("tester"));
    origin.triggers = triggers.clone();
    let options = BuildOptions {
        epoch: Some(0),
        cache_max_bytes: u64::MAX,
        ..BuildOptions::default()
    };
    let rec = Builder::new(f.home.clone(), options.clone(), origin, greeting_launcher())
        .with_store(f.store.clone())
        .build(&f.recipe(""), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Available, "{:?}", rec.failure);
    assert_eq!(rec.triggers, triggers);
    let stored = Records::new(f.store.clone()).get(&rec.arn).await.unwrap();
    assert_eq!(stored.unwrap().triggers, triggers);
    // An `oci:DIR:TAG` parent: the tag's digest is saved, and it has not moved.
    let layout = f.dir.path().join("parent");
    let digest = kiln_image::oci::tag_digest(&layout, "base").unwrap();
    assert!(digest.is_some());
    assert_eq!(rec.parent.as_ref().unwrap().digest, digest);
    assert_eq!(
        crate::updates::parent_moved(&options, &rec).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_component_no_operator_account_owns_runs_in_the_vm_builder_and_the_record_says_why() {
    let f = Fixture::new().await;
    let dir = disk_parent(&f);
    let tenant = Principal::new("222222222222", "bob");
    let options = BuildOptions {
        epoch: Some(0),
        cache_max_bytes: u64::MAX,
        ..BuildOptions::default()
    };
    let builder = |who: &Principal, launcher: Arc<FakeLauncher>| {
        Builder::new(
            f.home.clone(),
            options.clone(),
            Origin::of(who.clone()),
            launcher,
        )
        .with_store(f.store.clone())
    };

    // The local account is the operator's by default: its component runs in a sandbox.
    let launcher = greeting_launcher();
    let rec = builder(&Principal::local("tester"), launcher.clone())
        .build(&disk_recipe(&dir, 600), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(rec.state, State::Available, "{:?}", rec.failure);
    let choice = rec.builder.clone().unwrap();
    assert_eq!(
        (choice.kind, choice.raised()),
        (BuilderKind::Sandbox, false)
    );
    assert_ne!(rec.components[0].cache, CacheUse::InVm);

    let ran_in = |launcher: &FakeLauncher| -> Vec<BuilderKind> {
        launcher
            .execs()
            .into_iter()
            .filter(|e| {
                e.script
                    .as_deref()
                    .is_some_and(|s| s.contains("echo hello"))
            })
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(ran_in(&launcher), [BuilderKind::Sandbox]);

    // Another account's component (a file it gave is its own) runs in the builder VM. (The
    // fake VM's disk is no qcow2 overlay, so the build then fails flattening it.)
    let launcher = greeting_launcher();
    let rec = builder(&tenant, launcher.clone())
        .build(&disk_recipe(&dir, 600), Arc::new(Unobserved))
        .await
        .unwrap();
    assert_eq!(ran_in(&launcher), [BuilderKind::Vm]);
    let choice = rec.builder.clone().unwrap();
    assert_eq!(choice.kind, BuilderKind::Vm);
    assert_eq!(choice.requested, BuilderKind::Sandbox);
    assert_eq!(choice.untrusted.len(), 1);
    assert_eq!(choice.untrusted[0].account, "222222222222");
    let stored = Records::new(f.store.clone()).get(&rec.arn).await.unwrap();
    assert_eq!(stored.unwrap().builder, Some(choice));
    let log = std::fs::read_to_string(rec.logs.join("build.log")).unwrap();
    assert!(
        log.contains("builder: vm (component ")
            && log.contains("is owned by account 222222222222, not an operator account"),
        "{log}"
    );

    // A container image cannot come out of a VM: refused before a number is taken.
    let launcher = greeting_launcher();
    let e = builder(&tenant, launcher.clone())
        .build(&f.recipe(""), Arc::new(Unobserved))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BuildError::Trust(_)), "{text}");
    assert!(
        text.contains("builder: vm (component ")
            && text.contains("makes disk images only")
            && text.contains("trust.operatorAccounts"),
        "{text}"
    );
    assert!(launcher.launches().is_empty());

    // An operator that lets untrusted components run in sandboxes gets the sandbox, said so.
    let lax = BuildOptions {
        trust: crate::trust::TrustPolicy {
            untrusted_components: BuilderKind::Sandbox,
            ..Default::default()
        },
        ..options.clone()
    };
    let rec = Builder::new(
        f.home.clone(),
        lax,
        Origin::of(tenant.clone()),
        greeting_launcher(),
    )
    .with_store(f.store.clone())
    .build(&f.recipe(""), Arc::new(Unobserved))
    .await
    .unwrap();
    assert_eq!(rec.state, State::Available, "{:?}", rec.failure);
    let choice = rec.builder.unwrap();
    assert_eq!(choice.kind, BuilderKind::Sandbox);
    assert!(
        choice.reason().contains("lets it run in a sandbox"),
        "{choice}"
    );
}
