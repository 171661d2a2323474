//! The keeper: a small process between kiln and QEMU, so that QEMU dies when kiln does (the
//! keeper carries `PR_SET_PDEATHSIG` towards kiln and QEMU carries it towards the keeper), and
//! survives it when kiln keeps a failed instance for debugging (SIGUSR1 clears the keeper's
//! death signal).

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execvp, fork, ForkResult};
use std::ffi::CString;

/// First argument that turns kiln's binary into a VM keeper.
pub const KEEPER_ARG: &str = "__kiln-vm-keeper";

extern "C" fn detach(_: nix::libc::c_int) {
    // SAFETY: prctl(PR_SET_PDEATHSIG, 0) is a plain system call, safe in a signal handler.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
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
    // SAFETY: the handler only makes one async-signal-safe system call.
    unsafe {
        let _ = sigaction(Signal::SIGUSR1, &action);
    }
    // A new session: a terminal's Ctrl-C reaches kiln, which stops the VM its own way.
    let _ = nix::unistd::setsid();
    // SAFETY: single-threaded here (a fresh exec, nothing started).
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("kiln vm keeper: fork: {e}");
            std::process::exit(1)
        }
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let e = execvp(&c_program, &c_args);
            eprintln!("kiln vm keeper: cannot start {program}: {e:?}");
            std::process::exit(127)
        }
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
