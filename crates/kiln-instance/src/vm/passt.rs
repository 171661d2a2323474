//! A VM's private network: `passt` (Debian's `passt` package, the VM flavour of pasta) behind
//! QEMU's `stream` network device, running as a sandbox id range's root, so that the same
//! nftables rule as the sandbox's keeps the host's own addresses (its loopback included) out
//! of the guest's reach. QEMU's own user-mode network (`network: host`) reaches the host's
//! loopback at 10.0.2.2: it is the explicit opt-in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sandbox::{net, userns};
use crate::InstanceError;

/// A running passt and the id range it runs as (its processes die with the range).
pub struct Passt {
    slot: Option<userns::Slot>,
    /// The socket QEMU connects to.
    pub socket: PathBuf,
}

impl Passt {
    /// Starts passt with its socket in `dir` (created, owned by the range's root).
    pub fn start(dir: &Path) -> Result<Passt, InstanceError> {
        net::install_firewall().map_err(InstanceError::Op)?;
        let slot = userns::take_slot(userns::SlotKind::Private).map_err(|e| {
            InstanceError::io(format!("taking an id range in {}", userns::SLOT_DIR), e)
        })?;
        let id = slot.ids.host_base;
        std::fs::create_dir_all(dir)
            .map_err(|e| InstanceError::io(format!("creating {}", dir.display()), e))?;
        std::os::unix::fs::chown(dir, Some(id), Some(id))
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| InstanceError::io(format!("preparing {}", dir.display()), e))?;
        let socket = dir.join("net.sock");
        let _ = std::fs::remove_file(&socket);
        let out = Command::new("passt")
            .args(args(id, &socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                InstanceError::Unsupported(format!(
                    "running passt: {e}; a VM's private network needs passt (Debian's passt package; scripts/setup installs it), or set `network: none` (or `network: host`)"
                ))
            })?;
        // passt forks into the background once its socket is bound.
        if !out.status.success() || !socket.exists() {
            return Err(InstanceError::Op(format!(
                "passt could not give the VM its network: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| !l.contains("syslog"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Ok(Passt {
            slot: Some(slot),
            socket,
        })
    }

    /// QEMU's arguments for a virtio network card on this passt.
    pub fn qemu_args(&self) -> [String; 4] {
        [
            "-netdev".into(),
            format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                self.socket.display()
            ),
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]
    }

    /// Lets passt run on after this process (a kept VM keeps its network until the id range is
    /// taken again).
    pub fn leave_running(mut self) {
        if let Some(slot) = self.slot.take() {
            slot.leave_running();
        }
    }
}

/// passt's arguments: no port forwarded either way, the gateway the real one.
pub fn args(id: u32, socket: &Path) -> Vec<String> {
    [
        "--quiet",
        "--no-map-gw",
        "-t",
        "none",
        "-u",
        "none",
        "--runas",
        &format!("{id}:{id}"),
        "--socket",
        &socket.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_forwards_nothing_and_keeps_the_gateway() {
        let a = args(7, Path::new("/s/net.sock")).join(" ");
        assert!(a.contains("--no-map-gw -t none -u none --runas 7:7 --socket /s/net.sock"));
    }
}
