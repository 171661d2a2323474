//! The sandbox's private network: its own network namespace, with outbound connections made
//! for it by `pasta` (Debian's `passt` package, a user-space TCP/IP translator) running as the
//! sandbox's unprivileged host id, and the host's own addresses out of its reach.
//!
//! pasta copies the host's address and routes into the namespace and opens ordinary sockets on
//! the host for what the sandbox sends. Two things keep the host itself unreachable:
//! - pasta runs with `--no-map-gw` (the gateway address is the real gateway, not the host) and
//!   forwards no port in either direction (`-t none -u none -T none -U none`);
//! - an nftables rule refuses every connection that sandbox ids (pasta included) make to an
//!   address of the host: such packets leave through the loopback interface, whatever the
//!   address (127.0.0.1, the host's LAN address, a bridge's). DNS to a resolver of the host's
//!   resolv.conf on its loopback (systemd-resolved's 127.0.0.53) stays allowed, port 53 only.

use std::io::Write;
use std::process::{Command, Stdio};

use super::userns::IdRange;

/// The nftables table kiln owns (replaced whole each time, so it never piles up).
pub const TABLE: &str = "kiln-sandbox";

/// The rules: sandbox ids may not reach the host's own addresses, but for DNS to the host's
/// own resolvers (`resolvers`: the nameservers of its resolv.conf that are local, such as
/// systemd-resolved's 127.0.0.53). TCP is refused with a reset, so a connection fails at once
/// instead of waiting for its timeout.
pub fn ruleset(resolvers: &[std::net::IpAddr]) -> String {
    let (lo, hi) = IdRange::all_slots();
    let who = format!("meta skuid {lo}-{hi} oifname \"lo\"");
    let mut dns = String::new();
    for r in resolvers {
        let family = if r.is_ipv4() { "ip" } else { "ip6" };
        for proto in ["udp", "tcp"] {
            dns.push_str(&format!(
                "\t\t{who} {family} daddr {r} {proto} dport 53 accept\n"
            ));
        }
    }
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         {dns}\
         \t\t{who} meta l4proto tcp counter reject with tcp reset\n\
         \t\t{who} counter reject\n\
         \t}}\n\
         }}\n"
    )
}

/// The host's resolvers that listen on one of its own addresses (loopback ones: a resolver
/// elsewhere is reached like any other address).
pub fn local_resolvers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| a.is_loopback())
        .collect()
}

/// Loads [`ruleset`] once per process (atomically: `nft -f` applies a file in one
/// transaction); later sandboxes of the same kiln find it in place.
pub fn install_firewall() -> Result<(), String> {
    static LOADED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut loaded = LOADED
        .lock()
        .map_err(|_| "the firewall's lock".to_string())?;
    if !*loaded {
        load_firewall()?;
        *loaded = true;
    }
    Ok(())
}

fn load_firewall() -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "running nft: {e}; the sandbox's private network needs nftables to keep the host's own addresses out of reach: install Debian's nftables package (scripts/setup does), or set `network: none` (or `network: host`) in the infrastructure settings"
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(
                ruleset(&local_resolvers(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ))
                .as_bytes(),
            )
            .map_err(|e| format!("writing nft's rules: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused kiln's sandbox rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// pasta's arguments to attach to the namespaces of the process `pid`, running as `ids`' root.
pub fn pasta_args(pid: i32, ids: IdRange) -> Vec<String> {
    let id = format!("{}:{}", ids.host_base, ids.host_base);
    [
        "--quiet",
        "--config-net",
        "--no-map-gw",
        "-t",
        "none",
        "-u",
        "none",
        "-T",
        "none",
        "-U",
        "none",
        "--runas",
        &id,
        &pid.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts pasta for the namespaces held by process `pid` and returns once the namespace's
/// interface is configured (pasta then runs on in the background, and ends when the process
/// holding the namespace does). pasta opens `/dev/net/tun` after dropping to the sandbox's id, so it runs in a
/// private mount namespace of its own where that device is open to it, and only there.
pub fn start_pasta(pid: i32, ids: IdRange) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("pasta");
    cmd.args(pasta_args(pid, ids))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only system calls are made (no allocation in the
    // closure's calls but the C strings built beforehand).
    let tun_dir = c"/dev/net";
    let tun = c"/dev/net/tun";
    let tmpfs = c"tmpfs";
    let opts = c"size=4k,mode=755";
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                tun_dir.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ))?;
            check(libc::mknod(
                tun.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(10, 200),
            ))?;
            check(libc::chmod(tun.as_ptr(), 0o666))
        });
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "running pasta: {e}; the sandbox's private network needs pasta (Debian's passt package; scripts/setup installs it), or set `network: none` (or `network: host`) in the infrastructure settings"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "pasta could not give the sandbox its network: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("syslog"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_every_slot_and_keep_only_the_local_resolvers() {
        let resolvers = local_resolvers(
            "# systemd-resolved\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n",
        );
        assert_eq!(resolvers.len(), 2, "{resolvers:?}");
        let r = ruleset(&resolvers);
        let (lo, hi) = IdRange::all_slots();
        assert!(r.contains(&format!(
            "meta skuid {lo}-{hi} oifname \"lo\" counter reject\n"
        )));
        assert!(r.contains("ip daddr 127.0.0.53 udp dport 53 accept"));
        assert!(r.contains("ip6 daddr ::1 tcp dport 53 accept"));
        assert!(!r.contains("10.255.255.53"));
        assert!(r.find("dport 53 accept") < r.find("reject"));
        assert!(r.contains("reject with tcp reset"));
        assert!(!ruleset(&[]).contains("dport 53"));
    }

    #[test]
    fn pasta_forwards_no_port_and_keeps_the_gateway() {
        let ids = IdRange {
            host_base: 0x7001_0000,
            count: 65536,
        };
        let a = pasta_args(42, ids).join(" ");
        assert!(a.contains("--no-map-gw"));
        for opt in ["-t none", "-u none", "-T none", "-U none"] {
            assert!(a.contains(opt), "{a}");
        }
        assert!(a.ends_with(" 42"));
        assert!(a.contains("--runas 1879113728:1879113728"));
    }
}
