//! The host instance against the real machine: processes, timeouts, file operations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_instance::fileops::{FileOp, FileOpOutput, PathKind};
use kiln_instance::host::HostInstance;
use kiln_instance::{ExecRequest, ExitStatus, Instance, Stream};

fn bash(script: &str, timeout: Option<Duration>) -> ExecRequest {
    ExecRequest {
        program: "bash".into(),
        args: vec!["-c".into(), script.into()],
        timeout,
        ..ExecRequest::default()
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !kiln_instance::process::parse_stat(&s).is_some_and(|p| p.zombie),
        Err(_) => false,
    }
}

#[tokio::test]
async fn streams_lines_in_order_and_captures() {
    let host = HostInstance::new(std::env::temp_dir());
    let mut lines = Vec::new();
    let mut sink = |s: Stream, l: &str| lines.push((s, l.to_string()));
    let out = host
        .exec(
            &bash("echo one; echo two >&2; printf 'three'", None),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout, "one\nthree");
    assert_eq!(out.stderr, "two\n");
    assert!(lines.contains(&(Stream::Stdout, "one".into())));
    assert!(lines.contains(&(Stream::Stderr, "two".into())));
    assert!(lines.contains(&(Stream::Stdout, "three".into())));
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let host = HostInstance::new(std::env::temp_dir());
    let out = host
        .exec(&bash("exit 194", None), &mut kiln_instance::Discard)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(194));
    let out = host
        .exec(&bash("kill -TERM $$", None), &mut kiln_instance::Discard)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Signal(15));
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let host = HostInstance::new(dir.path());
    // A child in the background, a grandchild that leaves the session, and the main process.
    let script = format!(
        "sleep 300 & echo $! >> {p}; setsid sleep 301 & echo $! >> {p}; sleep 302",
        p = pidfile.display()
    );
    let started = Instant::now();
    let out = host
        .exec(
            &bash(&script, Some(Duration::from_millis(700))),
            &mut kiln_instance::Discard,
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    std::thread::sleep(Duration::from_millis(100));
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the timeout");
    }
}

#[tokio::test]
async fn cancelling_kills_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let host = HostInstance::new(dir.path());
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let req = bash(&script, None);
    let fut = async {
        let mut sink = kiln_instance::Discard;
        host.exec(&req, &mut sink).await
    };
    assert!(tokio::time::timeout(Duration::from_millis(800), fut)
        .await
        .is_err());
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(pid), "process {pid} outlived its cancelled step");
}

#[tokio::test]
async fn background_daemon_does_not_hang_the_step() {
    let host = HostInstance::new(std::env::temp_dir());
    let started = Instant::now();
    let out = host
        .exec(
            &bash("sleep 5 & echo started", None),
            &mut kiln_instance::Discard,
        )
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, "started\n");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let host = HostInstance::new(std::env::temp_dir());
    let req = ExecRequest {
        program: "/no/such/program".into(),
        ..ExecRequest::default()
    };
    let err = host
        .exec(&req, &mut kiln_instance::Discard)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

#[tokio::test]
async fn host_cannot_reboot() {
    let host = HostInstance::new(std::env::temp_dir());
    assert!(!host.can_reboot());
    let err = host.reboot().await.unwrap_err();
    assert!(err.to_string().contains("cannot reboot"));
}

async fn op(host: &HostInstance, op: FileOp) -> Result<FileOpOutput, String> {
    host.file_op(&op).await.map_err(|e| e.to_string())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).expect("readable file")
}

