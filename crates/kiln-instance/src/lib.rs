//! Instances: the machines kiln runs component steps on.
//!
//! The component engine (`kiln-toe`) never touches a machine directly: it asks an [`Instance`]
//! to run a program, to perform a file operation, to take a file in or give one back, or to
//! reboot. Each backend decides how: the [`host`] instance runs on the local machine (what
//! `awstoe run` does); sandboxes and VMs plug in behind the same trait.
//!
//! File operations ([`FileOp`]) are whole AWSTOE file actions (copy a folder with wildcards,
//! set an owner by name, ...), not primitive calls, so that a remote backend performs each one in
//! a single round trip and resolves paths and user names inside the instance, where they mean
//! what the document's author meant. [`fileops::apply`] is the one implementation; backends run
//! it where the instance's filesystem is.
#![deny(missing_docs)]

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod agent;
pub mod client;
pub mod encoding;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod fileops;
pub mod host;
pub mod launcher;
pub mod process;
pub mod protocol;
pub mod runlock;
pub mod sandbox;
pub mod vm;

pub use fileops::{FileOp, FileOpOutput};
pub use launcher::{Boot, Kept, LaunchSpec, Launched, Launcher, LocalLauncher};

/// True when kiln runs as root (the sandbox needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Errors of an instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The instance cannot do this at all (a host cannot reboot, say).
    #[error("{0}")]
    Unsupported(String),
    /// The program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file operation failed for a reason the document's author can act on.
    #[error("{0}")]
    Op(String),
    /// Something failed while talking to the instance.
    #[error("{context}: {source}")]
    Io {
        /// What kiln was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl InstanceError {
    /// An I/O error with what kiln was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        InstanceError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A program to run in an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program: a path, or a name looked up in the instance's `PATH`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory inside the instance; the instance's default when `None`.
    pub cwd: Option<String>,
    /// Kill the program and everything it started after this long.
    pub timeout: Option<Duration>,
}

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives output as the program produces it, one line at a time (without the newline).
pub trait OutputSink: Send {
    /// One line of output.
    fn line(&mut self, stream: Stream, line: &str);
}

/// A sink that drops everything.
pub struct Discard;

impl OutputSink for Discard {
    fn line(&mut self, _: Stream, _: &str) {}
}

impl<F: FnMut(Stream, &str) + Send> OutputSink for F {
    fn line(&mut self, stream: Stream, line: &str) {
        self(stream, line)
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran past its timeout and was killed with everything it started.
    TimedOut,
}

impl ExitStatus {
    /// The exit code, when it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            _ => None,
        }
    }

    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::TimedOut => write!(f, "timed out"),
        }
    }
}

/// What a program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output (bounded by [`process::MAX_CAPTURE`]).
    pub stdout: String,
    /// Its standard error (bounded likewise).
    pub stderr: String,
}

/// Which kind of builder or test instance runs a build's components: the one name for it in
/// recipes, records, kept instances and launchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// Linux namespaces over an overlayfs view of the image's layers.
    #[default]
    Sandbox,
    /// A QEMU virtual machine booted from a disk image.
    Vm,
}

impl BuilderKind {
    /// The stable name (`sandbox`, `vm`), as recipes write it and records keep it.
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderKind::Sandbox => "sandbox",
            BuilderKind::Vm => "vm",
        }
    }
}

impl std::fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for BuilderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sandbox" => Ok(BuilderKind::Sandbox),
            "vm" => Ok(BuilderKind::Vm),
            other => Err(format!("unknown builder `{other}`: use sandbox or vm")),
        }
    }
}

impl From<BuilderKind> for InstanceKind {
    fn from(k: BuilderKind) -> Self {
        match k {
            BuilderKind::Sandbox => InstanceKind::Sandbox,
            BuilderKind::Vm => InstanceKind::Vm,
        }
    }
}

/// What kind of machine an instance is (a builder kind, or the host itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    /// The local machine.
    Host,
    /// A Linux namespace sandbox.
    Sandbox,
    /// A virtual machine.
    Vm,
}

impl std::fmt::Display for InstanceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceKind::Host => "host",
            InstanceKind::Sandbox => "sandbox",
            InstanceKind::Vm => "vm",
        })
    }
}

/// A machine that component steps run on.
#[async_trait]
pub trait Instance: Send + Sync {
    /// A short identifier, shown to users.
    fn id(&self) -> &str;

    /// The backend kind.
    fn kind(&self) -> InstanceKind;

    /// Runs a program, streaming its output lines to `sink` as they come.
    async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError>;

    /// Performs a file operation inside the instance.
    async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError>;

    /// Copies a file from the host into the instance (parents created, replaced if present).
    async fn put_file(&self, host_src: &Path, dest: &str, mode: u32) -> Result<(), InstanceError>;

    /// Copies a file out of the instance onto the host.
    async fn get_file(&self, src: &str, host_dest: &Path) -> Result<(), InstanceError>;

    /// A folder inside the instance for kiln's own temporary files (step scripts). Files there
    /// are removed after use and are never part of a captured image.
    fn scratch_dir(&self) -> String;

    /// Whether [`Instance::reboot`] can work here.
    fn can_reboot(&self) -> bool;

    /// Restarts the instance and waits until it can run programs again.
    async fn reboot(&self) -> Result<(), InstanceError>;

    /// Stops the instance and releases what it holds.
    async fn stop(&self) -> Result<(), InstanceError>;
}
