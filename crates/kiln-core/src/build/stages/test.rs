//! TESTING: every component's test phase on a fresh instance made from the build's output — a
//! sandbox over the image's layers, or, for a disk, a VM that boots it as a user would
//! (firmware, bootloader, kernel, init). A pass is remembered by the exact image and tests, so
//! an identical rebuild is not tested again.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kiln_instance::BuilderKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::build::boot;
use crate::build::components::Component;
use crate::build::failure::StageFailure;
use crate::build::instance::{self, Drive, Driven, SandboxJob};
use crate::build::run::BuildRun;
use crate::build::{millis, timings};
use crate::record::{BootBreakdown, Package, State, TestRecord, TestStatus};
use crate::store::{read_json, write_json};

/// A test result kept for an image that passed, so an identical rebuild need not test again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestCacheEntry {
    build_version: String,
    passed_at: DateTime<Utc>,
    packages: Vec<Package>,
}

/// What decides a test result: the image's layers, for a disk the exact disk (the digest of its
/// raw bytes: a disk is booted, so its boot files, kernel and filesystem count) and the boot
/// limit, and the test documents with their parameters.
fn test_key(run: &BuildRun<'_>, testable: &[&Component]) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln-test-v2");
    for l in &run.chain {
        h.update(l.info.diff_id.as_bytes());
    }
    if let Some(d) = &run.disk {
        h.update(b"vm-boot ");
        h.update(d.entry.raw.digest.as_bytes());
        // A pass is a pass within its boot limit: another limit tests again.
        if let Some(limit) = run.recipe.tests.max_boot_seconds {
            h.update(format!(" max-boot {limit}").as_bytes());
        }
    }
    for c in testable {
        h.update(c.sha256.as_bytes());
        h.update(
            serde_json::to_string(&c.parameters)
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    hex::encode(h.finalize())
}

fn skipped_or_cached(status: TestStatus, reused_from: Option<String>) -> TestRecord {
    TestRecord {
        status,
        duration_ms: 0,
        steps: vec![],
        reused_from,
        instance: None,
        boot_ms: None,
        accelerator: None,
        boot_breakdown: None,
    }
}

/// Runs the test stage.
pub(crate) async fn run(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    run.enter(State::Testing).await;
    let t0 = Instant::now();
    let components = run.components;
    let testable: Vec<&Component> = components.iter().filter(|c| c.has_test).collect();
    let cache_path = run
        .home
        .cache()
        .join(format!("tests-{}.json", test_key(run, &testable)));
    // The same disk bytes passed before: also for a builder VM's disk, though it is rarely the
    // same twice.
    let cached: Option<TestCacheEntry> = if run.options.no_cache {
        None
    } else {
        read_json(&cache_path).ok().flatten()
    };
    if !run.recipe.tests.enabled {
        run.rec.tests = Some(skipped_or_cached(TestStatus::Skipped, None));
        run.rec.packages = crate::inventory::from_layers(&run.chain);
    } else if let Some(entry) = cached {
        run.progress(format!(
            "this exact image passed its tests in {}; not testing again",
            entry.build_version
        ));
        run.rec.tests = Some(skipped_or_cached(
            TestStatus::Cached,
            Some(entry.build_version),
        ));
        run.rec.packages = entry.packages;
    } else {
        let tested = if run.disk.is_some() {
            in_vm(run, &testable).await?
        } else {
            Tested::in_sandbox(in_sandbox(run, &testable).await?)
        };
        let (driven, boot) = (tested.driven, tested.boot);
        let passed = driven.report.status.ok() && tested.too_slow.is_none();
        run.rec.tests = Some(TestRecord {
            status: if passed {
                TestStatus::Passed
            } else {
                TestStatus::Failed
            },
            duration_ms: millis(t0),
            steps: timings(&driven.report),
            reused_from: None,
            instance: Some(if boot.is_some() {
                BuilderKind::Vm
            } else {
                BuilderKind::Sandbox
            }),
            boot_ms: boot.map(|b| b.duration.as_millis() as u64),
            accelerator: boot.map(|b| b.accel),
            boot_breakdown: tested.breakdown,
        });
        if let (Some(slow), true) = (&tested.too_slow, driven.report.status.ok()) {
            let mut f = StageFailure::new(State::Testing, slow.clone());
            f.log = Some(run.rec.logs.join("test").join(boot::ANALYSIS_LOG));
            f.kept = driven.kept;
            return Err(f);
        }
        if !passed {
            let component = driven
                .report
                .documents
                .iter()
                .find(|d| !d.status.ok())
                .map(|d| d.name.clone());
            let mut f = StageFailure::from_run(
                State::Testing,
                component,
                &driven,
                &run.rec.logs.join("test"),
            );
            if let Some(slow) = &tested.too_slow {
                f.reason = format!("{}; and {slow}", f.reason);
            }
            return Err(f);
        }
        run.rec.packages = driven.packages;
        let _ = write_json(
            &cache_path,
            &TestCacheEntry {
                build_version: run.rec.build_version(),
                passed_at: Utc::now(),
                packages: run.rec.packages.clone(),
            },
        );
    }
    run.save().await;
    Ok(())
}

fn limit(run: &BuildRun<'_>) -> Duration {
    Duration::from_secs(u64::from(run.recipe.tests.timeout_minutes) * 60)
}

fn too_long(run: &BuildRun<'_>) -> StageFailure {
    StageFailure::new(
        State::Testing,
        format!(
            "the tests ran longer than imageTestsConfiguration.timeoutMinutes ({})",
            run.recipe.tests.timeout_minutes
        ),
    )
}

fn test_drive<'a>(run: &BuildRun<'_>, testable: &'a [&'a Component]) -> Drive<'a> {
    Drive {
        components: testable,
        phases: &["test"],
        log_dir: run.rec.logs.join("test"),
        env: run.image_env("TESTING"),
        stage: State::Testing,
    }
}

