//! The sandbox's root filesystem: the overlay of its layers (id-mapped when the sandbox has a
//! user namespace), `/proc` with Docker's masked and read-only files, a fresh read-only sysfs,
//! a minimal `/dev`, `/run`, resolv.conf and the hostname, then `pivot_root` into it.
//!
//! Everything goes through [`Syscalls`], so the mount plan is checked by unit tests without
//! root.

use std::path::{Path, PathBuf};

use super::confine::{MASKED_PATHS, READ_ONLY_PATHS};
use super::syscalls::{PathState, Syscalls};
use super::{Confinement, Network, SandboxSpec, SCRATCH};
use nix::mount::{MntFlags, MsFlags};

/// Devices bind-mounted from the host into the sandbox's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Where a symbolic link in `dir` points, as an absolute path with `.` and `..` resolved
/// (`../run/x` in `/etc` is `/run/x`), without touching the filesystem.
fn link_target(dir: &str, to: &Path) -> PathBuf {
    use std::path::Component;
    let joined = Path::new(dir).join(to);
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// What [`setup_root`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooted {
    /// Mount points it had to create in the writable layer (relative to the root), which
    /// captures leave out.
    pub created: Vec<String>,
    /// Whether the layers are id-mapped, so the sandbox's processes can run in its user
    /// namespace; `false` when the kernel or a layer's filesystem has no id-mapped mounts.
    pub idmapped: bool,
    /// Why they are not, when they could have been.
    pub idmap_refused: Option<String>,
}

/// How the sandbox's own files are owned: host root, or root of its user namespace.
#[derive(Clone, Copy)]
struct Owner(Option<u32>);

impl Owner {
    /// Mount options giving a tmpfs's top folder to root inside.
    fn tmpfs(self, opts: &str) -> String {
        match self.0 {
            Some(id) => format!("{opts},uid={id},gid={id}"),
            None => opts.to_string(),
        }
    }
}

/// Builds the sandbox's root filesystem and makes it `/`. `userns` is the sandbox's user
/// namespace (a confined sandbox has one): the layers are then mounted id-mapped through it,
/// when the kernel can.
pub fn setup_root(
    sys: &dyn Syscalls,
    spec: &SandboxSpec,
    userns: Option<i32>,
) -> Result<Rooted, String> {
    let root = spec.root.as_path();
    let confined = spec.confinement == Confinement::Confined;
    let mut created: Vec<String> = Vec::new();

    // Nothing mounted below may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;

    let (idmapped, idmap_refused) = mount_overlay(sys, spec, userns)?;
    let owner = Owner(if idmapped {
        spec.ids.map(|i| i.host_base)
    } else {
        None
    });
    if let Some(id) = owner.0 {
        sys.create_as(root, Some((id, id)))
            .map_err(|e| io("opening", root, e))?;
    }
    let ensure_dir = |rel: &str, created: &mut Vec<String>| -> Result<PathBuf, String> {
        let p = root.join(rel);
        match sys.kind(&p) {
            PathState::Dir => {}
            PathState::Missing => {
                sys.mkdir_all(&p, 0o755)
                    .map_err(|e| io("creating", &p, e))?;
                created.push(rel.to_string());
            }
            _ => {
                return Err(format!(
                    "/{rel} in the image is not a folder; kiln mounts one there"
                ))
            }
        }
        Ok(p)
    };

    let proc_dir = ensure_dir("proc", &mut created)?;
    sys.mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;

    let sys_dir = ensure_dir("sys", &mut created)?;
    mount_sys(sys, &sys_dir, confined)?;
    if confined {
        mask(sys, root)?;
    }
    let dev = ensure_dir("dev", &mut created)?;
    mount_dev(sys, &dev, owner, confined)?;

    // /run is a tmpfs, as on a booted system; kiln's scratch folder lives there, out of captures.
    let run = ensure_dir("run", &mut created)?;
    sys.mount(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owner.tmpfs("mode=755")),
    )
    .map_err(|e| format!("mounting /run: {e}"))?;
    let scratch = root.join(SCRATCH.trim_start_matches('/'));
    sys.mkdir_all(&scratch, 0o700)
        .map_err(|e| io("creating", &scratch, e))?;

    match spec.network {
        Network::Host | Network::Private => {
            if let Some(src) = &spec.resolv_conf {
                bind_resolv_conf(sys, root, src, &mut created)?;
            }
        }
        Network::None => sys
            .loopback_up()
            .map_err(|e| format!("bringing up the loopback interface: {e}"))?,
    }
    sys.sethostname(&spec.hostname)
        .map_err(|e| format!("setting the hostname: {e}"))?;

    // pivot_root(".", "."): the old root ends up stacked under the new one and is detached at
    // once, so no folder for it is needed in the image.
    sys.chdir(root).map_err(|e| io("entering", root, e))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| format!("pivot_root: {e}"))?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| format!("detaching the old root: {e}"))?;
    sys.chdir(Path::new("/"))
        .map_err(|e| format!("chdir /: {e}"))?;
    if let Some(id) = owner.0 {
        sys.create_as(Path::new("/"), Some((id, id)))
            .map_err(|e| format!("opening /: {e}"))?;
    }
    let wd = Path::new(&spec.working_dir);
    if sys.kind(wd) == PathState::Missing {
        sys.mkdir_all(wd, 0o755)
            .map_err(|e| io("creating the working directory", wd, e))?;
    }
    if owner.0.is_some() {
        sys.create_as(Path::new("/"), None)
            .map_err(|e| format!("closing /: {e}"))?;
    }
    Ok(Rooted {
        created,
        idmapped,
        idmap_refused,
    })
}

