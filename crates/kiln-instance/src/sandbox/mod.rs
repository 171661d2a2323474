//! The sandbox instance: Linux namespaces over an overlayfs view of read-only layers.
//!
//! [`Sandbox::start`] spawns a helper process (kiln's own binary, re-executed with
//! [`HELPER_ARG`]) that builds the sandbox (see [`init`]) and runs an agent inside it. kiln
//! talks to the agent over the helper's stdin and stdout ([`protocol`]). Everything the sandbox
//! starts lives in its PID namespace and dies with it; every mount lives in its mount namespace
//! and vanishes with it; what remains on disk (the writable layer) belongs to the caller, who
//! captures and removes it. [`sweep`] removes what a killed kiln left behind.

pub mod confine;
pub mod init;
pub mod keep;
pub mod net;
pub mod root;
pub mod syscalls;
pub mod userns;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use crate::fileops::{FileOp, FileOpOutput};
use crate::{ExecOutcome, ExecRequest, Instance, InstanceError, InstanceKind, OutputSink};

/// First argument that turns kiln's binary into the sandbox helper.
pub const HELPER_ARG: &str = "__kiln-sandbox-helper";

/// kiln's scratch folder inside a sandbox (on the /run tmpfs, never captured).
pub const SCRATCH: &str = "/run/kiln";

/// How long a sandbox may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Network of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own network namespace with outbound connections through pasta; the host's own
    /// addresses (its loopback included) are out of reach (see [`net`]).
    #[default]
    Private,
    /// The host's network, its loopback and every service on it included: an explicit opt-in.
    Host,
    /// Only a loopback interface.
    None,
}

impl Network {
    /// The name recipes and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Private => "private",
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

/// How much a sandbox takes away from what it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Confinement {
    /// Docker's default confinement and more: a user namespace, capabilities cut to Docker's
    /// set, seccomp, masked and read-only `/proc` files, a cgroup namespace, a fresh read-only
    /// sysfs, `nodev` mounts (see `docs/security.md`).
    #[default]
    Confined,
    /// Namespaces and the overlay only, as kiln's sandbox was before it was confined: root
    /// inside is root outside. Recipes cannot ask for it; kiln's tests use it to show that
    /// each hostile probe works where nothing stops it.
    Unconfined,
}

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// Number of processes and threads.
    pub pids: Option<u64>,
    /// CPUs (1.5 = one and a half).
    pub cpus: Option<f64>,
}

/// A cgroup folder to create and join, with the settings to write into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupDir {
    /// The folder.
    pub dir: PathBuf,
    /// (file, value) pairs.
    pub settings: Vec<(String, String)>,
}

/// Everything the helper needs to build a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Short id (names cgroups, shown to users).
    pub id: String,
    /// Read-only layers, topmost first (overlayfs `lowerdir` order); at least one.
    pub lower: Vec<PathBuf>,
    /// The writable layer (an empty folder the first time).
    pub upper: PathBuf,
    /// Overlayfs work folder, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// Where the merged root is mounted (inside the sandbox's own mount namespace).
    pub root: PathBuf,
    /// Hostname.
    pub hostname: String,
    /// Network.
    pub network: Network,
    /// Working directory of programs and relative paths.
    pub working_dir: String,
    /// Environment of programs.
    pub env: Vec<(String, String)>,
    /// The host's resolv.conf, bound read-only over the image's.
    pub resolv_conf: Option<PathBuf>,
    /// Cgroups to join (computed from `limits` by [`Sandbox::start`]).
    pub cgroups: Vec<CgroupDir>,
    /// Resource limits.
    pub limits: Limits,
    /// Confinement.
    pub confinement: Confinement,
    /// The host ids root inside maps to (set by [`Sandbox::start`] for a confined sandbox).
    pub ids: Option<userns::IdRange>,
}

