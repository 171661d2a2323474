//! Disk images end to end: built, booted in QEMU (TCG here) and tested, built inside a VM,
//! broken on purpose, kept for debugging, and killed mid-boot.
//!
//! Every test boots real VMs, so each proves one thing with the smallest image that shows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn qemu_processes_of(run_id: &str) -> Vec<i32> {
    processes_with(&format!("kiln-{run_id}"))
}

/// Boots `disk` with nothing but `qemu-system-x86_64 -drive file=DISK` (no -kernel), and
/// returns the serial console once a login prompt shows (or what it said when it did not).
fn boot_to_login(disk: &Path, serial: &Path) -> (bool, String) {
    let mut q = std::process::Command::new("qemu-system-x86_64")
        .arg("-drive")
        .arg(format!("file={}", disk.display()))
        .args(["-m", "1024", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs it)");
    let started = Instant::now();
    let mut console = String::new();
    let mut ok = false;
    while started.elapsed() < Duration::from_secs(300) {
        console = String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).into_owned();
        if console.contains("login:") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = q.kill();
    let _ = q.wait();
    (ok, console)
}

#[test]
fn golden_nginx_disk_boots_tests_nginx_in_the_vm_and_boots_with_plain_qemu() {
    disk_base(); // shares the bootstrap
    let work = tempfile::tempdir().unwrap();
    let ex = work.path().join("golden-nginx");
    copy_dir(&repo().join("examples/golden-nginx"), &ex);
    let name = format!("golden-nginx-disk-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let region = work.path().join("region");
    let recipe = ex.join("recipe.yml");
    let r = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("name: golden-nginx", &format!("name: {name}"))
        .replace(
            "distributions:\n  - region: local",
            &format!(
                "disk:\n  formats: [qcow2, raw]\n  compressed: true\n  removeGuestAgent: true\ndistributions:\n  - region: local\n    path: {}",
                region.display()
            ),
        );
    assert!(
        r.contains("outputs: [oci, disk]") && r.contains("formats:"),
        "{r}"
    );
    std::fs::write(&recipe, r).unwrap();
    // --no-cache: an earlier run of this test leaves an identical image that passed, whose
    // result would otherwise be reused instead of booting.
    let o = kiln(&["build", recipe.to_str().unwrap(), "--no-cache"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("tests passed in a VM that booted in"), "{out}");

    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["state"], "AVAILABLE");
    let tests = &rec["tests"];
    assert_eq!(tests["instance"], "vm", "{tests}");
    assert!(tests["bootMs"].as_u64().unwrap() > 1000, "{tests}");
    // Where the boot went: every phase of a Debian boot with systemd was measured, and the
    // phases add up to the boot.
    let b = &tests["bootBreakdown"];
    let phases = [
        "firmwareMs",
        "kernelMs",
        "initrdMs",
        "userspaceMs",
        "agentMs",
    ];
    let sum: u64 = phases
        .iter()
        .map(|p| b[p].as_u64().unwrap_or_else(|| panic!("no {p} in {b}")))
        .sum();
    assert_eq!(sum, tests["bootMs"].as_u64().unwrap(), "{b}");
    assert!(b["kilnAgentMs"].as_u64().is_some(), "{b}");
    assert!(out.contains("test VM boot "), "{out}");
    let shown = text(&kiln(&["image", "get", &format!("{name}/1.0.0/1")]).stdout);
    assert!(shown.contains("boot: firmware + bootloader"), "{shown}");
    // The nginx test phase ran inside the booted VM: the service answered over HTTP.
    let steps: Vec<(String, String)> = tests["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        steps.contains(&("test/ServesHealthPage".into(), "success".into())),
        "{steps:?}"
    );
    let log =
        std::fs::read_to_string(Path::new(rec["logs"].as_str().unwrap()).join("test/console.log"))
            .unwrap();
    assert!(log.contains("nginx serves /healthz"), "{log}");
    assert!(log.contains("active"), "{log}");
    assert!(
        Path::new(rec["logs"].as_str().unwrap())
            .join("test/serial-console.log")
            .is_file(),
        "the serial console is in the build's logs"
    );
    // systemd's own account of the boot is in the test logs (the nginx test waits for the boot
    // to finish, so it had finished).
    let analysis = std::fs::read_to_string(
        Path::new(rec["logs"].as_str().unwrap()).join("test/boot-analysis.log"),
    )
    .unwrap();
    assert!(analysis.contains("Startup finished in"), "{analysis}");
    assert!(
        analysis.contains("ActiveEnterTimestampMonotonic="),
        "{analysis}"
    );
    assert!(rec["disk"]["kernel"]
        .as_str()
        .unwrap()
        .starts_with("vmlinuz-"));
    // kiln put the guest agent in for its tests and took it out afterwards, as asked; the
    // plain boot below shows the disk it distributed still boots.
    assert_eq!(
        rec["disk"]["guestAgent"],
        "installed by kiln, removed after the tests"
    );
    let purge = std::fs::read_to_string(
        Path::new(rec["logs"].as_str().unwrap()).join("build-kiln-remove-guest-agent/console.log"),
    )
    .unwrap();
    assert!(purge.contains("qemu-guest-agent"), "{purge}");

    // Both formats in the region, under the build's name and the version's name.
    let disks = region.join("disks");
    let qcow2 = disks.join(format!("{name}-1.0.0.qcow2"));
    for f in [
        format!("{name}-1.0.0-1.qcow2"),
        format!("{name}-1.0.0.qcow2"),
        format!("{name}-1.0.0-1.raw"),
    ] {
        assert!(disks.join(&f).is_file(), "{f} is missing");
    }
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    // And the OCI image beside them.
    assert!(region.join("index.json").is_file());

    // A user boots it with plain QEMU: firmware, GRUB, the image's kernel, a login prompt.
    let (ok, console) = boot_to_login(&qcow2, &work.path().join("serial.log"));
    let tail: Vec<&str> = console.lines().rev().take(15).collect();
    assert!(ok, "no login prompt; the console ended with: {tail:?}");
}

/// The disk cache and reproducible disks, without booting anything: the same layers give the
/// same raw disk bytes whether the disk comes from the cache or is assembled again after
/// `kiln cache prune --disks`; a no-change rebuild takes the kept disk; a new version of the
/// image keeps the filesystem UUID.
#[test]
fn the_same_layers_give_the_same_disk_bytes_and_versions_keep_the_filesystem_uuid() {
    let parent = disk_base();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("repro-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let region = dir.path().join("region");
    let recipe = |version: &str, content: &str| {
        write(
            dir.path(),
            "mark.yaml",
            &format!("name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-repro\n            content: {content}\n"),
        );
        write(
            dir.path(),
            "recipe.yml",
            &format!("name: {name}\nsemanticVersion: {version}\nparentImage: {parent}\ncomponents:\n  - path: mark.yaml\noutputs: [disk]\ndisk:\n  formats: [qcow2, vmdk]\nimageTestsConfiguration:\n  imageTestsEnabled: false\ndistributions:\n  - region: local\n    path: {}\n", region.display()),
        )
    };
    let build = |r: &Path| {
        let o = kiln(&["build", r.to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    };
    let disk_of = |b: &str| record(&format!("{name}/{b}"))["disk"].clone();
    let r = recipe("1.0.0", "one");
    build(&r);
    let first = disk_of("1.0.0/1");
    assert_eq!(first["cached"], serde_json::Value::Null, "{first}");
    let digest = first["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{first}");
    let qcow2_of = |b: u32| {
        let f = region.join("disks").join(format!("{name}-1.0.0-{b}.qcow2"));
        sha256sum(&f)
    };

    // Nothing changed: the kept disk, its conversions, no assembly.
    build(&r);
    let second = disk_of("1.0.0/2");
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(qcow2_of(2), qcow2_of(1));

    // The kept disks dropped, and the component's layer tree (moved into the store from the
    // builder) replaced by one extracted from its blob, as another host has it: assembled
    // again, the same bytes.
    let layer = record(&format!("{name}/1.0.0/1"))["components"][0]["layer"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let stored = home().join("layers").join(&layer);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stored.join("layer.json")).unwrap()).unwrap();
    let blob = home().join("blobs/sha256").join(
        info["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    std::fs::remove_dir_all(stored.join("fs")).unwrap();
    let _ = std::fs::remove_file(stored.join("times"));
    kiln_image::extract_layer(&blob, &stored.join("fs")).unwrap();
    let o = kiln(&["cache", "prune", "--disks"]);
    assert!(text(&o.stdout).contains("disk(s)"), "{}", text(&o.stdout));
    build(&r);
    let third = disk_of("1.0.0/3");
    assert_eq!(third["cached"], serde_json::Value::Null, "{third}");
    assert_eq!(
        third["digest"], first["digest"],
        "the disk was not reproduced"
    );
    assert_eq!(
        qcow2_of(3),
        qcow2_of(1),
        "the qcow2 conversion was not reproduced"
    );
    let vmdk = |b: u32| sha256sum(&region.join("disks").join(format!("{name}-1.0.0-{b}.vmdk")));
    assert_eq!(vmdk(3), vmdk(1), "the vmdk conversion was not reproduced");

    // A new version with other content: other bytes, the same filesystem UUID.
    let r = recipe("1.1.0", "two");
    build(&r);
    let next = disk_of("1.1.0/1");
    assert_ne!(next["digest"], first["digest"]);
    assert_eq!(next["filesystemUuid"], first["filesystemUuid"]);
    let info = text(&kiln(&["cache", "info"]).stdout);
    assert!(info.contains("disks") && info.contains(&name), "{info}");
}

/// `sha256:` of a file, with the sha256sum program (the test crate does not link a hasher).
fn sha256sum(p: &Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "sha256sum {}", p.display());
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_vm_builder_reboots_on_exit_194_and_continues_with_the_same_step() {
    let parent = disk_base();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "reboot.yaml",
        r#"name: reboot-check
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: RebootOnce
        action: ExecuteBash
        inputs:
          commands:
            - |
              if [ -f /var/lib/kiln-first-boot ]; then
                echo "back after the reboot"
                exit 0
              fi
              cat /proc/sys/kernel/random/boot_id > /var/lib/kiln-first-boot
              exit 194
      - name: CameBack
        action: ExecuteBash
        inputs:
          commands:
            - test "$(cat /var/lib/kiln-first-boot)" != "$(cat /proc/sys/kernel/random/boot_id)"
            - echo "a different boot id"
            - test -d /run/systemd/system && echo "systemd is running"
  - name: test
    steps:
      - name: BuiltInTheVm
        action: Assert
        inputs:
          fileExists: /var/lib/kiln-first-boot
"#,
    );
    let name = format!("vm-builder-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let region = dir.path().join("region");
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: reboot.yaml\ninfrastructure:\n  builder: vm\ndistributions:\n  - region: r\n    path: {}\n",
            region.display()
        ),
    );
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    // The report goes to stdout, progress (the steps' output among it) to stderr.
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("exit code 194: rebooting the instance, then running this step again"),
        "{out}"
    );
    assert!(out.contains("back after the reboot"), "{out}");
    assert!(out.contains("a different boot id"), "{out}");
    assert!(out.contains("systemd is running"), "{out}");
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["components"][0]["cache"], "in-vm");
    assert_eq!(rec["tests"]["instance"], "vm");
    assert!(region
        .join("disks")
        .join(format!("{name}-1.0.0.qcow2"))
        .is_file());
    // Its result is a disk, not layers: it cannot be a parent.
    let child = write(
        dir.path(),
        "child.yml",
        &format!("name: {name}-child\nsemanticVersion: 1.0.0\nparentImage: kiln:{name}/1.0.0\ncomponents:\n  - path: reboot.yaml\n"),
    );
    let o = kiln(&["build", child.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(all.contains("built by the VM builder"), "{all}");
}

/// With a configuration whose operator accounts leave out the local one, the CLI's own
/// component is untrusted: a recipe that names no builder builds on the VM builder, and the
/// record and the log say why. One VM boot (the tests are off).
#[test]
fn a_component_no_operator_account_owns_builds_in_a_vm() {
    let parent = disk_base();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "config.yaml",
        "trust:\n  operatorAccounts: [\"111111111111\"]\n",
    );
    write(
        dir.path(),
        "mark.yaml",
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Kernel\n        action: ExecuteBash\n        inputs:\n          commands: ['test -d /run/systemd/system && echo \"booted: $(uname -r)\"']\n",
    );
    let name = format!("untrusted-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: mark.yaml\noutputs: [disk]\nimageTestsConfiguration:\n  imageTestsEnabled: false\ndistributions:\n  - region: r\n    path: {}\n",
            dir.path().join("region").display()
        ),
    );
    let o = kiln_cmd(&["build", recipe.to_str().unwrap()])
        .env("KILN_CONFIG", &config)
        .output()
        .unwrap();
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}");
    // It ran in a booted VM, not a sandbox.
    assert!(out.contains("booted: "), "{out}");
    let reason = format!(
        "builder: vm (component {} is owned by account 000000000000, not an operator account; untrustedComponents: vm, the server's setting)",
        dir.path().join("mark.yaml").display()
    );
    assert!(out.contains(&reason), "{out}");
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["builder"]["kind"], "vm");
    assert_eq!(rec["builder"]["requested"], "sandbox");
    assert_eq!(rec["builder"]["untrusted"][0]["account"], "000000000000");
    assert_eq!(rec["components"][0]["cache"], "in-vm");
    let shown = kiln(&["image", "get", &format!("{name}/1.0.0/1")]);
    assert!(
        text(&shown.stdout).contains(&format!(
            "  builder    vm (component {}",
            dir.path().join("mark.yaml").display()
        )),
        "{}",
        text(&shown.stdout)
    );
}

