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
    /// Mounts a copy of the folder `src` at `target`, its ids seen through the user namespace
    /// `userns` (see [`super::userns::idmapped_bind`]).
    fn idmapped_bind(&self, src: &Path, userns: i32, target: &Path) -> std::io::Result<()>;
    /// From now on, creates files, folders and links under `root` as `owner` (host uid and
    /// gid), resolving paths from `root` without following links: what kiln creates in an
    /// id-mapped root then belongs to root inside, and no link in the image leads outside.
    /// `None` goes back to plain creation.
    fn create_as(&self, root: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()>;
    /// Takes `owner`'s file-system ids (host uid and gid) keeping every capability, or goes
    /// back to id 0 with `None`. overlayfs works with its mounter's credentials, and over
    /// id-mapped layers those must map: host id 0 does not.
    fn fs_ids(&self, owner: Option<(u32, u32)>) -> std::io::Result<()>;
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

/// Where and as whom [`Linux`] creates files (see [`Syscalls::create_as`]).
struct Creator {
    root: PathBuf,
    fd: std::os::fd::OwnedFd,
    uid: u32,
    gid: u32,
}

/// The real system calls.
#[derive(Default)]
pub struct Linux {
    creator: std::sync::Mutex<Option<Creator>>,
}

/// Sets the file-system ids for the life of the guard (root's file capabilities come back with
/// id 0 when it drops).
struct FsIds;

impl FsIds {
    fn switch(uid: u32, gid: u32) -> FsIds {
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        FsIds
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
    }
}

/// Opens each folder of `rel` below `dir` without following links (`mkdir` first when
/// `create`), returning the last one and the final name.
fn walk_at(
    dir: &std::os::fd::OwnedFd,
    rel: &Path,
    create: bool,
) -> std::io::Result<(std::os::fd::OwnedFd, Option<std::ffi::OsString>)> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::{AsRawFd, FromRawFd};
    let names: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return Ok((dir.try_clone()?, None));
    };
    let mut cur = dir.try_clone()?;
    for name in parents {
        if create {
            match nix::sys::stat::mkdirat(
                Some(cur.as_raw_fd()),
                name.as_os_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        let fd = openat(
            Some(cur.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        // SAFETY: a new descriptor from openat.
        cur = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    }
    Ok((cur, Some(last.clone())))
}

impl Linux {
    /// Runs `op` with the folder holding `path`'s last name and that name, when `path` is
    /// below the creator's root; `None` when creation is plain.
    fn at<T>(
        &self,
        path: &Path,
        mkdirs: bool,
        op: impl FnOnce(std::os::fd::RawFd, &std::ffi::OsStr) -> nix::Result<T>,
    ) -> Option<std::io::Result<T>> {
        use std::os::fd::AsRawFd;
        let guard = self.creator.lock().ok()?;
        let c = guard.as_ref()?;
        let rel = path.strip_prefix(&c.root).ok()?;
        let _ids = FsIds::switch(c.uid, c.gid);
        Some(
            walk_at(&c.fd, rel, mkdirs).and_then(|(dir, name)| match name {
                Some(name) => op(dir.as_raw_fd(), &name).map_err(errno),
                None => Err(std::io::Error::from_raw_os_error(nix::libc::EEXIST)),
            }),
        )
    }
}

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
        let made = self.at(dir, true, |d, name| {
            match nix::sys::stat::mkdirat(
                Some(d),
                name,
                nix::sys::stat::Mode::from_bits_truncate(mode),
            ) {
                Err(nix::errno::Errno::EEXIST) => Ok(()),
                r => r,
            }
        });
        if let Some(r) = made {
            return match r {
                Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
                r => r,
            };
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
    }

    fn touch(&self, file: &Path) -> std::io::Result<()> {
        use nix::fcntl::OFlag;
        let made = self.at(file, false, |d, name| {
            nix::fcntl::openat(
                Some(d),
                name,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .and_then(nix::unistd::close)
        });
        if let Some(r) = made {
            return r;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map(|_| ())
    }

    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()> {
        if let Some(r) = self.at(link, false, |d, name| {
            nix::unistd::symlinkat(target, Some(d), name)
        }) {
            return r;
        }
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

    fn idmapped_bind(&self, src: &Path, userns: i32, target: &Path) -> std::io::Result<()> {
        super::userns::idmapped_bind(src, userns, target)
    }

    fn create_as(&self, root: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        use nix::fcntl::OFlag;
        use std::os::fd::FromRawFd;
        let creator = match owner {
            None => None,
            Some((uid, gid)) => {
                let fd = nix::fcntl::open(
                    root,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(errno)?;
                Some(Creator {
                    root: root.to_path_buf(),
                    // SAFETY: a new descriptor from open.
                    fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
                    uid,
                    gid,
                })
            }
        };
        if let Ok(mut c) = self.creator.lock() {
            *c = creator;
        }
        Ok(())
    }

    fn fs_ids(&self, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        let (uid, gid) = owner.unwrap_or((0, 0));
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        // A file-system id other than 0 took root's file capabilities out of the effective
        // set; they are still permitted.
        super::confine::raise_permitted()
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
    /// an id-mapped bind mount (source, target)
    IdmappedBind(PathBuf, PathBuf),
    /// creation as an owner under a root from now on
    CreateAs(PathBuf, Option<(u32, u32)>),
    /// file-system ids
    FsIds(Option<(u32, u32)>),
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
    /// Id-mapped mounts fail with this errno (a kernel without them).
    pub no_idmap: Option<i32>,
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
    fn idmapped_bind(&self, src: &Path, _: i32, target: &Path) -> std::io::Result<()> {
        if let Some(e) = self.no_idmap {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        self.push(Call::IdmappedBind(src.to_path_buf(), target.to_path_buf()));
        Ok(())
    }
    fn create_as(&self, root: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        self.push(Call::CreateAs(root.to_path_buf(), owner));
        Ok(())
    }
    fn fs_ids(&self, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        self.push(Call::FsIds(owner));
        Ok(())
    }
}
