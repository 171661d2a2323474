//! Inside the helper process: namespaces, the root filesystem, PID 1, and the agent.
//!
//! kiln starts the helper by re-executing its own binary (so the fork happens in a fresh,
//! single-threaded process, never in the async runtime's threads). The helper:
//! 1. joins the sandbox's cgroups (resource limits),
//! 2. unshares the mount, UTS, IPC and PID namespaces (and network, on request),
//! 3. forks PID 1 of the new PID namespace, which builds the root filesystem
//!    ([`setup_root`]: private mounts, overlayfs, /proc, /sys read-only, a minimal /dev, /run,
//!    resolv.conf, hostname, `pivot_root`), forks the agent, and reaps orphans until the agent
//!    exits, at which point the kernel kills everything left in the namespace,
//! 4. waits for PID 1 and exits with its status.
//!
//! Every mount lives in the sandbox's private mount namespace, so none can outlive it. The agent
//! exits when its stdin closes (kiln stopped or died); PID 1 and the helper also carry
//! `PR_SET_PDEATHSIG`, so the chain unwinds whichever link breaks.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::syscalls::{Linux, PathState, Syscalls};
use super::{Network, SandboxSpec, SCRATCH};
use crate::protocol::{Response, ResponseBody};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

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

/// Builds the sandbox's root filesystem and makes it `/`. Returns the mount points it had to
/// create in the writable layer (relative to the root), so captures can leave them out.
pub fn setup_root(sys: &dyn Syscalls, spec: &SandboxSpec) -> Result<Vec<String>, String> {
    let root = spec.root.as_path();
    let mut created: Vec<String> = Vec::new();
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

    // Nothing mounted below may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;

    let lower: Vec<String> = spec.lower.iter().map(|p| p.display().to_string()).collect();
    if let Some(bad) = lower
        .iter()
        .chain(
            [
                spec.upper.display().to_string(),
                spec.work.display().to_string(),
            ]
            .iter(),
        )
        .find(|p| p.contains([':', ',']))
    {
        return Err(format!(
            "layer path `{bad}` contains `:` or `,`, which overlayfs cannot take"
        ));
    }
    // Features that would make the writable layer hold anything but plain files and whiteouts
    // (metadata-only copies, redirects, an inode index) are turned off: captures read it as a diff.
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    if data.len() > 4000 {
        return Err(format!(
            "{} layers are too many for one overlay mount (the option string is {} bytes; the limit is 4096)",
            lower.len(),
            data.len()
        ));
    }
    sys.mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )
    .map_err(|e| format!("mounting the overlay filesystem at {}: {e}", root.display()))?;

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
    sys.mount(
        Some("/sys"),
        &sys_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| format!("binding /sys: {e}"))?;
    sys.mount(
        None,
        &sys_dir,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|e| format!("making /sys read-only: {e}"))?;

    let dev = ensure_dir("dev", &mut created)?;
    sys.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
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
        Some("mode=1777,size=65536k"),
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

    // /run is a tmpfs, as on a booted system; kiln's scratch folder lives there, out of captures.
    let run = ensure_dir("run", &mut created)?;
    sys.mount(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .map_err(|e| format!("mounting /run: {e}"))?;
    let scratch = root.join(SCRATCH.trim_start_matches('/'));
    sys.mkdir_all(&scratch, 0o700)
        .map_err(|e| io("creating", &scratch, e))?;

    if spec.network == Network::Host {
        if let Some(src) = &spec.resolv_conf {
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
                PathState::Symlink => {
                    match sys.read_link(&target).map(|to| link_target("/etc", &to)) {
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
                    }
                }
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
        }
    } else {
        sys.loopback_up()
            .map_err(|e| format!("bringing up the loopback interface: {e}"))?;
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
    let wd = Path::new(&spec.working_dir);
    if sys.kind(wd) == PathState::Missing {
        sys.mkdir_all(wd, 0o755)
            .map_err(|e| io("creating the working directory", wd, e))?;
    }
    Ok(created)
}

fn say(resp: &Response) {
    if let Ok(line) = serde_json::to_string(resp) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn fatal(msg: String) -> ! {
    say(&Response {
        id: 0,
        body: ResponseBody::Fatal(msg),
    });
    std::process::exit(1)
}

/// Joins the cgroups kiln prepared for this sandbox (limits apply to everything it starts).
fn join_cgroups(spec: &SandboxSpec) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for cg in &spec.cgroups {
        std::fs::create_dir_all(&cg.dir).map_err(|e| io("creating cgroup", &cg.dir, e))?;
        for (file, value) in &cg.settings {
            let p = cg.dir.join(file);
            std::fs::write(&p, value).map_err(|e| io(&format!("writing `{value}` to"), &p, e))?;
        }
        let procs = cg.dir.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|e| io("joining", &procs, e))?;
    }
    Ok(())
}

