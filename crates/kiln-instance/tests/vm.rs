//! The VM instance against real QEMU: a small Debian disk (cloud kernel, systemd, the QEMU guest
//! agent) is bootstrapped once per target folder and booted by each test (TCG here: ~25 s a boot).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use kiln_instance::sandbox::Network;
use kiln_instance::vm::{Accel, Vm, VmSpec};
use kiln_instance::{ExecRequest, ExitStatus, Instance, Stream};

static FIXTURE: Mutex<Option<PathBuf>> = Mutex::new(None);

const FIT: kiln_image::disk::FsSize = kiln_image::disk::FsSize::Fit { extra: 0 };

/// The test disk: bootstrapped with mmdebstrap and assembled by kiln-image, once.
fn disk() -> PathBuf {
    let mut f = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = f.as_ref() {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-fixture");
    let disk = dir.join("debian.qcow2");
    if !disk.is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root");
        let st = Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                "--include=linux-image-cloud-amd64,systemd-sysv,udev,qemu-guest-agent",
                "bookworm",
            ])
            .arg(&root)
            .status()
            .expect("mmdebstrap (run scripts/setup --test)");
        assert!(st.success(), "mmdebstrap failed");
        let (kernel, initrd) = kiln_image::disk::find_kernel(std::slice::from_ref(&root)).unwrap();
        let boot = dir.join("boot");
        let uuid = "5d0b7a52-7f1e-4a57-8c1d-2d3f4e5a6b7c";
        kiln_image::disk::boot_files(&boot, uuid, &kernel, initrd.as_deref()).unwrap();
        let fs = dir.join("root.ext4");
        let id = kiln_image::disk::FsIdentity {
            uuid: uuid.into(),
            hash_seed: "6e1c8b63-8f2f-4b68-9d2e-3e4f5a6b7c8d".into(),
            epoch: 1_700_000_000,
        };
        let guids = kiln_image::disk::DiskGuids {
            disk: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
            bios_boot: "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f".into(),
            root: "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".into(),
        };
        let label = kiln_image::disk::DiskLabel {
            name: "vm-test".into(),
            uuid: guids.disk.clone(),
            epoch: id.epoch,
        };
        let plain = kiln_image::disk::DiskCompression::None;
        kiln_image::disk::root_filesystem(&[boot, root.clone()], &fs, &id, FIT).unwrap();
        let raw = dir.join("disk.raw");
        kiln_image::disk::assemble(&fs, &raw, &guids).unwrap();
        // A disk whose kernel is garbage: GRUB refuses it.
        let bad = dir.join("badkernel");
        std::fs::create_dir_all(bad.join("boot")).unwrap();
        std::fs::write(bad.join("boot").join(&kernel), b"not a kernel").unwrap();
        let bad_boot = dir.join("boot");
        let bad_fs = dir.join("bad.ext4");
        kiln_image::disk::root_filesystem(&[bad, bad_boot, root.clone()], &bad_fs, &id, FIT)
            .unwrap();
        let bad_raw = dir.join("bad.raw");
        kiln_image::disk::assemble(&bad_fs, &bad_raw, &guids).unwrap();
        kiln_image::disk::convert(
            &bad_raw,
            &dir.join("bad.qcow2"),
            kiln_image::disk::DiskFormat::Qcow2,
            plain,
            &label,
        )
        .unwrap();
        for p in [&fs, &bad_fs, &bad_raw] {
            std::fs::remove_file(p).unwrap();
        }
        let _ = std::fs::remove_dir_all(&root);
        kiln_image::disk::convert(
            &raw,
            &disk,
            kiln_image::disk::DiskFormat::Qcow2,
            plain,
            &label,
        )
        .unwrap();
        std::fs::remove_file(&raw).unwrap();
    }
    *f = Some(disk.clone());
    disk
}

fn spec(name: &str, disk: &Path) -> VmSpec {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    VmSpec {
        id: name.to_string(),
        disk: disk.to_path_buf(),
        dir,
        memory_mib: 1024,
        cpus: 2,
        network: Network::None,
        boot_timeout: Duration::from_secs(240),
        agent: PathBuf::from(env!("CARGO_BIN_EXE_kiln-sandbox-helper")),
        working_dir: "/root".into(),
        env: kiln_instance::sandbox::default_env(),
        accel: Accel::Auto,
        kvm_verdict: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("kvm-verdict")),
    }
}

fn helper() -> (PathBuf, Vec<String>) {
    (
        PathBuf::from(env!("CARGO_BIN_EXE_kiln-sandbox-helper")),
        vec![kiln_instance::vm::keeper::KEEPER_ARG.to_string()],
    )
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout: Some(Duration::from_secs(120)),
        ..ExecRequest::default()
    }
}

async fn run(vm: &Vm, script: &str) -> (ExitStatus, String) {
    let out = vm
        .exec(&sh(script), &mut kiln_instance::Discard)
        .await
        .unwrap();
    (out.status, out.stdout)
}

fn qemu_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains("qemu-system") && c.contains(&format!("kiln-{name} "))
            })
            .unwrap_or(false)
    })
}

