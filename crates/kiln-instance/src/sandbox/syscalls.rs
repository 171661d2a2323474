//! The system calls that build a sandbox, behind a trait: the real ones for Linux, and a
//! recorder so that the mount plan can be checked by unit tests without root or a kernel.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// What the sandbox set-up asks of the kernel.
pub trait Syscalls {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> std::io::Result<()>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> std::io::Result<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> std::io::Result<()>;
    /// `chdir(2)`.
    fn chdir(&self, dir: &Path) -> std::io::Result<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> std::io::Result<()>;
    /// Creates a folder and its parents.
    fn mkdir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()>;
    /// Creates an empty file (a bind-mount target).
    fn touch(&self, file: &Path) -> std::io::Result<()>;
    /// Creates a symbolic link.
    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()>;
    /// What is at a path, without following a final symbolic link.
    fn kind(&self, path: &Path) -> PathState;
    /// Where a symbolic link points.
    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf>;
    /// Brings the loopback interface up (in a fresh network namespace it starts down).
    fn loopback_up(&self) -> std::io::Result<()>;
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Nothing.
    Missing,
    /// A folder.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// Something else.
    Other,
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// The real system calls.
pub struct Linux;

impl Syscalls for Linux {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> std::io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(errno)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> std::io::Result<()> {
        nix::mount::umount2(target, flags).map_err(errno)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> std::io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(errno)
    }

    fn chdir(&self, dir: &Path) -> std::io::Result<()> {
        nix::unistd::chdir(dir).map_err(errno)
    }

    fn sethostname(&self, name: &str) -> std::io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno)
    }

    fn mkdir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
    }

    fn touch(&self, file: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map(|_| ())
    }

    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf> {
        std::fs::read_link(path)
    }
    fn kind(&self, path: &Path) -> PathState {
        match std::fs::symlink_metadata(path) {
            Err(_) => PathState::Missing,
            Ok(m) if m.file_type().is_symlink() => PathState::Symlink,
            Ok(m) if m.is_dir() => PathState::Dir,
            Ok(m) if m.is_file() => PathState::File,
            Ok(_) => PathState::Other,
        }
    }

    fn loopback_up(&self) -> std::io::Result<()> {
        use nix::libc;
        // SAFETY: a plain datagram socket and two ioctls on a zeroed ifreq that names "lo";
        // the socket is closed on every path.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in b"lo\0".iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            let mut result = Ok(());
            if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
                result = Err(std::io::Error::last_os_error());
            } else {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                    result = Err(std::io::Error::last_os_error());
                }
            }
            libc::close(fd);
            result
        }
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// mount(source, target, fstype, flags, data)
    Mount(
        Option<String>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    /// umount2(target)
    Umount(PathBuf),
    /// pivot_root(new, old)
    PivotRoot(PathBuf, PathBuf),
    /// chdir(dir)
    Chdir(PathBuf),
    /// sethostname(name)
    Hostname(String),
    /// mkdir -p
    Mkdir(PathBuf),
    /// touch
    Touch(PathBuf),
    /// ln -s target link
    Symlink(String, PathBuf),
    /// loopback up
    LoopbackUp,
}

/// Records calls instead of making them; `existing` says which paths exist and what they are.
#[derive(Default)]
pub struct Recorder {
    /// Calls in order.
    pub calls: std::sync::Mutex<Vec<Call>>,
    /// Paths that exist (anything not listed is missing).
    pub existing: Vec<(PathBuf, PathState)>,
    /// Symbolic links and where they point.
    pub links: Vec<(PathBuf, PathBuf)>,
}

impl Recorder {
    fn push(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }

    /// The recorded calls.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Syscalls for Recorder {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> std::io::Result<()> {
        self.push(Call::Mount(
            source.map(str::to_string),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ));
        Ok(())
    }
    fn umount(&self, target: &Path, _: MntFlags) -> std::io::Result<()> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> std::io::Result<()> {
        self.push(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ));
        Ok(())
    }
    fn chdir(&self, dir: &Path) -> std::io::Result<()> {
        self.push(Call::Chdir(dir.to_path_buf()));
        Ok(())
    }
    fn sethostname(&self, name: &str) -> std::io::Result<()> {
        self.push(Call::Hostname(name.to_string()));
        Ok(())
    }
    fn mkdir_all(&self, dir: &Path, _: u32) -> std::io::Result<()> {
        self.push(Call::Mkdir(dir.to_path_buf()));
        Ok(())
    }
    fn touch(&self, file: &Path) -> std::io::Result<()> {
        self.push(Call::Touch(file.to_path_buf()));
        Ok(())
    }
    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()> {
        self.push(Call::Symlink(target.to_string(), link.to_path_buf()));
        Ok(())
    }
    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf> {
        self.links
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
    fn kind(&self, path: &Path) -> PathState {
        self.existing
            .iter()
            .find(|(p, _)| p == path)
            .map_or(PathState::Missing, |(_, k)| *k)
    }
    fn loopback_up(&self) -> std::io::Result<()> {
        self.push(Call::LoopbackUp);
        Ok(())
    }
}