/// The helper process: call from `main` when the first argument is [`super::HELPER_ARG`];
/// `spec` is the second argument. Never returns.
pub fn helper_main(spec: &str) -> ! {
    let spec: SandboxSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => fatal(format!("bad sandbox specification: {e}")),
    };
    if let Err(e) = join_cgroups(&spec) {
        fatal(format!("setting resource limits: {e}"));
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = nix::sched::unshare(flags) {
        fatal(format!(
            "creating namespaces: {e} (kiln's sandbox needs root, or CAP_SYS_ADMIN)"
        ));
    }
    // SAFETY: this process is single-threaded (a fresh exec, no runtime started yet).
    match unsafe { fork() } {
        Err(e) => fatal(format!("fork: {e}")),
        Ok(ForkResult::Child) => pid1(&spec),
        Ok(ForkResult::Parent { child }) => {
            let code = wait_for(child);
            std::process::exit(code)
        }
    }
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

fn pid1(spec: &SandboxSpec) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let created = match setup_root(&Linux, spec) {
        Ok(c) => c,
        Err(e) => fatal(e),
    };
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Err(e) => fatal(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            std::process::exit(agent(spec, created))
        }
        Ok(ForkResult::Parent { child }) => loop {
            // PID 1 reaps every orphan; when the agent ends, so does the namespace.
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    std::process::exit(128 + sig as i32)
                }
                Err(nix::errno::Errno::ECHILD) => std::process::exit(0),
                _ => continue,
            }
        },
    }
}

/// Serves requests until stdin closes. Runs as PID 2 of the sandbox.
fn agent(spec: &SandboxSpec, created: Vec<String>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(format!("starting the agent: {e}")),
    };
    let config = crate::agent::AgentConfig {
        working_dir: spec.working_dir.clone(),
        env: spec.env.clone(),
    };
    rt.block_on(crate::agent::serve(
        tokio::io::stdin(),
        tokio::io::stdout(),
        config,
        created,
    ));
    0
}

#[cfg(test)]
mod tests {
    use super::super::syscalls::{Call, Recorder};
    use super::super::{Limits, Network, SandboxSpec};
    use super::*;

    fn spec(network: Network) -> SandboxSpec {
        SandboxSpec {
            id: "t1".into(),
            lower: vec!["/k/l2".into(), "/k/l1".into()],
            upper: "/k/up".into(),
            work: "/k/work".into(),
            root: "/k/root".into(),
            hostname: "builder".into(),
            network,
            working_dir: "/tmp".into(),
            env: vec![],
            resolv_conf: Some("/etc/resolv.conf".into()),
            cgroups: vec![],
            limits: Limits::default(),
        }
    }

