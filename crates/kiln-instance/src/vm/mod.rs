//! The VM instance: QEMU, KVM when it really works and TCG otherwise, booting a disk image
//! through a copy-on-write overlay (the image itself is never written).
//!
//! Lifecycle goes through QMP; the QEMU guest agent (QGA) is used only to bring kiln's own
//! agent in: once the guest agent answers, `kiln-agent` is written into the guest's `/run` and
//! started on a second virtio-serial port, and from then on the VM speaks the sandbox's
//! protocol (streamed output, file operations, file transfer). The serial console goes to a
//! log file whose last lines are quoted when a boot fails.

mod boot;
pub mod guest;
pub mod keeper;
pub mod passt;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::client::AgentClient;
use crate::fileops::{FileOp, FileOpOutput};
use crate::sandbox::Network;
use crate::{ExecOutcome, ExecRequest, Instance, InstanceError, InstanceKind, OutputSink};
use boot::{BootTiming, Silent};
use keeper::Keeper;
use qmp::{Qga, Qmp};

/// Name of kiln's agent port in the guest (`/dev/virtio-ports/NAME`).
pub const AGENT_PORT: &str = "dev.kiln.agent.0";

/// Where the agent binary is put in the guest (a tmpfs: gone at reboot, never in an image).
pub const GUEST_AGENT_PATH: &str = "/run/kiln/kiln-agent";

/// Lines of the serial console kept for error messages.
const CONSOLE_TAIL: usize = 40;

/// How long KVM may stay silent before kiln takes it for broken and uses TCG. Under KVM the
/// firmware and GRUB write to the serial console within about a second.
const KVM_GRACE: Duration = Duration::from_secs(6);

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if it works on this host, TCG otherwise.
    #[default]
    Auto,
    /// KVM only.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// The stable name (`auto`, `kvm`, `tcg`), as recipes and records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What a VM is started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    /// Short id.
    pub id: String,
    /// The disk image to boot (qcow2 or raw); only read.
    pub disk: PathBuf,
    /// Folder for the overlay and the console log (the caller owns it).
    pub dir: PathBuf,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Network: `Private` (passt: outbound only, the host itself out of reach), `Host` (QEMU's
    /// user-mode NAT, through which the host's loopback is 10.0.2.2) or none.
    pub network: Network,
    /// How long a boot may take to reach the guest agent.
    pub boot_timeout: Duration,
    /// `kiln-agent` on the host, copied into the guest at every boot.
    pub agent: PathBuf,
    /// Working directory of programs in the guest.
    pub working_dir: String,
    /// Environment of programs in the guest.
    pub env: Vec<(String, String)>,
    /// Accelerator.
    pub accel: Accel,
    /// File remembering whether KVM works on this host (so only the first VM pays the probe).
    pub kvm_verdict: Option<PathBuf>,
}

/// A running QEMU.
struct Running {
    keeper: Keeper,
    qmp: tokio::sync::Mutex<Qmp>,
    client: Arc<AgentClient>,
}

/// `kiln-agent` as read (plain, gzip-compressed).
type AgentCache = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What the console said during the current boot.
#[derive(Default)]
struct BootWatch {
    kernel_started: bool,
    fatal: Option<String>,
}

/// A running VM.
pub struct Vm {
    spec: VmSpec,
    helper: (PathBuf, Vec<String>),
    sockets: PathBuf,
    overlay: PathBuf,
    console: Arc<Mutex<Vec<String>>>,
    console_offset: Arc<Mutex<u64>>,
    watch: Mutex<BootWatch>,
    running: tokio::sync::RwLock<Option<Arc<Running>>>,
    accel: Mutex<Accel>,
    /// Every boot, first to last.
    boots: Mutex<Vec<BootTiming>>,
    /// QEMU's events (`RESET`, `SHUTDOWN`, ...), from a monitor that only watches.
    events: tokio::sync::broadcast::Sender<String>,
    /// The agent connection the event watcher aborts when the guest goes down under it (a
    /// virtio port gives the host no end-of-file when the guest side closes).
    current: Arc<Mutex<Option<Arc<AgentClient>>>>,
    /// The private network's passt, started with the first boot.
    passt: Mutex<Option<passt::Passt>>,
    /// `kiln-agent`, plain and compressed, once read.
    agent_cache: Mutex<AgentCache>,
}

