//! The sandbox's user namespace: root inside is an unprivileged range of ids outside.
//!
//! Each running sandbox holds a slot (a lock file under [`SLOT_DIR`]) that gives it 65536 host
//! ids of its own, so that a process escaping one sandbox is nobody on the host and a stranger
//! to every other sandbox. Files keep the ids an image expects: the layers are mounted
//! id-mapped (host id 0 on disk is root inside), so what root writes inside lands on disk as
//! uid 0, and captures, the step cache and kept sandboxes read the same files as before.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::libc;
use serde::{Deserialize, Serialize};

/// Where the slot lock files live (a tmpfs: slots of a rebooted host are free).
pub const SLOT_DIR: &str = "/run/kiln-sandbox-ids";

/// The first host id of slot 0; slots follow each other, 65536 ids apiece. The nftables rule
/// of the private network covers every slot from here on ([`IdRange::all_slots`]).
pub const FIRST_HOST_ID: u32 = 0x7000_0000;

/// The first host id of the slots of sandboxes on the host's network (`network: host`): below
/// [`FIRST_HOST_ID`], out of the firewall rule's reach, so they reach the host's loopback as
/// the recipe asked.
pub const FIRST_HOST_NETWORK_ID: u32 = 0x6000_0000;

/// Ids per sandbox.
pub const IDS_PER_SANDBOX: u32 = 65536;

/// How many sandboxes can run at once on one host.
pub const SLOTS: u32 = 4096;

/// The host ids a sandbox's ids 0..count map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// Host id of root inside.
    pub host_base: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdRange {
    /// The line for `/proc/PID/uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }

    /// The range of host ids every sandbox slot may use (for firewall rules).
    pub fn all_slots() -> (u32, u32) {
        (FIRST_HOST_ID, FIRST_HOST_ID + SLOTS * IDS_PER_SANDBOX - 1)
    }
}

/// A slot held for the life of a sandbox (the lock is released when this is dropped).
#[derive(Debug)]
pub struct Slot {
    _lock: File,
    /// Its ids.
    pub ids: IdRange,
    kill: bool,
}

impl Slot {
    /// Releases the slot without killing what runs with its ids (a kept VM's passt); the next
    /// sandbox that takes the slot kills it.
    pub fn leave_running(mut self) {
        self.kill = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.kill {
            kill_range(self.ids);
        }
    }
}

/// Kills every process whose user id is in `ids`: after a sandbox, that is its pasta and
/// anything that got out of it.
pub fn kill_range(ids: IdRange) {
    let end = u64::from(ids.host_base) + u64::from(ids.count);
    for _ in 0..100 {
        let mut found = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u64>().ok());
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            if let Some(uid) = uid {
                if (u64::from(ids.host_base)..end).contains(&uid) && !zombie {
                    found = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Which ids a slot gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Ids the private network's firewall rule covers (every sandbox and VM but those on the
    /// host's network).
    Private,
    /// Ids of sandboxes on the host's network.
    HostNetwork,
}

/// Takes the first free slot of a kind (killing what a sandbox of a killed kiln left running
/// with its ids).
pub fn take_slot(kind: SlotKind) -> std::io::Result<Slot> {
    std::fs::create_dir_all(SLOT_DIR)?;
    let (first, prefix) = match kind {
        SlotKind::Private => (FIRST_HOST_ID, ""),
        SlotKind::HostNetwork => (FIRST_HOST_NETWORK_ID, "host-"),
    };
    for n in 0..SLOTS {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(SLOT_DIR).join(format!("{prefix}{n}.lock")))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let ids = IdRange {
                host_base: first + n * IDS_PER_SANDBOX,
                count: IDS_PER_SANDBOX,
            };
            kill_range(ids);
            return Ok(Slot {
                _lock: f,
                ids,
                kill: true,
            });
        }
    }
    Err(std::io::Error::other(format!(
        "all {SLOTS} sandbox id ranges are in use"
    )))
}

/// A process that holds the sandbox's user namespace (and its network namespace when it has
/// its own), owned by the range's root on the host: pasta joins both through it, as a process
/// of that id, and the sandbox's processes join them as host root. It exits when dropped.
pub struct Holder {
    /// Its process id.
    pub pid: i32,
    release: Option<File>,
}