/// Errors of `open_tree`/`mount_setattr` that mean "no id-mapped mounts here" (an old kernel,
/// or a filesystem that cannot map ids), not a mistake.
fn idmap_unsupported(e: &std::io::Error) -> bool {
    use nix::libc;
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP)
    )
}

/// Mounts the overlay at the root. With a user namespace, each layer is first mounted
/// id-mapped on a private tmpfs at the root (covered by the overlay right after, and detached
/// with the old root), so that files owned by host id 0 on disk are root's inside, and what
/// root inside writes lands on disk as id 0. Returns whether it could, and why not.
fn mount_overlay(
    sys: &dyn Syscalls,
    spec: &SandboxSpec,
    userns: Option<i32>,
) -> Result<(bool, Option<String>), String> {
    let root = spec.root.as_path();
    let paths = spec
        .lower
        .iter()
        .chain([&spec.upper, &spec.work])
        .map(|p| p.display().to_string());
    if let Some(bad) = paths.clone().find(|p| p.contains([':', ','])) {
        return Err(format!(
            "layer path `{bad}` contains `:` or `,`, which overlayfs cannot take"
        ));
    }
    let flags = if spec.confinement == Confinement::Confined {
        // A device node made inside (kiln's CAP_MKNOD is Docker's) cannot be opened.
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    let mut refused = None;
    if let Some(ns) = userns {
        match idmapped_layers(sys, spec, ns) {
            Ok(Some((lower, upper, work))) => {
                let data = overlay_options(&lower, &upper, &work)?;
                let owner = spec.ids.map(|i| (i.host_base, i.host_base));
                let mounted = sys.fs_ids(owner).and_then(|()| {
                    let m = sys.mount(Some("overlay"), root, Some("overlay"), flags, Some(&data));
                    sys.fs_ids(None).and(m)
                });
                match mounted {
                    Ok(()) => return Ok((true, None)),
                    Err(e) => {
                        refused = Some(format!("overlayfs refused id-mapped layers: {e}"));
                        let _ = sys.umount(root, MntFlags::MNT_DETACH);
                    }
                }
            }
            Ok(None) => {}
            Err(e) if idmap_unsupported(&e) => {
                refused = Some(format!("id-mapped mounts: {e}"));
                let _ = sys.umount(root, MntFlags::MNT_DETACH);
            }
            Err(e) => return Err(format!("mounting the overlay filesystem's layers: {e}")),
        }
    }
    let lower: Vec<String> = spec.lower.iter().map(|p| p.display().to_string()).collect();
    let data = overlay_options(
        &lower,
        &spec.upper.display().to_string(),
        &spec.work.display().to_string(),
    )?;
    sys.mount(Some("overlay"), root, Some("overlay"), flags, Some(&data))
        .map_err(|e| format!("mounting the overlay filesystem at {}: {e}", root.display()))?;
    Ok((false, refused))
}

/// Mounts the layers id-mapped under the root; returns the overlay's lower folders, upper and
/// work folders (`None` when the upper and work folders are not side by side, which one
/// id-mapped mount needs).
fn idmapped_layers(
    sys: &dyn Syscalls,
    spec: &SandboxSpec,
    userns: i32,
) -> std::io::Result<Option<(Vec<String>, String, String)>> {
    let root = spec.root.as_path();
    let (Some(dir), Some(up), Some(work)) = (
        spec.upper.parent(),
        spec.upper.file_name(),
        spec.work.file_name(),
    ) else {
        return Ok(None);
    };
    if spec.work.parent() != Some(dir) {
        return Ok(None);
    }
    sys.mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=700,size=64k"),
    )?;
    let mut lower = Vec::new();
    for (i, l) in spec.lower.iter().enumerate() {
        let at = root.join(format!("l{i}"));
        sys.mkdir_all(&at, 0o700)?;
        sys.idmapped_bind(l, userns, &at).map_err(|e| {
            if idmap_unsupported(&e) {
                e
            } else {
                std::io::Error::new(e.kind(), format!("{}: {e}", l.display()))
            }
        })?;
        lower.push(at.display().to_string());
    }
    let at = root.join("u");
    sys.mkdir_all(&at, 0o700)?;
    sys.idmapped_bind(dir, userns, &at)?;
    Ok(Some((
        lower,
        at.join(up).display().to_string(),
        at.join(work).display().to_string(),
    )))
}

