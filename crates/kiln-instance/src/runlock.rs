//! Run folders: the scratch folder of a running build, held by a lock for as long as the kiln
//! process that owns it lives. Both backends keep what they need there (a sandbox's writable
//! layer, a VM's overlay and sockets), so the lock is theirs in common: a folder whose lock is
//! free belongs to a kiln that died, and [`sweep`] removes it with what it left behind.

use std::path::{Path, PathBuf};

use crate::InstanceError;

/// A lock that marks a folder as in use by a live kiln process; [`sweep`] removes folders
/// whose lock is free (their kiln died). Dropping it releases the lock.
pub struct RunLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// The folder it guards.
    pub dir: PathBuf,
}

impl RunLock {
    /// Creates `dir` and locks it for this process.
    pub fn acquire(dir: &Path) -> Result<RunLock, InstanceError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| InstanceError::io(format!("creating {}", dir.display()), e))?;
        let f = std::fs::File::create(dir.join(".lock"))
            .map_err(|e| InstanceError::io(format!("creating {}/.lock", dir.display()), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(|lock| RunLock {
                _lock: lock,
                dir: dir.to_path_buf(),
            })
            .map_err(|(_, e)| {
                InstanceError::Op(format!("{} is in use by another kiln: {e}", dir.display()))
            })
    }
}

/// True when a live process holds the run lock of `dir`.
pub fn is_held(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(".lock")) else {
        return false;
    };
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

/// Removes run folders under `run_root` that no live kiln holds (left by a crash) with their
/// VMs' socket folders, and empty `kiln-*` cgroups. Returns the folders removed.
pub fn sweep(run_root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(run_root) {
        for e in entries.flatten() {
            let dir = e.path();
            if !dir.is_dir() {
                continue;
            }
            let Ok(f) = std::fs::File::open(dir.join(".lock")) else {
                // No lock file: a folder being created right now, or not ours; leave it.
                continue;
            };
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                crate::vm::remove_sockets_under(&dir);
                if std::fs::remove_dir_all(&dir).is_ok() {
                    removed.push(dir.clone());
                }
                drop(lock);
            }
        }
    }
    for base in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
    ] {
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("kiln-") {
                    let procs =
                        std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                    if procs.trim().is_empty() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
    }
    removed
}
