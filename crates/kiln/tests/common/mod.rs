//! Helpers shared by kiln's command-line tests: one data directory under the target folder
//! (so Debian is bootstrapped once, and kept between runs), the kiln binary, records, processes.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-home")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn kiln_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).env("KILN_HOME", home()).env("KILN_PLAIN", "1");
    c
}

pub fn kiln(args: &[&str]) -> Output {
    kiln_cmd(args).output().expect("kiln runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn record(image: &str) -> serde_json::Value {
    let o = kiln(&["image", "get", image, "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// One text field of every object in a JSON array (`key` of each component, ...).
pub fn field_of(list: &serde_json::Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap().to_string())
        .collect()
}

/// The states a record went through, in order.
pub fn states(rec: &serde_json::Value) -> Vec<String> {
    field_of(&rec["history"], "state")
}

/// A bootstrapped Debian base image, built once per test run (and cached across runs), that
/// cheaper tests start from as `kiln:test-base/1.0.0`.
pub fn base() -> &'static str {
    static BASE: OnceLock<()> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("noop.yaml"),
            "name: noop\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-test-base\n            content: base\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("recipe.yml"),
            "name: test-base\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\nbootstrap:\n  packages: [ca-certificates]\ncomponents:\n  - path: noop.yaml\n",
        )
        .unwrap();
        let o = kiln(&["build", dir.path().join("recipe.yml").to_str().unwrap()]);
        assert!(o.status.success(), "base image: {}\n{}", text(&o.stdout), text(&o.stderr));
    });
    "kiln:test-base/1.0.0"
}

/// A Debian base with a kernel, built once: `kiln:disk-base/1.0.0`. Its bootstrap is the one
/// golden-nginx with a disk output uses (the same packages), so it is made once.
pub fn disk_base() -> &'static str {
    static BASE: OnceLock<()> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "noop.yaml",
            "name: noop\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: CreateFile\n        inputs:\n          - path: /etc/kiln-disk-base\n            content: base\n",
        );
        let r = write(
            dir.path(),
            "recipe.yml",
            "name: disk-base\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\nbootstrap:\n  packages: [ca-certificates]\ncomponents:\n  - path: noop.yaml\noutputs: [oci, disk]\nimageTestsConfiguration:\n  imageTestsEnabled: false\n",
        );
        let o = kiln(&["build", r.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "disk base: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    });
    "kiln:disk-base/1.0.0"
}

pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

pub fn mounts_mention(s: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(s)
}

/// Whether `done` holds within `within`, asked every 100 ms.
pub fn eventually(within: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// The run folders (`$KILN_HOME/run/...`) of builds whose name contains `name`.
pub fn run_folders_of(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(home().join("run"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes, when dropped, the disks the shared home keeps for the image `name`. A test run
/// names its images anew (`...-PID`), so no later build takes them again, and they are most of
/// what a run writes (13 kept disks of 400 MB to 1.1 GB each ran CI out of space).
pub struct ForgetDisks(pub String);

impl Drop for ForgetDisks {
    fn drop(&mut self) {
        let cache = kiln_core::disk::cache::DiskCache::new(&kiln_core::store::Home::new(home()));
        for entry in cache.entries().iter().filter(|e| e.name == self.0) {
            cache.remove(&entry.key);
        }
    }
}

/// A root filesystem of a few host programs and the libraries they load: enough for
/// ExecuteBash steps, in a few megabytes.
pub fn host_rootfs(root: &Path, programs: &[&str]) {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in programs {
        let path = PathBuf::from(format!("/bin/{p}"));
        let o = std::process::Command::new("ldd")
            .arg(&path)
            .output()
            .unwrap();
        for word in text(&o.stdout).split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
        files.push(path);
    }
    for f in files {
        let to = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&f).unwrap(), &to).unwrap();
    }
    for d in ["etc", "tmp", "root", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "tiny\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
}

/// Pushes a parent image of `programs` (and their libraries) to `host` as
/// `HOST/base/tiny:1.0.0`, made in `dir`: a parent that builds in seconds.
pub fn push_tiny_parent(dir: &Path, host: &str, programs: &[&str]) {
    kiln_testkit::require_tool("skopeo");
    host_rootfs(&dir.join("root"), programs);
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.join("root"))
        .args(["-cf"])
        .arg(dir.join("root.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(tarred.success());
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("tarball:{}", dir.join("root.tar").display()))
        .arg(format!("docker://{host}/base/tiny:1.0.0"))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
}
