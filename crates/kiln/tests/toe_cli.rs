//! `kiln toe` as a user runs it: the real binary, real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", std::env::temp_dir().join("kiln-cli-test-home"))
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("kiln runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("file exists")).expect("valid JSON")
}

#[test]
fn every_linux_file_module_does_what_the_guide_says() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("work");
    let out = dir.path().join("out");
    let doc = repo().join("examples/components/linux-file-modules.yaml");
    let o = kiln(&[
        "toe",
        "run",
        "--document",
        doc.to_str().unwrap(),
        "--parameters",
        &format!("Base={}", base.display()),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).starts_with("success: 20 step(s) run"),
        "{}",
        text(&o.stdout)
    );

    let b = |p: &str| base.join(p);
    let read = |p: &str| std::fs::read_to_string(b(p)).unwrap();
    let mode = |p: &str| std::fs::metadata(b(p)).unwrap().permissions().mode() & 0o7777;
    let owner = |p: &str| std::fs::metadata(b(p)).unwrap().uid();
    // CreateFolder with owner, group and permissions.
    assert_eq!(mode("shared"), 0o775);
    // CreateFile with permissions, then AppendFile.
    assert_eq!(read("src/app.conf"), "listen 8080\nworkers 4\n");
    assert_eq!(mode("src/app.conf"), 0o640);
    // CopyFile with a wildcard into a folder, and to a new name (mode kept, like cp).
    assert_eq!(read("archive/a.log"), "a\n");
    assert_eq!(read("archive/b.log"), "b\n");
    assert!(!b("archive/keep.txt").exists());
    assert_eq!(read("archive/app.conf.orig"), "listen 8080\nworkers 4\n");
    // CopyFolder into a folder, then MoveFolder to a new name; DeleteFolder removed the rest.
    assert_eq!(read("old-logs/keep.txt"), "keep\n");
    assert!(!b("backup").exists());
    // MoveFile into a folder keeps the name; SetFileEncoding made it UTF-16LE without a BOM.
    assert!(!b("src/notes.txt").exists());
    let notes = std::fs::read(b("docs/notes.txt")).unwrap();
    assert_eq!(
        notes,
        "héllo"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    );
    // CreateSymlink.
    assert_eq!(
        std::fs::read_link(b("current.conf")).unwrap(),
        b("src/app.conf")
    );
    // SetFileOwner / SetFolderOwner (recursive by default) by name.
    assert_eq!(owner("archive/a.log"), 65534);
    assert_eq!(owner("old-logs"), 65534);
    assert_eq!(owner("old-logs/keep.txt"), 65534);
    // SetFilePermissions / SetFolderPermissions (recursive by default).
    assert_eq!(mode("archive/b.log"), 0o600);
    assert_eq!(mode("old-logs"), 0o750);
    assert_eq!(mode("old-logs/keep.txt"), 0o750);
    // DeleteFile with a wildcard leaves what does not match.
    assert!(!b("src/logs/a.log").exists() && !b("src/logs/b.log").exists());
    assert_eq!(read("src/logs/keep.txt"), "keep\n");

    // detailedoutput.json tells the same story.
    let report = json(&out.join("detailedoutput.json"));
    assert_eq!(report["status"], "success");
    assert_eq!(report["executedStepCount"], 20);
    let steps = |phase: usize| {
        report["documents"][0]["phases"][phase]["steps"]
            .as_array()
            .unwrap()
            .clone()
    };
    let build = steps(0);
    assert_eq!(build.len(), 17);
    let by_name = |name: &str| build.iter().find(|s| s["name"] == name).unwrap().clone();
    let outputs = |name: &str| -> serde_json::Value {
        serde_json::from_str(by_name(name)["outputs"].as_str().unwrap()).unwrap()
    };
    assert_eq!(outputs("Read")[0]["content"], "listen 8080\nworkers 4\n");
    assert_eq!(
        outputs("List")[0]["files"],
        format!("{0}/archive/a.log,{0}/archive/b.log", base.display())
    );
    let inputs: serde_json::Value =
        serde_json::from_str(by_name("Files")["inputs"].as_str().unwrap()).unwrap();
    assert_eq!(inputs.as_array().unwrap().len(), 5);
    assert_eq!(
        inputs[0]["path"],
        format!("{}/src/app.conf", base.display())
    );
    for s in build.iter().chain(steps(1).iter()) {
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["attempts"], 1);
    }
    // console.log has every step and the printed file content; document.yaml is the input.
    let console = std::fs::read_to_string(out.join("console.log")).unwrap();
    assert!(console.contains("==> build/Read (ReadFile) started"));
    assert!(console.contains("\nworkers 4\n"), "{console}");
    assert!(console.contains("<== validate/LinkResolves success"));
    assert_eq!(
        std::fs::read_to_string(out.join("document.yaml")).unwrap(),
        std::fs::read_to_string(&doc).unwrap()
    );
}