/// A fresh sandbox over every layer, with a throwaway writable layer.
async fn in_sandbox(run: &BuildRun<'_>, testable: &[&Component]) -> Result<Driven, StageFailure> {
    let job = SandboxJob {
        id: format!("{}-test", run.short_id()),
        chain: &run.chain,
        dir: run.run_dir.join("test"),
        drive: test_drive(run, testable),
        keep: run.keeps_failed_instances(),
    };
    match tokio::time::timeout(limit(run), instance::in_sandbox(run, job)).await {
        Ok(r) => Ok(r?.driven),
        Err(_) => Err(too_long(run)),
    }
}

/// What the test instance gave.
struct Tested {
    /// The tests' run.
    driven: Driven,
    /// How the VM booted.
    boot: Option<kiln_instance::Boot>,
    /// Where its boot went.
    breakdown: Option<BootBreakdown>,
    /// Why the boot was too slow (`maxBootSeconds`), when it was.
    too_slow: Option<String>,
}

impl Tested {
    fn in_sandbox(driven: Driven) -> Self {
        Tested {
            driven,
            boot: None,
            breakdown: None,
            too_slow: None,
        }
    }
}

/// Why `boot` fails the tests, when it took longer than `imageTestsConfiguration.maxBootSeconds`.
fn boot_over_limit(run: &BuildRun<'_>, boot: Option<&kiln_instance::Boot>) -> Option<String> {
    let (limit, boot) = (run.recipe.tests.max_boot_seconds?, boot?);
    (boot.duration > Duration::from_secs(u64::from(limit))).then(|| {
        format!(
            "the test VM took {:.1} s to boot to its guest agent ({}), longer than imageTestsConfiguration.maxBootSeconds ({limit} s)",
            boot.duration.as_secs_f64(),
            boot.accel.as_str()
        )
    })
}

/// Boots the disk exactly as a user would and runs the tests in it; then asks the guest where
/// its boot went. A boot over `maxBootSeconds` fails the tests, which still run (one build
/// tells both).
async fn in_vm(run: &BuildRun<'_>, testable: &[&Component]) -> Result<Tested, StageFailure> {
    let Some(disk) = run.disk.as_ref() else {
        return Err(StageFailure::new(
            State::Testing,
            "there is no disk to boot",
        ));
    };
    run.progress("booting a test VM from the disk image (firmware, bootloader, kernel, init)");
    let id = format!("{}-test", run.short_id());
    let drive = test_drive(run, testable);
    let vm = instance::start_vm(
        run,
        &id,
        &disk.assembled.raw,
        &run.run_dir.join("test"),
        &drive.log_dir,
        State::Testing,
    )
    .await?;
    let boot = vm.boot();
    let too_slow = boot_over_limit(run, boot.as_ref());
    if let Some(b) = boot {
        let over = match run.recipe.tests.max_boot_seconds {
            Some(limit) if too_slow.is_some() => {
                format!(", over maxBootSeconds ({limit} s): the tests fail")
            }
            _ => String::new(),
        };
        run.progress(format!(
            "the test VM booted in {:.1} s ({}){over}; running the tests in it",
            b.duration.as_secs_f64(),
            b.accel.as_str()
        ));
    }
    let r = tokio::time::timeout(limit(run), instance::drive(run, vm.clone(), &drive)).await;
    // A VM whose tests ran over their time is not asked anything more.
    let breakdown = match (&r, boot) {
        (Ok(_), Some(b)) => {
            Some(boot::analyze(vm.as_ref(), &b, too_slow.is_some(), &drive.log_dir).await)
        }
        _ => None,
    };
    instance::save_console(vm.as_ref(), &drive.log_dir);
    let t0 = Instant::now();
    let failed = too_slow.is_some() || !matches!(&r, Ok(Ok(d)) if d.report.status.ok());
    let keep = failed && run.keeps_failed_instances();
    let (kept, stopped) = instance::keep_or_stop(run, &vm, keep, State::Testing).await;
    if let Err(e) = stopped {
        tracing::warn!("stopping the test VM: {e}");
    }
    tracing::debug!("the test VM ended in {:?}", t0.elapsed());
    match r {
        Ok(Ok(mut d)) => {
            d.kept = kept;
            Ok(Tested {
                driven: d,
                boot,
                breakdown,
                too_slow,
            })
        }
        Ok(Err(mut f)) => {
            f.kept = kept;
            Err(f)
        }
        Err(_) => {
            let mut f = too_long(run);
            f.kept = kept;
            Err(f)
        }
    }
}
