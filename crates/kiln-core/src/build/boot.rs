//! Where a test VM's boot went. The host measured the whole boot (QEMU's start to the guest
//! agent's first answer) and where the guest kernel's clock started on the host's clock; the
//! guest tells the rest about itself: its kernel's console (when the kernel handed over to the
//! initramfs) and systemd's timestamps (when the real root's init started, when the guest
//! agent's service did, when startup finished). Put together they give the record's
//! [`BootBreakdown`]; what a guest does not tell is left out, never guessed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kiln_instance::{Boot, ExecRequest, Launched};

use crate::record::BootBreakdown;

/// The file in the test logs that keeps what the guest said about its boot.
pub(crate) const ANALYSIS_LOG: &str = "boot-analysis.log";

/// Asked of the guest after the tests, in one program: systemd's timestamps of the boot
/// (microseconds of the guest's clock) and `systemd-analyze`'s summary, which cost a fraction of
/// a second under TCG. The boot is not waited for: if it has not finished, that is the answer.
/// A guest without systemd says so.
const ASK: &str = "\
if ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
  echo 'not booted with systemd: no systemd-analyze'; exit 0
fi
systemctl show -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic
systemctl show -p ActiveEnterTimestampMonotonic qemu-guest-agent.service
command -v systemd-analyze >/dev/null 2>&1 || exit 0
echo; echo '$ systemd-analyze'; systemd-analyze
";

/// Asked too of a boot over its limit, whose slowness someone will look into: the slowest
/// units and the chain that decided the boot's end, once it has finished (20 s at most). Not
/// asked of every boot: each takes about 2.5 s under TCG (systemd answers for every unit).
const ASK_SLOW: &str = "
command -v timeout >/dev/null 2>&1 && timeout 20 systemctl is-system-running --wait >/dev/null 2>&1
echo; echo '$ systemd-analyze blame | head -n 20'; systemd-analyze blame | head -n 20
echo; echo '$ systemd-analyze critical-chain'; systemd-analyze critical-chain
";

/// Runs `script` in the guest; what it printed, or nothing (with a warning) when it could not run.
async fn said(vm: &dyn Launched, script: &str, timeout: Duration) -> String {
    let req = ExecRequest {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout: Some(timeout),
        ..ExecRequest::default()
    };
    match vm.exec(&req, &mut kiln_instance::Discard).await {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => {
            tracing::warn!("asking the test VM about its boot: {e}");
            String::new()
        }
    }
}

/// What the guest's systemd says, in milliseconds of the guest's clock (from its kernel's start).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SystemdTimes {
    /// A systemd initramfs started (dracut's; initramfs-tools gives none).
    pub initrd: Option<u64>,
    /// systemd started on the real root.
    pub userspace: Option<u64>,
    /// `qemu-guest-agent.service` became active.
    pub agent: Option<u64>,
    /// Startup finished: every unit of the boot started.
    pub finished: Option<u64>,
}

/// Reads `systemctl show` lines (`NAME=MICROSECONDS`); a zero means "did not happen".
pub(crate) fn systemd_times(text: &str) -> SystemdTimes {
    let values: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter_map(|(k, v)| v.parse::<u64>().ok().map(|v| (k, v)))
        .collect();
    let ms = |key: &str| {
        values
            .get(key)
            .copied()
            .filter(|v| *v > 0)
            .map(|v| v / 1000)
    };
    SystemdTimes {
        initrd: ms("InitRDTimestampMonotonic"),
        userspace: ms("UserspaceTimestampMonotonic"),
        agent: ms("ActiveEnterTimestampMonotonic"),
        finished: ms("FinishTimestampMonotonic"),
    }
}

/// The kernel's hand-over to its first program, from the console: `[    4.631009] Run /init as
/// init process`. Returns the guest time in milliseconds and whether it is an initramfs's
/// `/init` (rather than the real root's init, booted without one).
pub(crate) fn first_init(console: &str) -> Option<(u64, bool)> {
    console.lines().find_map(|line| {
        let (stamp, rest) = line.split_once(']')?;
        let program = rest
            .trim()
            .strip_prefix("Run ")?
            .strip_suffix(" as init process")?;
        let secs: f64 = stamp.rsplit('[').next()?.trim().parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Some(((secs * 1000.0).round() as u64, program == "/init"))
    })
}