#[tokio::test]
async fn copy_and_move_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = HostInstance::new(d);
    std::fs::create_dir_all(d.join("src/sub")).unwrap();
    std::fs::write(d.join("src/a.log"), "a").unwrap();
    std::fs::write(d.join("src/b.log"), "b").unwrap();
    std::fs::write(d.join("src/c.txt"), "c").unwrap();
    std::fs::write(d.join("src/sub/x"), "x").unwrap();

    // Wildcards need a folder destination.
    let e = op(
        &host,
        FileOp::CopyFile {
            source: "src/*.log".into(),
            destination: "out".into(),
            overwrite: true,
            remove_source: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("must be a folder ending in /"), "{e}");
    op(
        &host,
        FileOp::CopyFile {
            source: "src/*.log".into(),
            destination: "out/".into(),
            overwrite: true,
            remove_source: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(read(&d.join("out/a.log")), "a");
    assert_eq!(read(&d.join("out/b.log")), "b");
    assert!(!d.join("out/c.txt").exists());

    // overwrite: false protects an existing file.
    let e = op(
        &host,
        FileOp::CopyFile {
            source: "src/c.txt".into(),
            destination: "out/a.log".into(),
            overwrite: false,
            remove_source: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("overwrite is false"), "{e}");
    assert_eq!(read(&d.join("out/a.log")), "a");

    // Copying a folder into a folder keeps its name; a plain destination is the copy itself.
    op(
        &host,
        FileOp::CopyFolder {
            source: "src".into(),
            destination: "tree/".into(),
            overwrite: true,
            remove_source: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(read(&d.join("tree/src/sub/x")), "x");
    op(
        &host,
        FileOp::CopyFolder {
            source: "src/sub".into(),
            destination: "renamed".into(),
            overwrite: true,
            remove_source: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(read(&d.join("renamed/x")), "x");

    // Moving removes the source.
    op(
        &host,
        FileOp::CopyFile {
            source: "src/c.txt".into(),
            destination: "moved/".into(),
            overwrite: true,
            remove_source: true,
        },
    )
    .await
    .unwrap();
    assert!(!d.join("src/c.txt").exists());
    assert_eq!(read(&d.join("moved/c.txt")), "c");
    op(
        &host,
        FileOp::CopyFolder {
            source: "renamed".into(),
            destination: "moved/".into(),
            overwrite: true,
            remove_source: true,
        },
    )
    .await
    .unwrap();
    assert!(!d.join("renamed").exists());
    assert_eq!(read(&d.join("moved/renamed/x")), "x");

    // A missing source is an error that names it.
    let e = op(
        &host,
        FileOp::CopyFile {
            source: "nope.txt".into(),
            destination: "x".into(),
            overwrite: true,
            remove_source: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("nope.txt") && e.contains("does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn create_delete_list_stat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = HostInstance::new(d);
    op(
        &host,
        FileOp::CreateFile {
            path: "a/b/f.txt".into(),
            content: Some("hi".into()),
            encoding: Default::default(),
            owner: None,
            group: None,
            permissions: Some(0o640),
            overwrite: true,
        },
    )
    .await
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.join("a/b/f.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let e = op(
        &host,
        FileOp::CreateFile {
            path: "a/b/f.txt".into(),
            content: None,
            encoding: Default::default(),
            owner: None,
            group: None,
            permissions: None,
            overwrite: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("overwrite is false"));
    assert_eq!(
        op(&host, FileOp::Stat { path: "a/b".into() })
            .await
            .unwrap(),
        FileOpOutput::Kind(PathKind::Folder)
    );
    assert_eq!(
        op(
            &host,
            FileOp::ListFiles {
                path: "a".into(),
                pattern: Some("*.txt".into()),
                recursive: true,
                relative: false,
            }
        )
        .await
        .unwrap(),
        FileOpOutput::Paths(vec![d.join("a/b/f.txt").to_string_lossy().into_owned()])
    );
    let e = op(
        &host,
        FileOp::DeleteFolder {
            path: "a".into(),
            force: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("not empty"), "{e}");
    op(
        &host,
        FileOp::DeleteFolder {
            path: "a".into(),
            force: true,
        },
    )
    .await
    .unwrap();
    assert!(!d.join("a").exists());
    // Deleting what is not there is not an error.
    op(
        &host,
        FileOp::DeleteFile {
            path: "a/b/f.txt".into(),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn owners_resolve_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostInstance::new(dir.path());
    std::fs::write(dir.path().join("f"), "").unwrap();
    op(
        &host,
        FileOp::SetOwner {
            path: "f".into(),
            owner: "nobody".into(),
            group: None,
            recursive: false,
            folder: false,
        },
    )
    .await
    .unwrap();
    let (uid, _) = kiln_instance::fileops::owner_of(&dir.path().join("f")).unwrap();
    assert_eq!(uid, 65534);
    let e = op(
        &host,
        FileOp::SetOwner {
            path: "f".into(),
            owner: "no-such-user-kiln".into(),
            group: None,
            recursive: false,
            folder: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}