impl SandboxSpec {
    /// A spec with kiln's defaults: confined, a private network, `/tmp` as working directory,
    /// a standard `PATH`, the host's resolv.conf.
    pub fn new(
        id: &str,
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        root: PathBuf,
    ) -> Self {
        SandboxSpec {
            id: id.to_string(),
            lower,
            upper,
            work,
            root,
            hostname: format!("kiln-{id}"),
            network: Network::Private,
            working_dir: "/tmp".into(),
            env: default_env(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")).filter(|p| p.exists()),
            cgroups: Vec::new(),
            limits: Limits::default(),
            confinement: Confinement::Confined,
            ids: None,
        }
    }
}

/// The environment programs in a sandbox start with.
pub fn default_env() -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The cgroup folders and settings that enforce `limits`: cgroup v2 when the unified
/// hierarchy is mounted at `root`, else the v1 controllers.
pub fn cgroup_plan(root: &Path, id: &str, limits: &Limits) -> Vec<CgroupDir> {
    if limits == &Limits::default() {
        return Vec::new();
    }
    let name = format!("kiln-{id}");
    if root.join("cgroup.controllers").exists() {
        let mut settings = Vec::new();
        if let Some(m) = limits.memory_bytes {
            settings.push(("memory.max".into(), m.to_string()));
        }
        if let Some(p) = limits.pids {
            settings.push(("pids.max".into(), p.to_string()));
        }
        if let Some(c) = limits.cpus {
            settings.push((
                "cpu.max".into(),
                format!("{} 100000", (c * 100_000.0) as u64),
            ));
        }
        return vec![CgroupDir {
            dir: root.join(name),
            settings,
        }];
    }
    let mut out = Vec::new();
    if let Some(m) = limits.memory_bytes {
        out.push(CgroupDir {
            dir: root.join("memory").join(&name),
            settings: vec![("memory.limit_in_bytes".into(), m.to_string())],
        });
    }
    if let Some(p) = limits.pids {
        out.push(CgroupDir {
            dir: root.join("pids").join(&name),
            settings: vec![("pids.max".into(), p.to_string())],
        });
    }
    if let Some(c) = limits.cpus {
        out.push(CgroupDir {
            dir: root.join("cpu").join(&name),
            settings: vec![
                ("cpu.cfs_period_us".into(), "100000".into()),
                (
                    "cpu.cfs_quota_us".into(),
                    ((c * 100_000.0) as u64).to_string(),
                ),
            ],
        });
    }
    out
}

/// A running helper and the agent behind it.
struct Running {
    client: Arc<crate::client::AgentClient>,
    child: tokio::sync::Mutex<tokio::process::Child>,
}

/// A running sandbox.
pub struct Sandbox {
    spec: SandboxSpec,
    helper: PathBuf,
    helper_args: Vec<String>,
    running: tokio::sync::RwLock<Option<Arc<Running>>>,
    created: Mutex<Vec<String>>,
    _slot: Option<userns::Slot>,
}

/// Where kiln's own executable is, to re-run it as the helper.
pub fn current_exe_helper() -> (PathBuf, Vec<String>) {
    (
        PathBuf::from("/proc/self/exe"),
        vec![HELPER_ARG.to_string()],
    )
}

impl Sandbox {
    /// Starts a sandbox. `helper` and `helper_args` run the helper (kiln passes its own
    /// executable and [`HELPER_ARG`]); the spec is appended as the last argument.
    pub async fn start(
        mut spec: SandboxSpec,
        helper: PathBuf,
        helper_args: Vec<String>,
    ) -> Result<Sandbox, InstanceError> {
        if !crate::is_root() {
            return Err(InstanceError::Unsupported(
                "kiln's sandbox needs root (namespaces, overlayfs, pivot_root): run kiln as root"
                    .into(),
            ));
        }
        if spec.lower.is_empty() {
            return Err(InstanceError::Op(
                "a sandbox needs at least one read-only layer".into(),
            ));
        }
        for dir in [&spec.upper, &spec.work, &spec.root] {
            std::fs::create_dir_all(dir)
                .map_err(|e| InstanceError::io(format!("creating {}", dir.display()), e))?;
        }
        spec.cgroups = cgroup_plan(Path::new("/sys/fs/cgroup"), &spec.id, &spec.limits);
        let slot = if spec.confinement == Confinement::Confined || spec.network == Network::Private
        {
            let kind = if spec.network == Network::Host {
                userns::SlotKind::HostNetwork
            } else {
                userns::SlotKind::Private
            };
            let slot = userns::take_slot(kind).map_err(|e| {
                InstanceError::io(
                    format!("taking a sandbox id range in {}", userns::SLOT_DIR),
                    e,
                )
            })?;
            spec.ids = Some(slot.ids);
            Some(slot)
        } else {
            None
        };
        if spec.network == Network::Private {
            net::install_firewall().map_err(InstanceError::Op)?;
        }
        let sandbox = Sandbox {
            spec,
            helper,
            helper_args,
            running: tokio::sync::RwLock::new(None),
            created: Mutex::new(Vec::new()),
            _slot: slot,
        };
        sandbox.launch().await?;
        Ok(sandbox)
    }

    /// The spec it runs with.
    pub fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// Mount points kiln created in the writable layer (relative paths), to leave out of captures.
    pub fn created_paths(&self) -> Vec<String> {
        self.created.lock().map(|c| c.clone()).unwrap_or_default()
    }

