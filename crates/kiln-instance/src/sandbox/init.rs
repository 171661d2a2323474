//! Inside the helper process: namespaces, the root filesystem, PID 1, and the agent.
//!
//! kiln starts the helper by re-executing its own binary (so the fork happens in a fresh,
//! single-threaded process, never in the async runtime's threads). The helper:
//! 1. joins the sandbox's cgroups (resource limits),
//! 2. starts the namespace holder ([`userns::spawn_holder`]): the sandbox's user namespace,
//!    and its network namespace unless it uses the host's; for a private network, starts
//!    pasta on it ([`net`]) and joins that network namespace,
//! 3. unshares the mount, UTS, IPC, PID and (confined) cgroup namespaces,
//! 4. forks PID 1 of the new PID namespace, which builds the root filesystem
//!    ([`setup_root`]), enters the user namespace, drops capabilities and installs the
//!    seccomp filter ([`confine`]), forks the agent, and reaps orphans until the agent exits,
//!    at which point the kernel kills everything left in the namespace,
//! 5. waits for PID 1, ends the holder (and with it pasta) and exits with PID 1's status.
//!
//! Every mount lives in the sandbox's private mount namespace, so none can outlive it. The agent
//! exits when its stdin closes (kiln stopped or died); PID 1 and the helper also carry
//! `PR_SET_PDEATHSIG`, so the chain unwinds whichever link breaks.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::root::setup_root;
use super::syscalls::Linux;
use super::{confine, net, userns, Confinement, Network, SandboxSpec};
use crate::protocol::{Response, ResponseBody};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

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

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// A line kiln logs as a warning (see [`super::Sandbox`]'s reader of the helper's stderr).
pub const WARNING_PREFIX: &str = "kiln-sandbox warning: ";

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
    let (holder, userns) = match namespaces(&spec) {
        Ok(h) => h,
        Err(e) => fatal(e),
    };
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == Network::None && holder.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if spec.confinement == Confinement::Confined {
        // The cgroup namespace's root is the sandbox's own cgroup (joined above).
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    if let Err(e) = nix::sched::unshare(flags) {
        fatal(format!(
            "creating namespaces: {e} (kiln's sandbox needs root, or CAP_SYS_ADMIN)"
        ));
    }
    // SAFETY: this process is single-threaded (a fresh exec, no runtime started yet).
    match unsafe { fork() } {
        Err(e) => fatal(format!("fork: {e}")),
        Ok(ForkResult::Child) => pid1(&spec, userns),
        Ok(ForkResult::Parent { child }) => {
            drop(userns);
            let code = wait_for(child);
            // Ending the holder ends the namespaces it holds, and pasta with them.
            drop(holder);
            std::process::exit(code)
        }
    }
}

/// Starts the namespace holder when the sandbox needs one, gives a private network to it, and
/// joins its network namespace. Returns the holder and the user namespace a confined
/// sandbox's processes enter.
fn namespaces(spec: &SandboxSpec) -> Result<(Option<userns::Holder>, Option<OwnedFd>), String> {
    let Some(ids) = spec.ids else {
        if spec.network == Network::Private {
            return Err("a private network needs the sandbox's id range".into());
        }
        return Ok((None, None));
    };
    let own_net = spec.network != Network::Host;
    let holder = userns::spawn_holder(ids, own_net)?;
    if spec.network == Network::Private {
        net::start_pasta(holder.pid, ids)?;
    }
    if own_net {
        let fd = holder
            .open_ns("net")
            .map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("joining the sandbox's network namespace: {e}"))?;
    }
    let user = if spec.confinement == Confinement::Confined {
        Some(
            holder
                .open_ns("user")
                .map_err(|e| format!("opening the sandbox's user namespace: {e}"))?,
        )
    } else {
        None
    };
    Ok((Some(holder), user))
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

fn pid1(spec: &SandboxSpec, userns: Option<OwnedFd>) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let rooted = match setup_root(
        &Linux::default(),
        spec,
        userns.as_ref().map(|f| f.as_raw_fd()),
    ) {
        Ok(r) => r,
        Err(e) => fatal(e),
    };
    if spec.confinement == Confinement::Confined {
        if let Some(why) = &rooted.idmap_refused {
            eprintln!(
                "{WARNING_PREFIX}no user namespace for this sandbox ({why}): root inside is root outside, with Docker's capability set"
            );
        }
        if let Err(e) = confine_self(userns.filter(|_| rooted.idmapped)) {
            fatal(e);
        }
    }
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Err(e) => fatal(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            std::process::exit(agent(spec, rooted.created))
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

/// PID 1's last steps before anything of the image runs: into the user namespace (when the
/// layers could be id-mapped), down to Docker's capability set, `no_new_privs` and seccomp.
/// Everything PID 1 starts inherits all of it.
fn confine_self(userns: Option<OwnedFd>) -> Result<(), String> {
    // Built before the filter forbids nothing it needs, but after every mount.
    let filters = confine::filters().map_err(|e| e.to_string())?;
    if let Some(ns) = userns {
        userns::enter(ns.as_raw_fd())
            .map_err(|e| format!("entering the sandbox's user namespace: {e}"))?;
        drop(ns);
        // Changing ids cleared the parent-death signal.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    }
    confine::drop_capabilities().map_err(|e| format!("dropping capabilities: {e}"))?;
    confine::apply_filters(&filters).map_err(|e| e.to_string())
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
