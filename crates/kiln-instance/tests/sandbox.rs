//! The sandbox against the real kernel. The host's own `/` is the read-only layer (a full
//! userland without bootstrapping anything); writes must land only in the writable layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{dirs, Dirs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_instance::fileops::{FileOp, FileOpOutput};
use kiln_instance::runlock::RunLock;
use kiln_instance::sandbox::{Limits, Network, Sandbox, SandboxSpec, HELPER_ARG};
use kiln_instance::{Discard, ExecRequest, ExitStatus, Instance, Stream};

fn spec(d: &Dirs, id: &str) -> SandboxSpec {
    SandboxSpec::new(
        id,
        vec![PathBuf::from("/")],
        d.base.join("upper"),
        d.base.join("work"),
        d.base.join("root"),
    )
}

use common::start;

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..ExecRequest::default()
    }
}

async fn run(sb: &Sandbox, script: &str) -> (ExitStatus, String) {
    let out = sb.exec(&sh(script), &mut Discard).await.unwrap();
    (out.status, out.stdout.trim().to_string())
}

fn host_mounts_mention(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&p.display().to_string())
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !kiln_instance::process::parse_stat(&s).is_some_and(|p| p.zombie),
        Err(_) => false,
    }
}

#[tokio::test]
async fn isolation_and_the_writable_layer() {
    let d = dirs();
    let sb = start(spec(&d, "iso")).await;
    let (st, out) = run(&sb, "echo $$; hostname; pwd").await;
    assert!(st.success());
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].parse::<u32>().unwrap() < 20,
        "a fresh PID namespace: {out}"
    );
    assert_eq!(lines[1], "kiln-iso");
    assert_eq!(lines[2], "/tmp");
    // Writes go to the writable layer, not to the host.
    let (st, _) = run(
        &sb,
        "echo inside > /etc/kiln-sandbox-test && rm -f /etc/hostname.kiln-none",
    )
    .await;
    assert!(st.success());
    assert!(!Path::new("/etc/kiln-sandbox-test").exists());
    assert_eq!(
        std::fs::read_to_string(d.base.join("upper/etc/kiln-sandbox-test")).unwrap(),
        "inside\n"
    );
    // Deleting a file of the read-only layer leaves a whiteout (a 0:0 character device).
    let (st, _) = run(&sb, "rm /etc/debian_version").await;
    assert!(st.success());
    assert!(Path::new("/etc/debian_version").exists());
    use std::os::unix::fs::FileTypeExt;
    let wh = std::fs::symlink_metadata(d.base.join("upper/etc/debian_version")).unwrap();
    assert!(wh.file_type().is_char_device());
    // /proc, /dev, /run are the sandbox's own; nothing of them lands in the writable layer.
    let (_, out) = run(&sb, "ls /dev; echo scratch > /run/kiln/x; cat /run/kiln/x").await;
    for dev in ["null", "zero", "urandom", "pts", "shm", "ptmx"] {
        assert!(
            out.lines().any(|l| l == dev),
            "{dev} missing in /dev: {out}"
        );
    }
    assert!(out.ends_with("scratch"));
    assert!(!d.base.join("upper/run").exists());
    assert!(!d.base.join("upper/dev").exists());
    // Mounts exist only inside the sandbox.
    assert!(!host_mounts_mention(&d.base.join("root")));
    sb.stop().await.unwrap();
}

