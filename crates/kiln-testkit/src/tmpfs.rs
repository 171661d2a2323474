//! A tmpfs of a given size mounted for a test (a full disk, on purpose), unmounted when the
//! test ends, also when it fails.

use std::path::{Path, PathBuf};

/// A mounted tmpfs; unmounted (lazily, when busy) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`) on `dir`; panics when it cannot (it needs root).
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs (needs root) failed: {status}"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command.arg(&self.0).status().is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount {}", self.0.display());
        }
    }
}
