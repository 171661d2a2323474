//! Keeping a failed sandbox for debugging: its filesystem stays exactly as the failed step left
//! it (the writable layer over the same read-only layers) in a new set of namespaces whose PID 1
//! waits, so that a person can enter it after kiln is gone. The processes of the failed step are
//! not kept: they died with the sandbox.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::InstanceError;

/// Starts the namespaces that hold a kept sandbox's filesystem: overlayfs of `lowers` (topmost
/// first) and `upper` at `root`, /proc, /dev, /run, a hostname, and a PID 1 that waits.
/// Returns PID 1's process id (for `nsenter --target`).
pub fn start_kept(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    root: &Path,
    hostname: &str,
) -> Result<u32, InstanceError> {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    std::fs::create_dir_all(root)
        .map_err(|e| InstanceError::io(format!("creating {}", root.display()), e))?;
    std::fs::create_dir_all(work)
        .map_err(|e| InstanceError::io(format!("creating {}", work.display()), e))?;
    let r = q(root);
    let script = format!(
        "set -e\n\
         mount -t overlay overlay -o 'lowerdir={lower},upperdir={upper},workdir={work}' {r}\n\
         mkdir -p {r}/proc {r}/dev {r}/run {r}/tmp\n\
         mount -t proc proc {r}/proc\n\
         mount --rbind /dev {r}/dev\n\
         mount -t tmpfs tmpfs {r}/run\n\
         hostname {host}\n\
         exec chroot {r} /bin/sh -c 'while :; do sleep 3600; done'\n",
        upper = upper.display(),
        work = work.display(),
        host = hostname,
    );
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| InstanceError::Spawn {
            program: "unshare".into(),
            source,
        })?;
    let outer = child.id();
    // unshare forks PID 1 of the new namespace: wait until it stands in the kept root.
    for _ in 0..100 {
        let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("sleep 3600") {
                return Ok(pid);
            }
        }
        if !Path::new(&format!("/proc/{outer}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::process::kill_now(outer, true);
    Err(InstanceError::Op(
        "the kept sandbox did not start (unshare or mount failed)".into(),
    ))
}