#[tokio::test]
async fn files_in_and_out() {
    let d = dirs();
    let sb = start(spec(&d, "files")).await;
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = d.base.join("src.bin");
    std::fs::write(&src, &data).unwrap();
    sb.put_file(&src, "/opt/kiln/in.bin", 0o640).await.unwrap();
    let (_, out) = run(&sb, "stat -c %a /opt/kiln/in.bin; wc -c < /opt/kiln/in.bin").await;
    assert_eq!(out, "640\n1500000");
    let back = d.base.join("back.bin");
    sb.get_file("/opt/kiln/in.bin", &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // File operations resolve users inside the sandbox.
    let r = sb
        .file_op(&FileOp::CreateFile {
            path: "made.txt".into(),
            content: Some("x".into()),
            encoding: Default::default(),
            owner: Some("nobody".into()),
            group: None,
            permissions: Some(0o600),
            overwrite: true,
        })
        .await
        .unwrap();
    assert_eq!(r, FileOpOutput::None);
    let (_, out) = run(&sb, "stat -c '%U %a' /tmp/made.txt").await;
    assert_eq!(out, "nobody 600");
    let err = sb.get_file("/no/such/file", &back).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/file"), "{err}");
    sb.stop().await.unwrap();
}

#[tokio::test]
async fn output_streams_and_timeouts_kill_inside() {
    let d = dirs();
    let sb = start(spec(&d, "time")).await;
    let mut lines = Vec::new();
    let mut sink = |s: Stream, l: &str| lines.push((s, l.to_string()));
    let out = sb
        .exec(&sh("echo out; echo err >&2; exit 3"), &mut sink)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert!(lines.contains(&(Stream::Stdout, "out".into())));
    assert!(lines.contains(&(Stream::Stderr, "err".into())));

    let mut req = sh("sleep 300 & sleep 300");
    req.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let out = sb.exec(&req, &mut Discard).await.unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, ps) = run(&sb, "ps -e -o comm= 2>/dev/null || ls /proc").await;
    assert!(!ps.contains("sleep"), "sleeps survived the timeout: {ps}");

    // A dropped exec (a step timeout upstream) is cancelled inside the sandbox too.
    let req = sh("sleep 400");
    let fut = async {
        let mut d = Discard;
        sb.exec(&req, &mut d).await
    };
    assert!(tokio::time::timeout(Duration::from_millis(500), fut)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, ps) = run(&sb, "ps -e -o comm= 2>/dev/null").await;
    assert!(
        !ps.contains("sleep"),
        "a cancelled exec left processes: {ps}"
    );
    sb.stop().await.unwrap();
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let d = dirs();
    let mut s = spec(&d, "nonet");
    s.network = Network::None;
    let sb = start(s).await;
    let (_, out) = run(
        &sb,
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
    )
    .await;
    assert_eq!(out, "lo");
    let (_, out) = run(
        &sb,
        "cat /sys/class/net/lo/operstate 2>/dev/null; grep -c . /proc/net/route",
    )
    .await;
    assert!(out.ends_with('1'), "no routes besides the header: {out}");
    sb.stop().await.unwrap();
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    let d = dirs();
    let mut s = spec(&d, "mem");
    s.limits = Limits {
        memory_bytes: Some(64 << 20),
        pids: Some(200),
        cpus: None,
    };
    let sb = start(s).await;
    let (st, _) = run(&sb, "head -c 300000000 /dev/zero | tail > /dev/null").await;
    assert_ne!(
        st,
        ExitStatus::Code(0),
        "300 MB in a 64 MB sandbox must fail"
    );
    let (st, out) = run(&sb, "echo still alive").await;
    assert!(st.success() && out == "still alive");
    let cgroups = sb.spec().cgroups.clone();
    assert!(!cgroups.is_empty());
    sb.stop().await.unwrap();
    for cg in cgroups {
        assert!(!cg.dir.exists(), "cgroup {} left behind", cg.dir.display());
    }
}

#[tokio::test]
async fn reboot_keeps_files_and_ends_processes() {
    let d = dirs();
    let sb = start(spec(&d, "boot")).await;
    let (_, pid) = run(
        &sb,
        "sleep 600 >/dev/null 2>&1 & echo $!; echo kept > /root/state",
    )
    .await;
    assert!(!pid.is_empty());
    let (_, before) = run(
        &sb,
        "cat /proc/sys/kernel/random/boot_id; ls /proc | grep -c '^[0-9]'",
    )
    .await;
    sb.reboot().await.unwrap();
    let (_, state) = run(&sb, "cat /root/state").await;
    assert_eq!(state, "kept");
    let (_, ps) = run(&sb, "ps -e -o comm= 2>/dev/null").await;
    assert!(!ps.contains("sleep"), "processes survived the reboot: {ps}");
    let _ = before;
    sb.stop().await.unwrap();
}

#[tokio::test]
async fn stop_leaves_nothing_running_or_mounted() {
    let d = dirs();
    let sb = start(spec(&d, "stop")).await;
    let (_, marker) = run(&sb, "sleep 900 & echo ok").await;
    assert_eq!(marker, "ok");
    // Find the sandbox's sleep from the host: its parent chain leads to the helper.
    let host_sleeps = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| c == b"sleep\x00900\x00")
                    .unwrap_or(false)
            })
            .collect()
    };
    let before = host_sleeps();
    assert_eq!(
        before.len(),
        1,
        "the sandbox's sleep is visible from the host"
    );
    sb.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!alive(before[0]), "sleep outlived stop");
    assert!(!host_mounts_mention(&d.base.join("root")));
    // The writable layer stays for the caller to capture.
    assert!(d.base.join("upper").exists());
}

#[tokio::test]
async fn a_bad_layer_fails_with_the_reason() {
    let d = dirs();
    let mut s = spec(&d, "bad");
    s.lower = vec![d.base.join("no-such-layer")];
    let err = Sandbox::start(
        s,
        PathBuf::from(env!("CARGO_BIN_EXE_kiln-sandbox-helper")),
        vec![HELPER_ARG.to_string()],
    )
    .await
    .err()
    .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("could not start") && msg.contains("overlay"),
        "{msg}"
    );
}

#[test]
fn sweep_removes_only_abandoned_run_folders() {
    let d = dirs();
    let runs = d.base.join("run");
    let held = RunLock::acquire(&runs.join("alive")).unwrap();
    {
        let _gone = RunLock::acquire(&runs.join("dead")).unwrap();
    }
    std::fs::write(runs.join("dead/data"), "x").unwrap();
    let removed = kiln_instance::runlock::sweep(&runs);
    assert_eq!(removed, vec![runs.join("dead")]);
    assert!(runs.join("alive").exists());
    assert!(
        RunLock::acquire(&runs.join("alive")).is_err(),
        "a held folder cannot be taken twice"
    );
    drop(held);
}