/// The breakdown of `boot` from what the guest said: its console's hand-over to init and its
/// systemd's timestamps. Every phase that can be placed is; the phases add up to the boot.
pub(crate) fn breakdown(boot: &Boot, init: Option<(u64, bool)>, s: SystemdTimes) -> BootBreakdown {
    let ms = |d: Duration| d.as_millis() as u64;
    let firmware = boot.kernel_started.map(ms);
    // The guest's clock when its agent first answered.
    let answered = firmware.and_then(|f| ms(boot.duration).checked_sub(f));
    let initramfs = s.initrd.is_some() || init.is_some_and(|(_, initramfs)| initramfs);
    let kernel_end = s
        .initrd
        .or(init.map(|(at, _)| at))
        .or(s.userspace.filter(|_| !initramfs));
    let userspace_start = s.userspace.or(init.filter(|(_, i)| !i).map(|(at, _)| at));
    let initrd = if initramfs {
        userspace_start
            .zip(kernel_end)
            .and_then(|(u, k)| u.checked_sub(k))
    } else {
        None
    };
    // Without the agent's own start, "init to the agent" runs to its first answer.
    let userspace_end = s.agent.or(answered);
    let agent = s.agent.and_then(|a| answered?.checked_sub(a));
    BootBreakdown {
        firmware_ms: firmware,
        kernel_ms: kernel_end,
        initrd_ms: initrd,
        userspace_ms: userspace_start
            .zip(userspace_end)
            .and_then(|(u, e)| e.checked_sub(u)),
        agent_ms: agent,
        finished_ms: s.finished,
        kiln_agent_ms: boot.kiln_agent.map(ms),
    }
}