/// overlayfs' options. Features that would make the writable layer hold anything but plain
/// files and whiteouts (metadata-only copies, redirects, an inode index) are turned off:
/// captures read it as a diff.
fn overlay_options(lower: &[String], upper: &str, work: &str) -> Result<String, String> {
    let data = format!(
        "lowerdir={},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off",
        lower.join(":"),
    );
    if data.len() > 4000 {
        return Err(format!(
            "{} layers are too many for one overlay mount (the option string is {} bytes; the limit is 4096)",
            lower.len(),
            data.len()
        ));
    }
    Ok(data)
}

/// /sys: confined, a fresh read-only sysfs (it shows the sandbox's own network namespace, and
/// no cgroup hierarchy of the host); on a cgroup v2 host, the sandbox's own cgroup (its cgroup
/// namespace's root) read-only at /sys/fs/cgroup. Unconfined, the host's /sys, read-only at
/// its top.
fn mount_sys(sys: &dyn Syscalls, sys_dir: &Path, confined: bool) -> Result<(), String> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if confined {
        sys.mount(Some("sysfs"), sys_dir, Some("sysfs"), ro, None)
            .map_err(|e| format!("mounting /sys: {e}"))?;
        if sys.kind(Path::new("/sys/fs/cgroup/cgroup.controllers")) == PathState::File {
            let cg = sys_dir.join("fs/cgroup");
            sys.mount(Some("cgroup2"), &cg, Some("cgroup2"), ro, None)
                .map_err(|e| format!("mounting /sys/fs/cgroup: {e}"))?;
        }
        return Ok(());
    }
    sys.mount(
        Some("/sys"),
        sys_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| format!("binding /sys: {e}"))?;
    sys.mount(
        None,
        sys_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
        None,
    )
    .map_err(|e| format!("making /sys read-only: {e}"))
}