/// A host address that is neither the loopback nor the one passt copies into the guest: on a
/// veth pair (this kernel has no dummy interfaces), removed when dropped.
struct HostAddress(&'static str);

impl HostAddress {
    fn add(name: &'static str, addr: &str) -> HostAddress {
        let _ = Command::new("ip").args(["link", "del", name]).status();
        let peer = format!("{name}p");
        for args in [
            vec!["link", "add", name, "type", "veth", "peer", "name", &peer],
            vec!["addr", "add", addr, "dev", name],
            vec!["link", "set", name, "up"],
            vec!["link", "set", &peer, "up"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        HostAddress(name)
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
}

/// Whether the guest can open a TCP connection to `addr:port` (bash's /dev/tcp: minbase has no
/// client), trying for up to `tries` seconds while its network comes up.
async fn guest_connects(vm: &Vm, addr: &str, port: u16, tries: u32) -> bool {
    let script = format!(
        "for i in $(seq {tries}); do timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo OPEN && exit 0; sleep 1; done; echo CLOSED"
    );
    run(vm, &script).await.1.trim() == "OPEN"
}

#[tokio::test(flavor = "multi_thread")]
async fn boots_runs_reboots_and_powers_off_without_touching_the_image() {
    let disk = disk();
    let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let t = std::time::Instant::now();
    let mut s = spec("life", &disk);
    s.network = Network::Private;
    let vm = Vm::start(s, helper()).await.unwrap();
    eprintln!("started in {:?} (boot {:?})", t.elapsed(), vm.boot_times());
    assert_eq!(vm.boot_times().len(), 1);

    // Output streams line by line; exit codes come back as they are.
    let mut lines = Vec::new();
    let mut sink = |s: Stream, l: &str| lines.push((s, l.to_string()));
    let out = vm
        .exec(&sh("echo one; echo two >&2; uname -s; exit 194"), &mut sink)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(194));
    assert!(lines.contains(&(Stream::Stdout, "one".into())));
    assert!(lines.contains(&(Stream::Stderr, "two".into())));
    assert!(lines.contains(&(Stream::Stdout, "Linux".into())));
    // It is a VM with its own kernel: PID 1 is systemd, not anything of the host.
    assert_eq!(run(&vm, "cat /proc/1/comm").await.1.trim(), "systemd");

    // Its private network (passt) goes out (to the package mirror, the one destination off
    // this host that kiln's tests use) but never to the host itself, whatever its address.
    let mirror = std::net::ToSocketAddrs::to_socket_addrs(&("deb.debian.org", 80))
        .unwrap()
        .find(|a| a.is_ipv4())
        .unwrap()
        .ip()
        .to_string();
    assert!(
        guest_connects(&vm, &mirror, 80, 90).await,
        "no way out to {mirror}"
    );
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _host = HostAddress::add("kt-vmnet0", "10.213.0.1/32");
    for addr in ["10.213.0.1"] {
        assert!(
            !guest_connects(&vm, addr, port, 1).await,
            "the guest reached the host's port {port} at {addr}"
        );
    }

    // Files in and out.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("in.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    vm.put_file(&src, "/opt/data/in.bin", 0o640).await.unwrap();
    assert_eq!(
        run(&vm, "stat -c %a /opt/data/in.bin").await.1.trim(),
        "640"
    );
    let back = tmp.path().join("back.bin");
    vm.get_file("/opt/data/in.bin", &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // A reboot keeps the disk, ends the processes, and the agent comes back.
    run(&vm, "echo kept > /etc/kiln-marker; sync").await;
    let (_, boot_before) = run(&vm, "cat /proc/sys/kernel/random/boot_id").await;
    let t = std::time::Instant::now();
    vm.reboot().await.unwrap();
    eprintln!("rebooted in {:?}", t.elapsed());
    let (_, boot_after) = run(&vm, "cat /proc/sys/kernel/random/boot_id").await;
    assert_ne!(boot_before, boot_after, "the guest did not really reboot");
    assert_eq!(run(&vm, "cat /etc/kiln-marker").await.1.trim(), "kept");
    assert_eq!(vm.boot_times().len(), 2);

    // The console was captured.
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(console.contains("Linux version"), "console: {console}");

    let t = std::time::Instant::now();
    vm.stop().await.unwrap();
    eprintln!("stopped in {:?}", t.elapsed());
    assert!(!qemu_running("life"), "QEMU still runs after stop");
    // Everything the VM wrote is in the overlay; the image is untouched.
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        before
    );
    assert!(vm.overlay().is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_that_cannot_boot_fails_with_the_console() {
    let _ = disk();
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-fixture/bad.qcow2");
    let started = std::time::Instant::now();
    let err = match Vm::start(spec("bad", &bad), helper()).await {
        Ok(_) => panic!("a garbage kernel booted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("could not boot"), "{err}");
    assert!(err.contains("console's last lines"), "{err}");
    // GRUB's complaint is quoted.
    assert!(err.contains("error:"), "{err}");
    // Found from the console, not by waiting out the boot timeout.
    assert!(started.elapsed() < Duration::from_secs(200), "{err}");
    assert!(!qemu_running("bad"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_boot_timeout_quotes_the_console_and_stops_qemu() {
    let disk = disk();
    let mut s = spec("slow", &disk);
    s.boot_timeout = Duration::from_secs(8);
    s.accel = Accel::Tcg;
    let err = match Vm::start(s, helper()).await {
        Ok(_) => panic!("booted in 8 s under TCG"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("within 8 s"), "{err}");
    assert!(err.contains("console"), "{err}");
    assert!(!qemu_running("slow"));
}