    async fn launch(&self) -> Result<(), InstanceError> {
        let spec_json = serde_json::to_string(&self.spec)
            .map_err(|e| InstanceError::Op(format!("sandbox spec: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.helper);
        cmd.args(&self.helper_args)
            .arg(spec_json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only affects the child being started.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| InstanceError::Spawn {
            program: self.helper.display().to_string(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(InstanceError::Op("the sandbox helper has no pipes".into()));
        };
        let stderr_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = stderr_lines.clone();
        let id = self.spec.id.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match l.strip_prefix(init::WARNING_PREFIX) {
                    Some(w) => tracing::warn!(sandbox = %id, "{w}"),
                    None => tracing::debug!(sandbox = %id, "{l}"),
                }
                if let Ok(mut s) = sink.lock() {
                    s.push(l);
                    let n = s.len();
                    if n > 50 {
                        s.drain(..n - 50);
                    }
                }
            }
        });
        let connected = crate::client::AgentClient::connect(
            stdout,
            stdin,
            "sandbox",
            stderr_lines,
            START_TIMEOUT,
        )
        .await;
        match connected {
            Ok((client, created)) => {
                if let Ok(mut c) = self.created.lock() {
                    for p in created {
                        if !c.contains(&p) {
                            c.push(p);
                        }
                    }
                }
                *self.running.write().await = Some(Arc::new(Running {
                    client,
                    child: tokio::sync::Mutex::new(child),
                }));
                Ok(())
            }
            Err(crate::client::ConnectError::Fatal(msg)) => {
                let _ = child.wait().await;
                self.reap();
                Err(InstanceError::Op(format!(
                    "the sandbox could not start: {msg}"
                )))
            }
            Err(crate::client::ConnectError::Gone) => {
                let _ = child.kill().await;
                self.reap();
                Err(InstanceError::Op(
                    "the sandbox helper ended before its agent was ready".into(),
                ))
            }
            Err(e @ crate::client::ConnectError::Version { .. }) => {
                let _ = child.kill().await;
                self.reap();
                Err(InstanceError::Op(format!("the sandbox's agent: {e}")))
            }
        }
    }

    async fn client(&self) -> Result<Arc<crate::client::AgentClient>, InstanceError> {
        self.running
            .read()
            .await
            .as_ref()
            .map(|r| r.client.clone())
            .ok_or_else(|| InstanceError::Op("the sandbox is stopped".into()))
    }

    /// After the helper ended: kills what still runs with the sandbox's ids (its pasta, which
    /// outlives the namespace it served, and anything that got out), then removes its cgroups.
    fn reap(&self) {
        if let Some(ids) = self.spec.ids {
            userns::kill_range(ids);
        }
        self.remove_cgroups();
    }

    fn remove_cgroups(&self) {
        for cg in &self.spec.cgroups {
            // Only empty cgroups can go; the processes are gone once the helper has exited.
            for _ in 0..50 {
                if std::fs::remove_dir(&cg.dir).is_ok() || !cg.dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    async fn shutdown(&self) -> Result<(), InstanceError> {
        let Some(running) = self.running.write().await.take() else {
            return Ok(());
        };
        // Closing the agent's stdin ends it, then PID 1, then the namespace.
        running.client.close();
        let mut child = running.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        drop(child);
        self.reap();
        Ok(())
    }
}

#[async_trait]
impl Instance for Sandbox {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Sandbox
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
        SCRATCH.to_string()
    }

    fn can_reboot(&self) -> bool {
        true
    }

    /// Restarts the sandbox: every process stops, the writable layer stays, a new PID 1 starts.
    async fn reboot(&self) -> Result<(), InstanceError> {
        self.shutdown().await?;
        self.launch().await
    }

    async fn stop(&self) -> Result<(), InstanceError> {
        self.shutdown().await
    }
}

#[async_trait]
impl crate::Launched for Sandbox {
    fn builder_kind(&self) -> crate::BuilderKind {
        crate::BuilderKind::Sandbox
    }

    fn created_paths(&self) -> Vec<String> {
        Sandbox::created_paths(self)
    }

    /// The sandbox stops (the failed step's processes die with it); its folder (writable layer,
    /// work and root folders, which share one parent) moves to `into`, and new namespaces hold
    /// the same filesystem there.
    async fn keep(&self, into: &Path) -> Result<crate::Kept, InstanceError> {
        self.shutdown().await?;
        let upper = &self.spec.upper;
        let (Some(dir), Some(upper_name)) = (upper.parent(), upper.file_name()) else {
            return Err(InstanceError::Op(format!(
                "{} has no folder to keep",
                upper.display()
            )));
        };
        if let Some(p) = into.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| InstanceError::io(format!("creating {}", p.display()), e))?;
        }
        std::fs::rename(dir, into).map_err(|e| {
            InstanceError::io(format!("moving {} to {}", dir.display(), into.display()), e)
        })?;
        let pid = keep::start_kept(
            &self.spec.lower,
            &into.join(upper_name),
            &into.join("work"),
            &into.join("root"),
            &self.spec.hostname,
        )?;
        Ok(crate::Kept {
            pid,
            dir: into.to_path_buf(),
            guest_agent_socket: None,
            console: None,
        })
    }
}