/// Asks the test VM about its boot (after the tests; more when the boot was `too_slow`), keeps
/// what it said in `log_dir`, and puts the breakdown together. Never fails the tests: a guest
/// that cannot answer gives the host's figures alone.
pub(crate) async fn analyze(
    vm: &dyn Launched,
    boot: &Boot,
    too_slow: bool,
    log_dir: &Path,
) -> BootBreakdown {
    let script = if too_slow {
        format!("{ASK}{ASK_SLOW}")
    } else {
        ASK.to_string()
    };
    let answer = said(vm, &script, Duration::from_secs(90)).await;
    let console = vm
        .console_log()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let b = breakdown(boot, first_init(&console), systemd_times(&answer));
    let text = format!(
        "boot to the guest agent: {} ms ({}); breakdown (ms):\n{}\n\nthe guest's account:\n{answer}",
        boot.duration.as_millis(),
        boot.accel.as_str(),
        serde_json::to_string_pretty(&b).unwrap_or_default(),
    );
    let _ = std::fs::create_dir_all(log_dir);
    if let Err(e) = std::fs::write(log_dir.join(ANALYSIS_LOG), text) {
        tracing::warn!("writing {ANALYSIS_LOG}: {e}");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_instance::vm::Accel;

    const CONSOLE: &str = "\u{1b}[H  Booting `kiln image'\r\n\
        [    0.000000] Linux version 6.1.0-57-cloud-amd64\r\n\
        [    4.631009] Run /init as init process\r\n\
        Loading, please wait...\r\n\
        [   12.640147] systemd[1]: Inserted module 'autofs4'\r\n";

    const SHOW: &str = "InitRDTimestampMonotonic=0\nUserspaceTimestampMonotonic=8498157\n\
        FinishTimestampMonotonic=32838589\nActiveEnterTimestampMonotonic=25163246\n\n\
        $ systemd-analyze\nStartup finished in 8.498s (kernel) + 24.340s (userspace) = 32.838s\n";

    fn boot(total_ms: u64, kernel_ms: Option<u64>) -> Boot {
        Boot {
            duration: Duration::from_millis(total_ms),
            accel: Accel::Tcg,
            kernel_started: kernel_ms.map(Duration::from_millis),
            kiln_agent: Some(Duration::from_millis(640)),
        }
    }

    #[test]
    fn the_console_says_when_the_kernel_ran_init_and_whether_it_was_an_initramfs() {
        assert_eq!(first_init(CONSOLE), Some((4631, true)));
        assert_eq!(
            first_init("[    1.5] Run /sbin/init as init process\n"),
            Some((1500, false))
        );
        assert_eq!(first_init("Run /init as init process\nno stamp"), None);
        assert_eq!(first_init(""), None);
    }

    #[test]
    fn systemd_timestamps_are_read_and_zero_means_it_did_not_happen() {
        let s = systemd_times(SHOW);
        assert_eq!(
            s,
            SystemdTimes {
                initrd: None,
                userspace: Some(8498),
                agent: Some(25163),
                finished: Some(32838),
            }
        );
        assert_eq!(
            systemd_times("not booted with systemd"),
            SystemdTimes::default()
        );
    }

    #[test]
    fn a_debian_boot_breaks_down_into_phases_that_add_up_to_the_boot() {
        // QEMU start to the agent's answer 32.0 s; the guest's clock started 5.72 s in.
        let b = breakdown(
            &boot(32_000, Some(5_720)),
            first_init(CONSOLE),
            systemd_times(SHOW),
        );
        assert_eq!(b.firmware_ms, Some(5_720));
        assert_eq!(b.kernel_ms, Some(4_631));
        assert_eq!(b.initrd_ms, Some(8_498 - 4_631));
        assert_eq!(b.userspace_ms, Some(25_163 - 8_498));
        assert_eq!(b.agent_ms, Some(32_000 - 5_720 - 25_163));
        assert_eq!(b.finished_ms, Some(32_838));
        assert_eq!(b.kiln_agent_ms, Some(640));
        let sum: u64 = b.phases().iter().map(|(_, ms)| ms).sum();
        assert_eq!(sum, 32_000);
    }

    #[test]
    fn a_systemd_initramfs_and_a_boot_without_one_are_placed_too() {
        let dracut = SystemdTimes {
            initrd: Some(3_000),
            userspace: Some(7_000),
            agent: Some(9_000),
            finished: None,
        };
        let b = breakdown(&boot(12_000, Some(2_000)), None, dracut);
        assert_eq!(
            (b.kernel_ms, b.initrd_ms, b.userspace_ms, b.agent_ms),
            (Some(3_000), Some(4_000), Some(2_000), Some(1_000))
        );
        // No initramfs: the kernel ran systemd itself.
        let direct = SystemdTimes {
            userspace: Some(2_500),
            agent: Some(6_000),
            ..SystemdTimes::default()
        };
        let b = breakdown(&boot(9_000, Some(1_000)), Some((2_500, false)), direct);
        assert_eq!(
            (b.kernel_ms, b.initrd_ms, b.userspace_ms, b.agent_ms),
            (Some(2_500), None, Some(3_500), Some(2_000))
        );
    }

    #[test]
    fn what_the_guest_does_not_say_is_left_out() {
        // No systemd: from the console's init to the agent's answer is one phase.
        let b = breakdown(
            &boot(10_000, Some(2_000)),
            Some((1_000, false)),
            SystemdTimes::default(),
        );
        assert_eq!(
            (b.kernel_ms, b.userspace_ms, b.agent_ms),
            (Some(1_000), Some(7_000), None)
        );
        // The guest's clock could not be read: no firmware phase, and no agent phase.
        let b = breakdown(
            &boot(10_000, None),
            first_init(CONSOLE),
            systemd_times(SHOW),
        );
        assert_eq!((b.firmware_ms, b.agent_ms), (None, None));
        assert_eq!(b.userspace_ms, Some(25_163 - 8_498));
        // Nothing at all.
        let b = breakdown(&boot(10_000, None), None, SystemdTimes::default());
        assert!(b.phases().is_empty());
    }
}