/// `qemu-system-x86_64`, or what to install.
pub fn qemu_binary() -> Result<PathBuf, InstanceError> {
    for p in [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(InstanceError::Unsupported(
        "qemu-system-x86_64 is not installed: run scripts/setup (or apt-get install qemu-system-x86)".into(),
    ))
}

/// True when `/dev/kvm` can create a VM (necessary, not sufficient: nested setups may still
/// fail later, which the boot watch catches).
pub fn kvm_device_usable() -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // SAFETY: KVM_GET_API_VERSION and KVM_CREATE_VM take no pointer arguments.
    unsafe {
        let api = nix::libc::ioctl(f.as_raw_fd(), 0xAE00, 0);
        if api != 12 {
            return false;
        }
        let vm = nix::libc::ioctl(f.as_raw_fd(), 0xAE01, 0);
        if vm < 0 {
            return false;
        }
        nix::libc::close(vm);
    }
    true
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Console lines that mean a boot has failed for good. GRUB's errors count only before the
/// kernel speaks (later, a line starting with `error:` may be anyone's).
fn fatal_console_line(line: &str, kernel_started: bool) -> bool {
    (!kernel_started && line.starts_with("error: "))
        || line.contains("Kernel panic")
        || line.contains("grub rescue>")
        || line.contains("VFS: Unable to mount root fs")
        || line.contains("error: no such device")
        || (line.contains("error: file `") && line.contains("' not found"))
        || line.contains("You are in emergency mode")
}

impl Vm {
    /// Boots a VM and waits until kiln's agent answers in it. `helper` re-runs kiln as the keeper.
    pub async fn start(spec: VmSpec, helper: (PathBuf, Vec<String>)) -> Result<Vm, InstanceError> {
        let qemu_img = Path::new("/usr/bin/qemu-img");
        if !qemu_img.is_file() {
            return Err(InstanceError::Unsupported(
                "qemu-img is not installed: run scripts/setup (or apt-get install qemu-utils)"
                    .into(),
            ));
        }
        if !spec.agent.is_file() {
            return Err(InstanceError::Unsupported(format!(
                "kiln-agent is not at {}: build it with the kiln binary (cargo build --bins)",
                spec.agent.display()
            )));
        }
        if !spec.disk.is_file() {
            return Err(InstanceError::Op(format!(
                "no disk image at {}",
                spec.disk.display()
            )));
        }
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| InstanceError::io(format!("creating {}", spec.dir.display()), e))?;
        // Unix socket paths are short (108 bytes): a deep run folder gets a short one of its own.
        // `sock` then links to it, so that whoever removes the folder finds it too
        // ([`remove_sockets_under`]): after a crash, or when a kept VM is stopped.
        let mut sockets = spec.dir.join("sock");
        if sockets.join("agent.sock").as_os_str().len() > 100 {
            let short = std::env::temp_dir().join(format!("{SHORT_SOCKETS}{}", &uuid_short()));
            let _ = std::fs::remove_file(&sockets);
            std::os::unix::fs::symlink(&short, &sockets)
                .map_err(|e| InstanceError::io(format!("creating {}", sockets.display()), e))?;
            sockets = short;
        }
        std::fs::create_dir_all(&sockets)
            .map_err(|e| InstanceError::io(format!("creating {}", sockets.display()), e))?;
        let overlay = spec.dir.join("overlay.qcow2");
        let backing_fmt = if spec
            .disk
            .extension()
            .is_some_and(|e| e == "raw" || e == "img")
        {
            "raw"
        } else {
            "qcow2"
        };
        let out = tokio::process::Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b"])
            .arg(&spec.disk)
            .arg(&overlay)
            .output()
            .await
            .map_err(|e| InstanceError::io("running qemu-img", e))?;
        if !out.status.success() {
            return Err(InstanceError::Op(format!(
                "qemu-img could not make the overlay: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let accel = match spec.accel {
            Accel::Tcg => Accel::Tcg,
            Accel::Kvm => Accel::Kvm,
            Accel::Auto => {
                let known_bad = spec
                    .kvm_verdict
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .is_some_and(|v| v.trim() == format!("{} tcg", boot_id()));
                if !known_bad && kvm_device_usable() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
        };
        let vm = Vm {
            spec,
            helper,
            sockets,
            overlay,
            console: Arc::new(Mutex::new(Vec::new())),
            console_offset: Arc::new(Mutex::new(0)),
            watch: Mutex::new(BootWatch::default()),
            running: tokio::sync::RwLock::new(None),
            accel: Mutex::new(accel),
            boots: Mutex::new(Vec::new()),
            events: tokio::sync::broadcast::channel(64).0,
            current: Arc::new(Mutex::new(None)),
            passt: Mutex::new(None),
            agent_cache: Mutex::new((None, None)),
        };
        if let Err(e) = vm.boot().await {
            vm.kill().await;
            return Err(e);
        }
        Ok(vm)
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel.lock().map(|a| *a).unwrap_or(Accel::Tcg)
    }

    /// How long each boot took to reach the guest agent.
    pub fn boot_times(&self) -> Vec<Duration> {
        self.boots
            .lock()
            .map(|b| b.iter().map(|t| t.duration).collect())
            .unwrap_or_default()
    }

    /// Where QEMU's sockets are (the guest agent's `qga.sock` among them).
    pub fn sockets_dir(&self) -> &Path {
        &self.sockets
    }

    /// The copy-on-write layer that holds everything the VM wrote.
    pub fn overlay(&self) -> &Path {
        &self.overlay
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.spec.dir.join("console.log")
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        self.console
            .lock()
            .map(|c| c.iter().rev().take(n).rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Lets the VM outlive kiln (kept for debugging): the keeper stops following kiln. Returns
    /// the keeper's process id; `None` (the VM stopped) when the keeper did not let go.
    pub async fn detach(&self) -> Option<u32> {
        let r = self.running.write().await.take()?;
        r.client.close();
        let Ok(r) = Arc::try_unwrap(r) else {
            tracing::warn!("VM {} is busy and cannot be kept", self.spec.id);
            return None;
        };
        match r.keeper.detach(Duration::from_secs(10)).await {
            Ok(pid) => {
                if let Some(p) = self.passt.lock().ok().and_then(|mut p| p.take()) {
                    p.leave_running();
                }
                Some(pid)
            }
            Err(e) => {
                tracing::warn!("VM {} cannot be kept (it was stopped): {e}", self.spec.id);
                None
            }
        }
    }

    fn qemu_args(&self, accel: Accel) -> Result<Vec<String>, InstanceError> {
        let s = &self.spec;
        let sock = |n: &str| self.sockets.join(n).display().to_string();
        let mut a: Vec<String> = vec![
            qemu_binary()?.display().to_string(),
            "-name".into(),
            format!("kiln-{}", s.id),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            if accel == Accel::Kvm {
                "kvm".into()
            } else {
                "tcg,thread=multi".into()
            },
            "-m".into(),
            s.memory_mib.to_string(),
            "-smp".into(),
            s.cpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!("file,id=console,path={}", self.console_log().display()),
            "-serial".into(),
            "chardev:console".into(),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                self.overlay.display()
            ),
            "-device".into(),
            "virtio-serial-pci,id=vser".into(),
            "-chardev".into(),
            format!("socket,id=qga,path={},server=on,wait=off", sock("qga.sock")),
            "-device".into(),
            "virtserialport,bus=vser.0,chardev=qga,name=org.qemu.guest_agent.0".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                sock("agent.sock")
            ),
            "-device".into(),
            format!("virtserialport,bus=vser.0,chardev=agent,name={AGENT_PORT},id=kilnagent"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock("qmp.sock")),
            "-chardev".into(),
            format!(
                "socket,id=events,path={},server=on,wait=off",
                sock("events.sock")
            ),
            "-mon".into(),
            "chardev=events,mode=control".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        match s.network {
            Network::Host => a.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-pci,netdev=net0".into(),
            ]),
            Network::Private => {
                let mut p = self
                    .passt
                    .lock()
                    .map_err(|_| InstanceError::Op("the VM's passt lock".into()))?;
                // passt serves one QEMU at a time, and waits for the next after a reboot.
                if p.as_ref().is_none_or(|p| !p.socket.exists()) {
                    *p = Some(passt::Passt::start(&self.sockets.join("passt"))?);
                }
                if let Some(p) = p.as_ref() {
                    a.extend(p.qemu_args());
                }
            }
            Network::None => {}
        }
        Ok(a)
    }

    async fn spawn_qemu(&self, accel: Accel) -> Result<Keeper, InstanceError> {
        let _ = std::fs::remove_file(self.console_log());
        for s in ["qga.sock", "agent.sock", "qmp.sock", "events.sock"] {
            let _ = std::fs::remove_file(self.sockets.join(s));
        }
        if let Ok(mut o) = self.console_offset.lock() {
            *o = 0;
        }
        if let Ok(mut w) = self.watch.lock() {
            *w = BootWatch::default();
        }
        let stderr = std::fs::File::create(self.spec.dir.join("qemu.log"))
            .map_err(|e| InstanceError::io("creating qemu.log", e))?;
        Keeper::spawn(&self.helper, &self.qemu_args(accel)?, stderr).map_err(|source| {
            InstanceError::Spawn {
                program: self.helper.0.display().to_string(),
                source,
            }
        })
    }

    /// Reads new console output into the tail; returns how many bytes arrived.
    fn pump_console(&self) -> u64 {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(self.console_log()) else {
            return 0;
        };
        let Ok(mut off) = self.console_offset.lock() else {
            return 0;
        };
        if f.seek(SeekFrom::Start(*off)).is_err() {
            return 0;
        }
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf).unwrap_or(0) as u64;
        *off += n;
        if n > 0 {
            let text = String::from_utf8_lossy(&buf);
            if let (Ok(mut c), Ok(mut w)) = (self.console.lock(), self.watch.lock()) {
                for l in text.split(['\n', '\r']).filter(|l| !l.trim().is_empty()) {
                    let l = strip_ansi(l);
                    w.kernel_started |= l.contains("Linux version");
                    if w.fatal.is_none() && fatal_console_line(&l, w.kernel_started) {
                        w.fatal = Some(l.clone());
                    }
                    c.push(l);
                }
                let len = c.len();
                if len > CONSOLE_TAIL * 4 {
                    c.drain(..len - CONSOLE_TAIL * 2);
                }
            }
        }
        n
    }

    fn boot_failure(&self, what: &str) -> InstanceError {
        let tail = self.console_tail(15);
        InstanceError::Op(if tail.is_empty() {
            format!(
                "{what}; the serial console stayed silent ({})",
                self.console_log().display()
            )
        } else {
            format!(
                "{what}; the console's last lines ({}):\n  {}",
                self.console_log().display(),
                tail.join("\n  ")
            )
        })
    }

    async fn client(&self) -> Result<Arc<AgentClient>, InstanceError> {
        self.running
            .read()
            .await
            .as_ref()
            .map(|r| r.client.clone())
            .ok_or_else(|| InstanceError::Op("the VM is stopped".into()))
    }

    async fn kill(&self) {
        if let Some(r) = self.running.write().await.take() {
            r.client.close();
            if let Ok(mut r) = Arc::try_unwrap(r) {
                r.keeper.kill().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.sockets);
    }

    /// Asks the guest to `poweroff` or `reboot` as its own init system does it (so filesystems
    /// are unmounted cleanly); the QEMU guest agent, then ACPI, when that does not work.
    async fn ask_guest(&self, client: &Arc<AgentClient>, action: &str) {
        // `systemctl` reaches systemd without D-Bus (minimal images have none, and the
        // `shutdown +0` that the QEMU guest agent uses needs it).
        let req = ExecRequest {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("if command -v systemctl >/dev/null; then systemctl --no-block {action}; else {action}; fi"),
            ],
            timeout: Some(Duration::from_secs(30)),
            ..ExecRequest::default()
        };
        match tokio::time::timeout(
            Duration::from_secs(40),
            client.exec(&req, &mut crate::Discard),
        )
        .await
        {
            // The agent may go down before it can answer: the guest took it.
            Ok(Ok(o)) if o.status.success() => return,
            Ok(Err(_)) | Err(_) => return,
            Ok(Ok(o)) => tracing::info!("{action} in the guest: {} {}", o.status, o.stderr.trim()),
        }
        let qga = self.sockets.join("qga.sock");
        let mode = if action == "reboot" {
            "reboot"
        } else {
            "powerdown"
        };
        if let Ok(mut q) = Qga::connect_within(&qga, Duration::from_secs(5)).await {
            if q.shutdown(mode).await.is_ok() {
                return;
            }
        }
        if action == "poweroff" {
            if let Some(r) = self.running.read().await.as_ref() {
                let _ = r
                    .qmp
                    .lock()
                    .await
                    .execute("system_powerdown", serde_json::json!({}))
                    .await;
            }
        }
    }

    /// Powers the guest off cleanly (its disk is consistent afterwards), or kills it after a while.
    async fn power_off(&self) -> Result<(), InstanceError> {
        let Some(r) = self.running.write().await.take() else {
            let _ = std::fs::remove_dir_all(&self.sockets);
            return Ok(());
        };
        self.ask_guest(&r.client, "poweroff").await;
        r.client.close();
        let mut r = match Arc::try_unwrap(r) {
            Ok(r) => r,
            Err(shared) => {
                shared.send_quit().await;
                let _ = std::fs::remove_dir_all(&self.sockets);
                return Ok(());
            }
        };
        if tokio::time::timeout(Duration::from_secs(90), r.keeper.wait())
            .await
            .is_err()
        {
            tracing::warn!("VM {} did not power off in 90 s; stopping it", self.spec.id);
            r.quit().await;
        }
        let _ = std::fs::remove_dir_all(&self.sockets);
        Ok(())
    }
}

impl Running {
    /// Asks QEMU to end now (QMP `quit`); a QEMU already gone is no error.
    async fn send_quit(&self) {
        let _ = self
            .qmp
            .lock()
            .await
            .execute("quit", serde_json::json!({}))
            .await;
    }

    /// Ends QEMU (QMP `quit`), killing it when it has not gone after 10 s.
    async fn quit(&mut self) {
        self.send_quit().await;
        if tokio::time::timeout(Duration::from_secs(10), self.keeper.wait())
            .await
            .is_err()
        {
            self.keeper.kill().await;
        }
    }
}

impl Vm {
    /// Ends QEMU (QMP `quit`) without the guest's shutdown, killing it when it does not go.
    async fn switch_off(&self) -> Result<(), InstanceError> {
        if let Some(r) = self.running.write().await.take() {
            r.client.close();
            match Arc::try_unwrap(r) {
                Ok(mut r) => r.quit().await,
                Err(shared) => shared.send_quit().await,
            }
        }
        let _ = std::fs::remove_dir_all(&self.sockets);
        Ok(())
    }
}

/// Passes QEMU's events on, and aborts the agent connection when the guest goes down under it.
async fn watch_events(
    mut monitor: Qmp,
    events: tokio::sync::broadcast::Sender<String>,
    current: Arc<Mutex<Option<Arc<AgentClient>>>>,
) {
    let abort = || {
        if let Some(c) = current.lock().ok().and_then(|mut c| c.take()) {
            c.abort();
        }
    };
    loop {
        match monitor.next_event().await {
            Ok((name, data)) => {
                let agent_closed = name == "VSERPORT_CHANGE"
                    && data["id"] == "kilnagent"
                    && data["open"] == serde_json::Value::Bool(false);
                if agent_closed || name == "RESET" || name == "SHUTDOWN" {
                    abort();
                }
                let _ = events.send(name);
            }
            Err(_) => {
                // QEMU is gone.
                abort();
                let _ = events.send("QEMU_EXITED".into());
                return;
            }
        }
    }
}

/// Name prefix of the short socket folders in the temporary directory.
const SHORT_SOCKETS: &str = "kiln-vm-";

/// Removes the short socket folders (outside `tree`) of the VMs whose folders are in `tree`,
/// before `tree` itself goes: a VM's folder links to them as `sock`.
pub fn remove_sockets_under(tree: &Path) {
    let mut stack = vec![(tree.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 4 {
                stack.push((e.path(), depth + 1));
            } else if kind.is_symlink() && e.file_name() == "sock" {
                let Ok(target) = std::fs::read_link(e.path()) else {
                    continue;
                };
                // Only what kiln made: a short socket folder right in the temporary directory.
                let ours = target.parent() == Some(std::env::temp_dir().as_path())
                    && target
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(SHORT_SOCKETS));
                if ours {
                    let _ = std::fs::remove_dir_all(&target);
                }
            }
        }
    }
}

fn uuid_short() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Removes terminal escape sequences (colours of systemd's boot messages).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl Instance for Vm {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Vm
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError> {
        self.client().await?.exec(req, sink).await
    }

    async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError> {
        self.client().await?.file_op(op).await
    }

    async fn put_file(&self, host_src: &Path, dest: &str, mode: u32) -> Result<(), InstanceError> {
        self.client().await?.put_file(host_src, dest, mode).await
    }

    async fn get_file(&self, src: &str, host_dest: &Path) -> Result<(), InstanceError> {
        self.client().await?.get_file(src, host_dest).await
    }

    fn scratch_dir(&self) -> String {
        "/run/kiln".to_string()
    }

    fn can_reboot(&self) -> bool {
        true
    }

    /// Reboots the guest (as the guest itself would) and waits for it to come back.
    async fn reboot(&self) -> Result<(), InstanceError> {
        let Some(r) = self.running.write().await.take() else {
            return Err(InstanceError::Op("the VM is stopped".into()));
        };
        let mut events = self.events.subscribe();
        self.ask_guest(&r.client, "reboot").await;
        r.client.close();
        let reset = async {
            while let Ok(e) = events.recv().await {
                if e == "RESET" {
                    return true;
                }
            }
            false
        };
        if !tokio::time::timeout(Duration::from_secs(120), reset)
            .await
            .unwrap_or(false)
        {
            // The guest ignored the request: reset it the hard way.
            let _ = r
                .qmp
                .lock()
                .await
                .execute("system_reset", serde_json::json!({}))
                .await;
        }
        let r = Arc::try_unwrap(r).map_err(|_| InstanceError::Op("the VM is busy".into()))?;
        let keeper = r.keeper;
        let qmp = r.qmp;
        // Wait for the guest agent to come back (after the reset the old one is gone).
        if let Ok(mut w) = self.watch.lock() {
            *w = BootWatch::default();
        }
        let mut keeper = keeper;
        let launched = Instant::now();
        let qga = match self
            .wait_for_agent(&mut keeper, launched, false, boot::REBOOT)
            .await?
        {
            Ok(q) => q,
            Err(Silent::Ended(status)) => {
                return Err(self.boot_failure(&format!("QEMU ended during the reboot ({status})")))
            }
            // Not watched after a reboot: KVM already ran this guest.
            Err(Silent::KvmSilent) => {
                keeper.kill().await;
                return Err(self.boot_failure("the VM stayed silent after its reboot"));
            }
        };
        let client = self
            .after_guest_agent(qga, launched, launched.elapsed())
            .await?;
        *self.running.write().await = Some(Arc::new(Running {
            keeper,
            qmp,
            client,
        }));
        Ok(())
    }

    async fn stop(&self) -> Result<(), InstanceError> {
        self.power_off().await
    }
}

#[async_trait]
impl crate::Launched for Vm {
    fn builder_kind(&self) -> crate::BuilderKind {
        crate::BuilderKind::Vm
    }

    fn boot(&self) -> Option<crate::Boot> {
        let first = *self.boots.lock().ok()?.first()?;
        Some(crate::Boot {
            duration: first.duration,
            accel: self.accel(),
            kernel_started: first.kernel_started,
            kiln_agent: Some(first.kiln_agent),
        })
    }

    /// Ends QEMU at once: nobody reads what a discarded VM wrote, so its guest need not shut
    /// down (a TCG guest takes seconds to).
    async fn discard(&self) -> Result<(), InstanceError> {
        self.switch_off().await
    }

    fn console_log(&self) -> Option<PathBuf> {
        Some(Vm::console_log(self))
    }

    fn written_disk(&self) -> Option<PathBuf> {
        Some(self.overlay.clone())
    }

    /// The VM keeps running (its keeper stops following kiln) and its folder moves to `into`;
    /// a socket folder outside it (a short one in /tmp) stays where it is.
    async fn keep(&self, into: &Path) -> Result<crate::Kept, InstanceError> {
        let sockets = self.sockets.clone();
        let Some(pid) = self.detach().await else {
            return Err(InstanceError::Op(format!(
                "VM {} could not be kept: its keeper did not let go (it was stopped)",
                self.spec.id
            )));
        };
        let dir = &self.spec.dir;
        let moved = into
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::rename(dir, into));
        if let Err(e) = &moved {
            tracing::warn!(
                "the kept VM stays in {} (moving it to {}: {e})",
                dir.display(),
                into.display()
            );
        }
        let base = if moved.is_ok() { into } else { dir.as_path() };
        let qga = match sockets.strip_prefix(dir) {
            Ok(rel) => base.join(rel).join("qga.sock"),
            Err(_) => sockets.join("qga.sock"),
        };
        Ok(crate::Kept {
            pid,
            dir: base.to_path_buf(),
            guest_agent_socket: Some(qga),
            console: Some(base.join("console.log")),
        })
    }
}