    fn mounts(calls: &[Call]) -> Vec<(String, Option<String>, MsFlags, Option<String>)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(_, t, fs, f, d) => {
                    Some((t.display().to_string(), fs.clone(), *f, d.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_mount_plan() {
        let rec = Recorder {
            existing: vec![
                ("/k/root/proc".into(), PathState::Dir),
                ("/k/root/sys".into(), PathState::Dir),
                ("/k/root/dev".into(), PathState::Dir),
                ("/k/root/etc".into(), PathState::Dir),
                ("/k/root/etc/resolv.conf".into(), PathState::File),
                ("/tmp".into(), PathState::Dir),
            ],
            ..Recorder::default()
        };
        let created = setup_root(&rec, &spec(Network::Host)).unwrap();
        // /run is missing in this image: it is created, and reported so captures skip it.
        assert_eq!(created, vec!["run".to_string()]);
        let calls = rec.calls();
        let m = mounts(&calls);
        assert_eq!(m[0].0, "/");
        assert_eq!(
            m[0].2,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            "private first"
        );
        assert_eq!(m[1].0, "/k/root");
        assert_eq!(
            m[1].3.as_deref(),
            Some("lowerdir=/k/l2:/k/l1,upperdir=/k/up,workdir=/k/work,redirect_dir=off,metacopy=off,index=off")
        );
        let proc_mount = m.iter().find(|x| x.0 == "/k/root/proc").unwrap();
        assert!(proc_mount
            .2
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
        let sys_ro = m.iter().filter(|x| x.0 == "/k/root/sys").nth(1).unwrap();
        assert!(sys_ro.2.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
        for d in DEVICES {
            assert!(m
                .iter()
                .any(|x| x.0 == format!("/k/root/dev/{d}") && x.2 == MsFlags::MS_BIND));
        }
        assert!(m
            .iter()
            .any(|x| x.0 == "/k/root/etc/resolv.conf" && x.2.contains(MsFlags::MS_RDONLY)));
        assert!(
            !calls.contains(&Call::LoopbackUp),
            "host network: loopback untouched"
        );
        // The pivot comes last, then the working directory.
        let n = calls.len();
        assert_eq!(calls[n - 4], Call::Chdir("/k/root".into()));
        assert_eq!(calls[n - 3], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(calls[n - 2], Call::Umount(".".into()));
        assert_eq!(calls[n - 1], Call::Chdir("/".into()));
        assert!(calls.contains(&Call::Hostname("builder".into())));
    }

    #[test]
    fn no_network_brings_loopback_up_and_skips_resolv_conf() {
        let rec = Recorder::default();
        let created = setup_root(&rec, &spec(Network::None)).unwrap();
        assert!(created.contains(&"proc".to_string()));
        let calls = rec.calls();
        assert!(calls.contains(&Call::LoopbackUp));
        assert!(!mounts(&calls).iter().any(|x| x.0.ends_with("resolv.conf")));
        // The missing working directory is made inside the new root.
        assert_eq!(calls.last(), Some(&Call::Mkdir("/tmp".into())));
    }

    #[test]
    fn refuses_what_overlayfs_cannot_take() {
        let rec = Recorder::default();
        let mut s = spec(Network::Host);
        s.lower.push("/k/with:colon".into());
        assert!(setup_root(&rec, &s).unwrap_err().contains("contains `:`"));
        let mut s = spec(Network::Host);
        s.lower = (0..100)
            .map(|i| PathBuf::from(format!("/very/long/path/to/layer/{i:064}")))
            .collect();
        assert!(setup_root(&rec, &s)
            .unwrap_err()
            .contains("too many for one overlay mount"));
    }

    #[test]
    fn a_resolv_conf_linked_into_run_gets_the_hosts_file_in_the_sandboxs_run() {
        let rec = Recorder {
            existing: vec![
                ("/k/root/proc".into(), PathState::Dir),
                ("/k/root/sys".into(), PathState::Dir),
                ("/k/root/dev".into(), PathState::Dir),
                ("/k/root/run".into(), PathState::Dir),
                ("/k/root/etc".into(), PathState::Dir),
                ("/k/root/etc/resolv.conf".into(), PathState::Symlink),
            ],
            // Debian's systemd-resolved links it relative to /etc.
            links: vec![(
                "/k/root/etc/resolv.conf".into(),
                "../run/systemd/resolve/stub-resolv.conf".into(),
            )],
            ..Recorder::default()
        };
        setup_root(&rec, &spec(Network::Host)).unwrap();
        let calls = rec.calls();
        let target = PathBuf::from("/k/root/run/systemd/resolve/stub-resolv.conf");
        assert!(calls.contains(&Call::Touch(target.clone())));
        let m = mounts(&calls);
        assert!(m
            .iter()
            .any(|x| x.0 == target.display().to_string() && x.2.contains(MsFlags::MS_RDONLY)));
        assert!(!m.iter().any(|x| x.0 == "/k/root/etc/resolv.conf"));
    }

    #[test]
    fn link_targets() {
        assert_eq!(
            link_target("/etc", Path::new("../run/a/b")),
            PathBuf::from("/run/a/b")
        );
        assert_eq!(
            link_target("/etc", Path::new("/run/x")),
            PathBuf::from("/run/x")
        );
        assert_eq!(
            link_target("/etc", Path::new("../../../x")),
            PathBuf::from("/x")
        );
        assert_eq!(
            link_target("/etc", Path::new("./y")),
            PathBuf::from("/etc/y")
        );
    }

    #[test]
    fn a_file_where_a_mount_point_belongs_is_an_error() {
        let rec = Recorder {
            existing: vec![("/k/root/proc".into(), PathState::File)],
            ..Recorder::default()
        };
        let e = setup_root(&rec, &spec(Network::Host)).unwrap_err();
        assert!(e.contains("/proc in the image is not a folder"), "{e}");
    }
}