#[test]
fn a_kernel_that_cannot_boot_fails_in_testing_with_the_console_and_is_not_distributed() {
    let parent = disk_base();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "break.yaml",
        "name: break-kernel\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Overwrite\n        action: ExecuteBash\n        inputs:\n          commands:\n            - for k in /boot/vmlinuz-*; do echo 'not a kernel' > \"$k\"; done\n",
    );
    let name = format!("bad-kernel-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let region = dir.path().join("region");
    let recipe = write(
        dir.path(),
        "recipe.yml",
        &format!(
            "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: break.yaml\noutputs: [oci, disk]\ndistributions:\n  - region: r\n    path: {}\n",
            region.display()
        ),
    );
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", text(&o.stderr));
    assert!(
        out.contains(&format!("FAILED {name}/1.0.0/1 in TESTING")),
        "{out}"
    );
    assert!(out.contains("the VM could not boot"), "{out}");
    // GRUB's own words, from the serial console.
    assert!(out.contains("error:"), "{out}");
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["failure"]["stage"], "TESTING");
    assert!(!rec["failure"]["outputTail"].as_array().unwrap().is_empty());
    assert!(rec["outputs"].as_array().unwrap().is_empty());
    assert!(!region.exists(), "nothing may be distributed");
}

#[test]
fn a_failed_vm_is_kept_on_request_and_nothing_is_left_when_kiln_is_killed_mid_boot() {
    let parent = disk_base();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "failtest.yaml",
        "name: failtest\nschemaVersion: 1.0\nphases:\n  - name: test\n    steps:\n      - name: Nope\n        action: ExecuteBash\n        inputs:\n          commands: ['echo failing on purpose; exit 4']\n",
    );
    // 1. Kept: the VM whose test failed stays up, reachable through `kiln instance shell`.
    let name = format!("keep-vm-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let recipe = write(
        dir.path(),
        "keep.yml",
        &format!(
            "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: failtest.yaml\noutputs: [disk]\ninfrastructure:\n  terminateInstanceOnFailure: false\n"
        ),
    );
    let o = kiln(&["build", recipe.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("the failed instance is kept"), "{out}");
    let rec = record(&format!("{name}/1.0.0/1"));
    let id = rec["failure"]["keptInstance"].as_str().unwrap().to_string();
    let list = text(&kiln(&["instance", "list"]).stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("vm") && l.contains("running")),
        "{list}"
    );
    let o = kiln(&[
        "instance",
        "shell",
        &id,
        "-c",
        "cat /etc/kiln-disk-base; uname -s",
    ]);
    if o.status.code() != Some(0) {
        // What the kept VM left behind says why it could not be reached.
        let kept = home().join("instances").join(&id);
        let tail = |f: &str| {
            let t = std::fs::read_to_string(kept.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        panic!(
            "kiln instance shell: {}\nqemu processes: {:?}\nqemu.log:\n{}\nconsole.log:\n{}",
            text(&o.stderr),
            qemu_processes_of(&id),
            tail("qemu.log"),
            tail("console.log")
        );
    }
    assert_eq!(text(&o.stdout), "baseLinux\n");
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home().join("instances").join(&id).join("instance.json")).unwrap(),
    )
    .unwrap();
    let sockets = PathBuf::from(kept["qgaSocket"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(sockets.is_dir());
    let o = kiln(&["instance", "stop", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        processes_with(&format!("{}-test", &id[..8])).is_empty(),
        "the kept VM's QEMU survived `kiln instance stop`"
    );
    assert!(!text(&kiln(&["instance", "list"]).stdout).contains(&id));
    assert!(
        !sockets.exists(),
        "{} outlived the kept VM",
        sockets.display()
    );

    // 2. By default nothing outlives kiln, even when it is killed while the VM boots.
    let name = format!("killed-boot-{}", std::process::id());
    let _disks = ForgetDisks(name.clone());
    let recipe = write(
        dir.path(),
        "killed.yml",
        &format!(
            "name: {name}\nsemanticVersion: 1.0.0\nparentImage: {parent}\ncomponents:\n  - path: failtest.yaml\noutputs: [disk]\n"
        ),
    );
    let mut child = kiln_cmd(&["build", recipe.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = child.stderr.take().unwrap();
    let mut run_id = None;
    for line in BufReader::new(progress).lines() {
        let line = line.unwrap();
        if line.contains("booting a test VM") {
            break;
        }
        if run_id.is_none() {
            run_id = run_folders_of(&name)
                .first()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned());
        }
    }
    let run = run_id.expect("the build's run folder");
    let short: String = run
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    // Until QEMU is up, then kill kiln outright.
    let t0 = Instant::now();
    while qemu_processes_of(&short).is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!qemu_processes_of(&short).is_empty(), "QEMU never started");
    std::thread::sleep(Duration::from_secs(2));
    let sockets = socket_folders_under(&home().join("run").join(&run));
    assert!(!sockets.is_empty(), "the VM's socket folder");
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    while !qemu_processes_of(&short).is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        qemu_processes_of(&short).is_empty(),
        "QEMU outlived the killed kiln"
    );
    // The next kiln marks the build interrupted and sweeps its folder.
    let rec = record(&format!("{name}/1.0.0/1"));
    assert_eq!(rec["state"], "FAILED");
    assert!(rec["failure"]["reason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert!(
        !home().join("run").join(&run).exists(),
        "the run folder was not swept"
    );
    for s in sockets {
        assert!(!s.exists(), "{} was not swept", s.display());
    }
}

/// The socket folders of the VMs under `tree`: `sock`, or where it links to when the folder is
/// too deep for socket paths.
fn socket_folders_under(tree: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let kind = e.file_type().unwrap();
            if e.file_name() == "sock" {
                found.push(std::fs::read_link(e.path()).unwrap_or(e.path()));
            } else if kind.is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}
