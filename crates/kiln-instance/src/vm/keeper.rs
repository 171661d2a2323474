//! The keeper: a small process between kiln and QEMU, so that QEMU dies when kiln does (the
//! keeper carries `PR_SET_PDEATHSIG` towards kiln and QEMU carries it towards the keeper), and
//! survives it when kiln keeps a failed instance for debugging (SIGUSR1 clears the keeper's
//! death signal, and the keeper says so on its standard output before kiln may exit).

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execvp, fork, ForkResult};
use std::ffi::CString;

/// First argument that turns kiln's binary into a VM keeper.
pub const KEEPER_ARG: &str = "__kiln-vm-keeper";

/// The byte the keeper writes once it no longer follows kiln.
const DETACHED: u8 = b'd';

extern "C" fn detach(_: nix::libc::c_int) {
    // SAFETY: prctl and write are plain system calls, safe in a signal handler. The write
    // comes after the prctl: kiln may exit as soon as it reads the byte.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
        nix::libc::write(1, [DETACHED].as_ptr().cast(), 1);
    }
}

/// A keeper kiln started, with QEMU (or whatever `argv` runs) under it.
pub struct Keeper {
    child: tokio::process::Child,
    detached: Option<tokio::process::ChildStdout>,
}

impl Keeper {
    /// Starts `helper` (kiln's binary and [`KEEPER_ARG`]) as the keeper of `argv`. It dies with
    /// the calling thread (and is killed when the handle is dropped) until [`Keeper::detach`].
    pub fn spawn(
        helper: &(PathBuf, Vec<String>),
        argv: &[String],
        stderr: std::fs::File,
    ) -> std::io::Result<Keeper> {
        let argv = serde_json::to_string(argv).map_err(std::io::Error::other)?;
        let mut cmd = tokio::process::Command::new(&helper.0);
        cmd.args(&helper.1)
            .arg(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(stderr))
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and only concerns the child.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn()?;
        let detached = child.stdout.take();
        Ok(Keeper { child, detached })
    }

    /// The keeper's process id (it leads QEMU's process group), while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The keeper's exit status if it has ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the keeper (and so QEMU) to end.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Kills the keeper and QEMU (its process group) and waits until both are gone.
    pub async fn kill(&mut self) {
        use nix::sys::signal::killpg;
        let Some(pid) = self.child.id() else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.kill().await;
        for _ in 0..100 {
            if killpg(group, None).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lets the keeper (and QEMU) outlive kiln. Returns its process id once the keeper has
    /// confirmed: a signal alone is not enough, kiln could exit before the keeper handles it and
    /// take the VM with it. When the keeper does not confirm `within`, it is killed with QEMU
    /// (a VM that may die with kiln at any moment is not worth keeping) and this fails.
    pub async fn detach(mut self, within: Duration) -> std::io::Result<u32> {
        match self.confirm_detach(within).await {
            Ok(pid) => {
                // Forget the handle without killing the keeper.
                std::mem::forget(self.child);
                Ok(pid)
            }
            Err(e) => {
                self.kill().await;
                Err(e)
            }
        }
    }

    async fn confirm_detach(&mut self, within: Duration) -> std::io::Result<u32> {
        use tokio::io::AsyncReadExt;
        let (Some(pid), Some(mut confirm)) = (self.child.id(), self.detached.take()) else {
            return Err(std::io::Error::other("the keeper has already ended"));
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGUSR1)
            .map_err(std::io::Error::from)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, confirm.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == DETACHED => Ok(pid),
            Ok(Ok(_)) => Err(std::io::Error::other(
                "the keeper ended instead of detaching",
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other(format!(
                "the keeper did not confirm within {} s",
                within.as_secs()
            ))),
        }
    }
}

/// Runs the keeper: `argv` (JSON list) is QEMU's command line. Never returns.
pub fn keeper_main(argv: &str) -> ! {
    let args: Vec<String> = match serde_json::from_str(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln vm keeper: bad command line: {e}");
            std::process::exit(2)
        }
    };
    let Some(program) = args.first() else {
        eprintln!("kiln vm keeper: empty command line");
        std::process::exit(2)
    };
    let c_args: Vec<CString> = args
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let Ok(c_program) = CString::new(program.as_bytes()) else {
        std::process::exit(2)
    };
    let action = SigAction::new(
        SigHandler::Handler(detach),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only makes two async-signal-safe system calls.
    unsafe {
        let _ = sigaction(Signal::SIGUSR1, &action);
    }
    // A new session: a terminal's Ctrl-C reaches kiln, which stops the VM its own way.
    let _ = nix::unistd::setsid();
    // Standard output is kiln's pipe for the detach confirmation: QEMU does not get it.
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    // SAFETY: single-threaded here (a fresh exec, nothing started).
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("kiln vm keeper: fork: {e}");
            std::process::exit(1)
        }
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if let Ok(fd) = devnull {
                let _ = nix::unistd::dup2(fd, 1);
            }
            let e = execvp(&c_program, &c_args);
            eprintln!("kiln vm keeper: cannot start {program}: {e:?}");
            std::process::exit(127)
        }
        // Rust ignores SIGPIPE: a confirmation kiln no longer reads does not kill the keeper.
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                Err(_) => std::process::exit(1),
            }
        },
    }
}