/// Docker's masked paths (behind /dev/null or an empty read-only tmpfs) and read-only paths.
fn mask(sys: &dyn Syscalls, root: &Path) -> Result<(), String> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in MASKED_PATHS {
        let p = root.join(rel);
        let done = match sys.kind(&p) {
            PathState::Dir => sys.mount(Some("tmpfs"), &p, Some("tmpfs"), ro, Some("size=0")),
            PathState::Missing => continue,
            _ => sys.mount(Some("/dev/null"), &p, None, MsFlags::MS_BIND, None),
        };
        done.map_err(|e| format!("masking /{rel}: {e}"))?;
    }
    for rel in READ_ONLY_PATHS {
        let p = root.join(rel);
        if sys.kind(&p) == PathState::Missing {
            continue;
        }
        let p_str = p.display().to_string();
        sys.mount(
            Some(&p_str),
            &p,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .and_then(|()| {
            sys.mount(
                None,
                &p,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
                None,
            )
        })
        .map_err(|e| format!("making /{rel} read-only: {e}"))?;
    }
    Ok(())
}

/// /dev: a tmpfs with the usual devices bound from the host, its own devpts, /dev/shm and the
/// usual links. Confined, the tmpfs is `nodev`: a device node made there cannot be opened.
fn mount_dev(sys: &dyn Syscalls, dev: &Path, owner: Owner, confined: bool) -> Result<(), String> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    if confined {
        flags |= MsFlags::MS_NODEV;
    }
    sys.mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        flags,
        Some(&owner.tmpfs("mode=755,size=65536k")),
    )
    .map_err(|e| format!("mounting /dev: {e}"))?;
    for d in DEVICES {
        let target = dev.join(d);
        sys.touch(&target).map_err(|e| io("creating", &target, e))?;
        sys.mount(
            Some(&format!("/dev/{d}")),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(|e| format!("binding /dev/{d}: {e}"))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755)
        .map_err(|e| io("creating", &pts, e))?;
    sys.mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| format!("mounting /dev/pts: {e}"))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm, 0o1777)
        .map_err(|e| io("creating", &shm, e))?;
    sys.mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owner.tmpfs("mode=1777,size=65536k")),
    )
    .map_err(|e| format!("mounting /dev/shm: {e}"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = dev.join(link);
        sys.symlink(target, &l).map_err(|e| io("creating", &l, e))?;
    }
    Ok(())
}

/// Binds the host's resolv.conf read-only over the image's.
fn bind_resolv_conf(
    sys: &dyn Syscalls,
    root: &Path,
    src: &Path,
    created: &mut Vec<String>,
) -> Result<(), String> {
    let mut target = root.join("etc/resolv.conf");
    let bind = match sys.kind(&target) {
        PathState::File => true,
        PathState::Missing if sys.kind(&root.join("etc")) == PathState::Dir => {
            sys.touch(&target).map_err(|e| io("creating", &target, e))?;
            created.push("etc/resolv.conf".to_string());
            true
        }
        // A link into /run (systemd-resolved's stub file): the sandbox's /run is its own
        // tmpfs, so the file it names is made there and the host's bound onto it.
        PathState::Symlink => match sys.read_link(&target).map(|to| link_target("/etc", &to)) {
            Ok(to) if to.starts_with("/run/") => {
                let inside = root.join(to.strip_prefix("/").unwrap_or(&to));
                if let Some(dir) = inside.parent() {
                    sys.mkdir_all(dir, 0o755)
                        .map_err(|e| io("creating", dir, e))?;
                }
                sys.touch(&inside).map_err(|e| io("creating", &inside, e))?;
                target = inside;
                true
            }
            // Any other link is left alone: binding over it would write through it.
            _ => false,
        },
        _ => false,
    };
    if bind {
        let src = src.display().to_string();
        sys.mount(Some(&src), &target, None, MsFlags::MS_BIND, None)
            .map_err(|e| format!("binding resolv.conf: {e}"))?;
        sys.mount(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(|e| format!("making resolv.conf read-only: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
