//! What a confined sandbox takes away from the programs it runs, once its own set-up is done:
//! capabilities beyond Docker's default set, new privileges through set-user-ID files, the
//! system calls Docker's default seccomp profile refuses, and the `/proc` and `/sys` files that
//! Docker masks or makes read-only.
//!
//! The lists follow moby's `oci/caps/defaults.go`, `profiles/seccomp/default.json` and
//! `oci/defaults.go` (masked and read-only paths). Docker's profile allows some of the refused
//! calls to processes holding `CAP_SYS_ADMIN` and friends; a confined sandbox holds none of
//! those capabilities, so here they are refused outright.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Docker's default capability set: what a confined sandbox keeps (by number, see
/// `capability.h`).
pub const KEPT_CAPABILITIES: [(u32, &str); 14] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// The highest capability number any kernel kiln runs on may know (CAP_CHECKPOINT_RESTORE is
/// 40 in Linux 6.x); dropping an unknown one from the bounding set fails with EINVAL, which is
/// ignored.
const LAST_CAPABILITY: u32 = 63;

/// The capability mask a confined sandbox keeps.
pub fn kept_mask() -> u64 {
    KEPT_CAPABILITIES
        .iter()
        .fold(0u64, |m, (bit, _)| m | (1u64 << bit))
}

/// Files of `/proc` and `/sys` hidden behind `/dev/null` (files) or an empty read-only tmpfs
/// (folders): kernel memory, keys, timers and hardware details a build has no use for.
pub const MASKED_PATHS: [&str; 12] = [
    "proc/asound",
    "proc/acpi",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Files of `/proc` made read-only: kernel settings (`/proc/sys`: `core_pattern`, every
/// sysctl) and triggers.
pub const READ_ONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// System calls refused with EPERM. Docker's default profile does not allow them (for a process
/// without `CAP_SYS_ADMIN`, `CAP_SYS_MODULE`, `CAP_SYS_TIME`, ...): kernel modules, mounts and
/// namespaces, kernel keyrings, BPF, performance counters, clocks, swap, reboot, io_uring,
/// file handles that bypass the mount tree, and NUMA memory policy.
fn refused() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_acct,
        libc::SYS_add_key,
        libc::SYS_bpf,
        libc::SYS_clock_adjtime,
        libc::SYS_clock_settime,
        libc::SYS_delete_module,
        libc::SYS_finit_module,
        libc::SYS_get_mempolicy,
        libc::SYS_init_module,
        libc::SYS_kcmp,
        libc::SYS_kexec_file_load,
        libc::SYS_kexec_load,
        libc::SYS_keyctl,
        libc::SYS_lookup_dcookie,
        libc::SYS_mbind,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_pages,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_perf_event_open,
        libc::SYS_pivot_root,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_reboot,
        libc::SYS_request_key,
        libc::SYS_set_mempolicy,
        libc::SYS_setns,
        libc::SYS_settimeofday,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_syslog,
        libc::SYS_umount2,
        libc::SYS_unshare,
        libc::SYS_userfaultfd,
        libc::SYS_vhangup,
        libc::SYS_fanotify_init,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    // Calls only x86_64 has (port I/O, old sysctl and filesystem queries).
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_ioperm,
        libc::SYS_iopl,
        libc::SYS__sysctl,
        libc::SYS_sysfs,
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_nfsservctl,
    ]);
    calls
}

/// The namespace flags `clone(2)` may not carry (Docker refuses them without CAP_SYS_ADMIN).
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Errors building the seccomp program.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox's seccomp filter: {0}")]
pub struct FilterError(String);

fn arch() -> Result<TargetArch, FilterError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| FilterError(format!("{e:?}")))
}

/// The two seccomp programs of a confined sandbox: the refusals (EPERM), and `clone3` answered
/// with ENOSYS, as Docker does: its flags sit in memory a filter cannot read, and C libraries
/// fall back to `clone`, whose flags the first program checks.
pub fn filters() -> Result<[BpfProgram; 2], FilterError> {
    let err = |e: seccompiler::BackendError| FilterError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        refused().into_iter().map(|n| (n, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            // clone(flags, ...): the flags are the first argument on x86_64 and aarch64.
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let refuse = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(err)?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(err)?;
    Ok([
        refuse.try_into().map_err(err)?,
        clone3.try_into().map_err(err)?,
    ])
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Drops every capability outside [`KEPT_CAPABILITIES`] from the bounding, ambient, inheritable,
/// permitted and effective sets of the calling process, so neither it nor anything it executes
/// (set-user-ID or file-capability programs included) can get them back.
pub fn drop_capabilities() -> std::io::Result<()> {
    let keep = kept_mask();
    for cap in 0..=LAST_CAPABILITY {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // Capabilities this kernel does not know end the loop.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    change_capabilities(|i, d| {
        let k = (keep >> (32 * i)) as u32;
        d.effective &= k;
        d.permitted &= k;
        d.inheritable = 0;
    })
}

/// Reads the calling thread's capability sets, lets `change` edit each 32-bit half, and sets
/// them.
fn change_capabilities(change: impl Fn(usize, &mut CapData)) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and two data structs are what version 3 of capget expects.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        change(i, d);
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes every permitted capability effective again.
pub fn raise_permitted() -> std::io::Result<()> {
    change_capabilities(|_, d| d.effective = d.permitted)
}

/// Installs the seccomp programs (which sets `no_new_privs` first: a set-user-ID program then
/// runs with the privileges of its caller and no more, and no filter can be lifted).
pub fn apply_filters(programs: &[BpfProgram]) -> Result<(), FilterError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| FilterError(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_kept_set_is_dockers() {
        // CapEff of `docker run --rm debian grep CapEff /proc/self/status`.
        assert_eq!(kept_mask(), 0x00000000a80425fb);
    }

    #[test]
    fn the_filters_compile() {
        let [refuse, clone3] = filters().unwrap();
        assert!(refuse.len() > refused().len());
        assert!(!clone3.is_empty());
    }
}