#[test]
fn validate_reports_positions_and_exit_codes() {
    let corpus = repo().join("crates/kiln-toe/tests/corpus/awstoe");
    let good = corpus.join("user-guide/toe-get-started-02.yaml");
    let bad = corpus.join("user-guide/toe-use-documents-01.yaml");
    let o = kiln(&["toe", "validate", "--document", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("valid"));
    let o = kiln(&[
        "toe",
        "validate",
        "-d",
        &format!("{},{}", good.display(), bad.display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("toe-use-documents-01.yaml:10:27: error:"),
        "{err}"
    );
    assert!(err.contains("toe-use-documents-01.yaml: 6 errors"), "{err}");
    let o = kiln(&["toe", "validate", "-d", "/no/such/doc.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("/no/such/doc.yaml"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn run_failures_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("fail.yaml");
    std::fs::write(
        &doc,
        "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Broken\n        action: ExecuteBash\n        inputs:\n          commands: ['echo partial; echo oops >&2; exit 4']\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = kiln(&[
        "toe",
        "run",
        "-d",
        doc.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stdout).contains("failed: step `Broken` (ExecuteBash) failed"),
        "{}",
        text(&o.stdout)
    );
    let report = json(&out.join("detailedoutput.json"));
    assert_eq!(report["status"], "failed");
    assert_eq!(
        report["documents"][0]["phases"][0]["steps"][0]["status"],
        "failed"
    );
    assert!(std::fs::read_to_string(out.join("console.log"))
        .unwrap()
        .contains("oops"));

    // An invalid document runs nothing and writes nothing.
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: X\n        action: Nope\n").unwrap();
    let out2 = dir.path().join("out2");
    let o = kiln(&[
        "toe",
        "run",
        "-d",
        invalid.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("invalid.yaml:6:17: error:"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out2.exists());

    // Bad flags are refused before anything runs.
    let o = kiln(&[
        "toe",
        "run",
        "-d",
        doc.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--phases",
        "biuld",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("unknown phase `biuld`"));
    let o = kiln(&[
        "toe",
        "run",
        "-d",
        doc.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--parameters",
        "ntp-server=",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("has no value"));
}

#[test]
fn ignored_failures_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("ignored.yaml");
    std::fs::write(
        &doc,
        "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Meh\n        action: ExecuteBash\n        onFailure: Ignore\n        inputs:\n          commands: ['exit 1']\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = kiln(&[
        "toe",
        "run",
        "-d",
        doc.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        json(&out.join("detailedoutput.json"))["status"],
        "success-with-ignored-failure"
    );
}

#[test]
fn sigterm_stops_the_running_step_and_its_processes() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("slow.yaml");
    let pidfile = dir.path().join("bg.pid");
    std::fs::write(
        &doc,
        format!(
            "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Slow\n        action: ExecuteBash\n        inputs:\n          commands: ['sleep 600 & echo $! > {}; sleep 600']\n",
            pidfile.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "toe",
            "run",
            "-d",
            doc.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", text(&o.stderr));
    assert!(text(&o.stderr)
        .contains("terminated: the running step and every process it started were stopped"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alive = std::fs::read_to_string(format!("/proc/{bg}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    assert!(
        !alive,
        "background process {bg} of the step survived SIGTERM to kiln"
    );
    assert!(std::fs::read_to_string(out.join("console.log"))
        .unwrap()
        .contains("==> build/Slow"));
}
