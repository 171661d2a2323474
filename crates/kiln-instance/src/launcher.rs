//! Starting the instances a build needs. A build asks a [`Launcher`] for a builder or test
//! instance by [`LaunchSpec`] (whose variant is the [`BuilderKind`]) and gets back a
//! [`Launched`] instance: an [`Instance`] that components run on, plus what a build needs of it
//! besides (the mount points to leave out of a capture, how a VM booted, the disk a VM wrote,
//! keeping it for debugging). The build never names a backend type, so another way to start
//! instances (a VM per account for untrusted components, a fake for tests) plugs in here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::sandbox::{Sandbox, SandboxSpec};
use crate::vm::{Accel, Vm, VmSpec};
use crate::{BuilderKind, Instance, InstanceError};

/// What to start.
#[derive(Debug, Clone)]
pub enum LaunchSpec {
    /// A sandbox over read-only layers.
    Sandbox(SandboxSpec),
    /// A VM booted from a disk image.
    Vm(VmSpec),
}

impl LaunchSpec {
    /// The kind of instance it starts.
    pub fn kind(&self) -> BuilderKind {
        match self {
            LaunchSpec::Sandbox(_) => BuilderKind::Sandbox,
            LaunchSpec::Vm(_) => BuilderKind::Vm,
        }
    }

    /// The instance's short id.
    pub fn id(&self) -> &str {
        match self {
            LaunchSpec::Sandbox(s) => &s.id,
            LaunchSpec::Vm(v) => &v.id,
        }
    }
}

/// How a VM came up, as the host measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// From starting QEMU to the QEMU guest agent's first answer (firmware, bootloader,
    /// kernel, init, the guest agent's start).
    pub duration: Duration,
    /// The accelerator it runs under.
    pub accel: Accel,
    /// From starting QEMU to the guest kernel's clock starting: the firmware, the bootloader
    /// reading the kernel and initramfs, the kernel unpacking itself. Read from the guest's
    /// uptime when its agent first answered (so the guest's own timestamps can be placed in
    /// the boot); none when it could not be read.
    pub kernel_started: Option<Duration>,
    /// After `duration`: bringing kiln's agent in through the guest agent (copied in, started,
    /// answering), before anything could run.
    pub kiln_agent: Option<Duration>,
}

/// An instance kept running after a failure, for a person to debug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The process that holds it: the namespaces' PID 1 (sandbox) or the VM's keeper.
    pub pid: u32,
    /// Its folder (where it was moved to).
    pub dir: PathBuf,
    /// For a VM: the QEMU guest agent's socket.
    pub guest_agent_socket: Option<PathBuf>,
    /// For a VM: its serial console log.
    pub console: Option<PathBuf>,
}

/// A started builder or test instance.
#[async_trait]
pub trait Launched: Instance {
    /// Which kind it is.
    fn builder_kind(&self) -> BuilderKind;

    /// Paths (relative to the root) kiln created in the writable layer as mount points, to
    /// leave out of a capture.
    fn created_paths(&self) -> Vec<String> {
        Vec::new()
    }

    /// How it booted, for instances that boot (VMs).
    fn boot(&self) -> Option<Boot> {
        None
    }

    /// Its serial console log, for instances that have one (VMs).
    fn console_log(&self) -> Option<PathBuf> {
        None
    }

    /// The disk layer that holds everything the instance wrote, for instances with a disk (a
    /// VM's copy-on-write overlay): read it once the instance is stopped.
    fn written_disk(&self) -> Option<PathBuf> {
        None
    }

    /// Stops the instance without keeping what it wrote, for an instance nobody reads
    /// afterwards (a test instance): a VM is switched off at once instead of shut down.
    /// Instances with nothing to throw away just stop.
    async fn discard(&self) -> Result<(), InstanceError> {
        self.stop().await
    }

    /// Keeps the instance for debugging beyond this kiln's life: its folder moves to `into` and
    /// a process holds it. Call it instead of [`Instance::stop`] on a failed instance.
    async fn keep(&self, into: &Path) -> Result<Kept, InstanceError>;
}

/// Starts builder and test instances.
#[async_trait]
pub trait Launcher: Send + Sync {
    /// Whether instances of `kind` can start on this host; the error says what to install or
    /// change. Builds call it before they take a build number.
    fn preflight(&self, kind: BuilderKind) -> Result<(), InstanceError>;

    /// Starts an instance and waits until components can run on it.
    async fn launch(&self, spec: LaunchSpec) -> Result<Arc<dyn Launched>, InstanceError>;
}

/// The launcher of this machine: sandboxes through kiln's helper, VMs through its keeper.
#[derive(Debug, Clone)]
pub struct LocalLauncher {
    /// The sandbox helper: program and arguments (kiln re-executed).
    pub helper: (PathBuf, Vec<String>),
    /// The VM keeper: program and arguments (kiln re-executed).
    pub keeper: (PathBuf, Vec<String>),
    /// `kiln-agent`, copied into VMs.
    pub agent: Option<PathBuf>,
}

impl LocalLauncher {
    /// kiln's own executable as helper and keeper.
    pub fn current_exe(agent: Option<PathBuf>) -> Self {
        LocalLauncher {
            helper: crate::sandbox::current_exe_helper(),
            keeper: (
                PathBuf::from("/proc/self/exe"),
                vec![crate::vm::keeper::KEEPER_ARG.to_string()],
            ),
            agent,
        }
    }
}

/// The message a build without root gets.
pub const NEEDS_ROOT: &str = "kiln build needs root (namespaces, overlayfs mounts, file \
                              ownership): run it as root, e.g. with sudo";

#[async_trait]
impl Launcher for LocalLauncher {
    fn preflight(&self, kind: BuilderKind) -> Result<(), InstanceError> {
        if !crate::is_root() {
            return Err(InstanceError::Unsupported(NEEDS_ROOT.into()));
        }
        if kind == BuilderKind::Vm {
            crate::vm::qemu_binary()?;
            match &self.agent {
                Some(a) if a.is_file() => {}
                Some(a) => {
                    return Err(InstanceError::Unsupported(format!(
                        "kiln-agent is not at {}: it is built with kiln (cargo build -p kiln), and KILN_AGENT may name it",
                        a.display()
                    )))
                }
                None => {
                    return Err(InstanceError::Unsupported(
                        "kiln-agent was not found next to kiln: it is built with kiln (cargo build -p kiln), and KILN_AGENT may name it".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<Arc<dyn Launched>, InstanceError> {
        match spec {
            LaunchSpec::Sandbox(s) => {
                let (helper, args) = self.helper.clone();
                Ok(Arc::new(Sandbox::start(s, helper, args).await?))
            }
            LaunchSpec::Vm(mut v) => {
                if v.agent.as_os_str().is_empty() {
                    v.agent = self.agent.clone().unwrap_or_default();
                }
                Ok(Arc::new(Vm::start(v, self.keeper.clone()).await?))
            }
        }
    }
}