impl Holder {
    /// A namespace of the holder, opened (for `setns`).
    pub fn open_ns(&self, kind: &str) -> std::io::Result<OwnedFd> {
        File::open(format!("/proc/{}/ns/{kind}", self.pid)).map(OwnedFd::from)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing the pipe ends the holder.
        self.release.take();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Starts the holder: a child that becomes `ids`' root, unshares a user namespace (and a
/// network namespace when `new_net`), and waits; the caller, host root, writes its id maps.
/// Call only from a single-threaded process.
pub fn spawn_holder(ids: IdRange, new_net: bool) -> Result<Holder, String> {
    let (mut ready_r, mut ready_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (mut release_r, release_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the caller is single-threaded; the child only makes system calls and exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            drop(release_w);
            let code = holder(ids, new_net, &mut ready_w, &mut release_r);
            // SAFETY: _exit in a forked child, without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(ready_w);
            drop(release_r);
            let mut holder = Holder {
                pid: child.as_raw(),
                release: Some(release_w),
            };
            let mut b = [0u8; 1];
            match ready_r.read(&mut b) {
                Ok(1) if b[0] == b'+' => {}
                _ => {
                    holder.release.take();
                    let _ = nix::sys::wait::waitpid(child, None);
                    return Err(
                        "creating the sandbox's user namespace failed (the kernel may not allow user namespaces: see user.max_user_namespaces)"
                            .into(),
                    );
                }
            }
            for file in ["uid_map", "gid_map"] {
                let p = format!("/proc/{}/{file}", holder.pid);
                std::fs::write(&p, ids.map_line()).map_err(|e| format!("writing {p}: {e}"))?;
            }
            // Tell the holder its ids are mapped.
            holder
                .release
                .as_mut()
                .map(|w| w.write_all(b"+"))
                .transpose()
                .map_err(|e| format!("the namespace holder: {e}"))?;
            match ready_r.read(&mut b) {
                Ok(1) if b[0] == b'+' => Ok(holder),
                _ => Err("the sandbox's namespace holder failed".into()),
            }
        }
    }
}

fn holder(ids: IdRange, new_net: bool, ready: &mut File, release: &mut File) -> i32 {
    use nix::unistd::{setresgid, setresuid, Gid, Uid};
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let (uid, gid) = (Uid::from_raw(ids.host_base), Gid::from_raw(ids.host_base));
    if nix::unistd::setgroups(&[]).is_err()
        || setresgid(gid, gid, gid).is_err()
        || setresuid(uid, uid, uid).is_err()
    {
        return 1;
    }
    // Changing ids cleared the parent-death signal; set it again.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut flags = nix::sched::CloneFlags::CLONE_NEWUSER;
    if new_net {
        flags |= nix::sched::CloneFlags::CLONE_NEWNET;
    }
    if nix::sched::unshare(flags).is_err() {
        return 1;
    }
    // pasta, running as the same host id, opens this process's namespaces through /proc.
    let _ = nix::sys::prctl::set_dumpable(true);
    if ready.write_all(b"+").is_err() {
        return 1;
    }
    let mut b = [0u8; 1];
    if !matches!(release.read(&mut b), Ok(1)) {
        return 1;
    }
    if ready.write_all(b"+").is_err() {
        return 1;
    }
    // Until the sandbox ends (the pipe closes).
    let _ = release.read(&mut b);
    0
}

/// Enters the user namespace `userns` as its root (no supplementary groups), from host root.
/// Call after every mount: the mount namespace stays the host's, so nothing inside can change
/// it.
pub fn enter(userns: RawFd) -> std::io::Result<()> {
    use nix::unistd::{setresgid, setresuid, Gid, Uid};
    // SAFETY: setns on a namespace descriptor this process holds; the process is
    // single-threaded.
    if unsafe { libc::setns(userns, libc::CLONE_NEWUSER) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let err = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
    nix::unistd::setgroups(&[]).map_err(err)?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(err)?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(err)?;
    Ok(())
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Mounts a copy of the folder `src` at `target` with its ids seen through `userns`' map
/// (an id-mapped mount: host id 0 on disk is the namespace's root). Only `src`'s own mount is
/// copied, not the mounts below it: overlayfs reads one filesystem per layer.
pub fn idmapped_bind(src: &Path, userns: RawFd, target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (src_c, target_c) = (c(src)?, c(target)?);
    // SAFETY: open_tree with a valid path; the descriptor it returns is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    let empty = c(Path::new(""))?;
    // SAFETY: mount_setattr on the detached tree with a mount_attr of the documented size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: move_mount of the detached tree onto an existing folder.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
