//! A launcher for tests of code that drives instances (a build's stages), without root, QEMU or
//! namespaces. Its instances run nothing: the test scripts what every program "does" — the
//! lines it prints, how it exits, and the files it writes into the instance's writable layer —
//! and reads back what was launched. Files the instance reads come from its writable layer,
//! then its read-only layers, as an overlay would show them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::fileops::{FileOp, FileOpOutput, PathKind};
use crate::launcher::{Boot, Kept, LaunchSpec, Launched, Launcher};
use crate::vm::Accel;
use crate::{
    BuilderKind, ExecOutcome, ExecRequest, ExitStatus, Instance, InstanceError, InstanceKind,
    OutputSink, Stream,
};

/// One program a fake instance was asked to run.
#[derive(Debug, Clone)]
pub struct FakeExec {
    /// The instance's id.
    pub instance: String,
    /// Its kind.
    pub kind: BuilderKind,
    /// The request.
    pub request: ExecRequest,
    /// The script the program runs, when its first argument is a file kiln wrote into the
    /// instance (how AWSTOE's ExecuteBash steps run).
    pub script: Option<String>,
}

/// What a scripted program does.
#[derive(Debug, Clone)]
pub struct FakeReply {
    /// Lines it prints.
    pub lines: Vec<(Stream, String)>,
    /// How it ends.
    pub status: ExitStatus,
    /// Files it writes, relative to the instance's root, into the writable layer.
    pub writes: Vec<(String, Vec<u8>)>,
}

impl FakeReply {
    /// Exit code 0, no output.
    pub fn ok() -> Self {
        FakeReply {
            lines: Vec::new(),
            status: ExitStatus::Code(0),
            writes: Vec::new(),
        }
    }

    /// Exit code `code` after printing `line` on stderr.
    pub fn fail(code: i32, line: &str) -> Self {
        FakeReply {
            lines: vec![(Stream::Stderr, line.to_string())],
            status: ExitStatus::Code(code),
            writes: Vec::new(),
        }
    }

    /// Also writes a file into the writable layer.
    pub fn writing(mut self, path: &str, content: &[u8]) -> Self {
        self.writes.push((path.to_string(), content.to_vec()));
        self
    }
}

type Script = dyn Fn(&FakeExec) -> FakeReply + Send + Sync;

/// A launcher whose instances run nothing but what the test scripts.
pub struct FakeLauncher {
    script: Arc<Script>,
    refuse: Mutex<HashMap<BuilderKind, String>>,
    launches: Mutex<Vec<LaunchSpec>>,
    execs: Arc<Mutex<Vec<FakeExec>>>,
    boot: Mutex<Boot>,
}

impl FakeLauncher {
    /// A launcher whose programs all do what `script` says.
    pub fn new(script: impl Fn(&FakeExec) -> FakeReply + Send + Sync + 'static) -> Self {
        FakeLauncher {
            script: Arc::new(script),
            refuse: Mutex::new(HashMap::new()),
            launches: Mutex::new(Vec::new()),
            execs: Arc::new(Mutex::new(Vec::new())),
            boot: Mutex::new(Boot {
                duration: Duration::from_millis(5),
                accel: Accel::Tcg,
                kernel_started: None,
                kiln_agent: None,
            }),
        }
    }

    /// Makes the VMs launched from now on report `boot` (a slow boot, say).
    pub fn boot_as(&self, boot: Boot) {
        if let Ok(mut b) = self.boot.lock() {
            *b = boot;
        }
    }

    /// A launcher whose programs all succeed without output.
    pub fn succeeding() -> Self {
        FakeLauncher::new(|_| FakeReply::ok())
    }

    /// Makes [`Launcher::preflight`] refuse `kind` with `why`.
    pub fn refuse(&self, kind: BuilderKind, why: &str) {
        if let Ok(mut r) = self.refuse.lock() {
            r.insert(kind, why.to_string());
        }
    }

    /// Everything launched so far, in order.
    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.launches.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every program run so far, in order.
    pub fn execs(&self) -> Vec<FakeExec> {
        self.execs.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    fn preflight(&self, kind: BuilderKind) -> Result<(), InstanceError> {
        match self.refuse.lock().ok().and_then(|r| r.get(&kind).cloned()) {
            Some(why) => Err(InstanceError::Unsupported(why)),
            None => Ok(()),
        }
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<Arc<dyn Launched>, InstanceError> {
        if let Ok(mut l) = self.launches.lock() {
            l.push(spec.clone());
        }
        let (upper, lowers, dir) = match &spec {
            LaunchSpec::Sandbox(s) => (s.upper.clone(), s.lower.clone(), None),
            LaunchSpec::Vm(v) => {
                std::fs::create_dir_all(&v.dir)
                    .map_err(|e| InstanceError::io(format!("creating {}", v.dir.display()), e))?;
                // What the VM "writes" lands beside its disk; the overlay is a copy of the
                // disk, so that flattening it gives the disk back.
                let overlay = v.dir.join("overlay.qcow2");
                std::fs::copy(&v.disk, &overlay)
                    .map_err(|e| InstanceError::io(format!("copying {}", v.disk.display()), e))?;
                std::fs::write(v.dir.join("console.log"), b"fake console\n")
                    .map_err(|e| InstanceError::io("writing the fake console", e))?;
                (v.dir.join("written"), Vec::new(), Some(v.dir.clone()))
            }
        };
        std::fs::create_dir_all(&upper)
            .map_err(|e| InstanceError::io(format!("creating {}", upper.display()), e))?;
        let boot = self
            .boot
            .lock()
            .map(|b| *b)
            .map_err(|_| InstanceError::Op("the fake launcher's state is poisoned".into()))?;
        Ok(Arc::new(FakeInstance {
            boot,
            id: spec.id().to_string(),
            kind: spec.kind(),
            upper,
            lowers,
            dir,
            script: self.script.clone(),
            execs: self.execs.clone(),
            scratch: Mutex::new(HashMap::new()),
        }))
    }
}

struct FakeInstance {
    boot: Boot,
    id: String,
    kind: BuilderKind,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    dir: Option<PathBuf>,
    script: Arc<Script>,
    execs: Arc<Mutex<Vec<FakeExec>>>,
    scratch: Mutex<HashMap<String, Vec<u8>>>,
}

impl FakeInstance {
    /// Where `path` is seen: the writable layer, then the read-only layers, topmost first.
    fn find(&self, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        std::iter::once(&self.upper)
            .chain(self.lowers.iter())
            .map(|l| l.join(rel))
            .find(|p| p.symlink_metadata().is_ok())
    }

    fn write(&self, path: &str, content: &[u8]) -> Result<(), InstanceError> {
        let p = self.upper.join(path.trim_start_matches('/'));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| InstanceError::io(format!("creating {}", d.display()), e))?;
        }
        std::fs::write(&p, content)
            .map_err(|e| InstanceError::io(format!("writing {}", p.display()), e))
    }
}

#[async_trait]
impl Instance for FakeInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> InstanceKind {
        self.kind.into()
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError> {
        let script = req.args.first().and_then(|a| {
            self.scratch
                .lock()
                .ok()
                .and_then(|s| s.get(a).map(|b| String::from_utf8_lossy(b).into_owned()))
        });
        let call = FakeExec {
            instance: self.id.clone(),
            kind: self.kind,
            request: req.clone(),
            script,
        };
        let reply = (self.script)(&call);
        if let Ok(mut e) = self.execs.lock() {
            e.push(call);
        }
        for (path, content) in &reply.writes {
            self.write(path, content)?;
        }
        let (mut stdout, mut stderr) = (String::new(), String::new());
        for (stream, line) in &reply.lines {
            sink.line(*stream, line);
            let out = if *stream == Stream::Stdout {
                &mut stdout
            } else {
                &mut stderr
            };
            out.push_str(line);
            out.push('\n');
        }
        Ok(ExecOutcome {
            status: reply.status,
            stdout,
            stderr,
        })
    }

    async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError> {
        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| InstanceError::Op("the fake instance's state is poisoned".into()))?;
        match op {
            FileOp::Write { path, content, .. } => {
                scratch.insert(path.clone(), content.clone());
                Ok(FileOpOutput::None)
            }
            FileOp::DeleteFile { path } => {
                scratch.remove(path);
                Ok(FileOpOutput::None)
            }
            FileOp::DeleteFolder { path, .. } => {
                let prefix = format!("{}/", path.trim_end_matches('/'));
                scratch.retain(|k, _| !k.starts_with(&prefix));
                Ok(FileOpOutput::None)
            }
            FileOp::ReadFile { path, .. } => match self.find(path) {
                Some(p) => std::fs::read_to_string(&p)
                    .map(FileOpOutput::Text)
                    .map_err(|e| InstanceError::io(format!("reading {}", p.display()), e)),
                None => Err(InstanceError::Op(format!("{path} does not exist"))),
            },
            FileOp::Stat { path } => Ok(FileOpOutput::Kind(match self.find(path) {
                None => PathKind::Missing,
                Some(p) if p.is_dir() => PathKind::Folder,
                Some(_) => PathKind::File,
            })),
            other => Err(InstanceError::Unsupported(format!(
                "the fake instance does not do {other:?}"
            ))),
        }
    }

    async fn put_file(&self, host_src: &Path, dest: &str, _mode: u32) -> Result<(), InstanceError> {
        let content = std::fs::read(host_src)
            .map_err(|e| InstanceError::io(format!("reading {}", host_src.display()), e))?;
        self.write(dest, &content)
    }

    async fn get_file(&self, src: &str, host_dest: &Path) -> Result<(), InstanceError> {
        let p = self
            .find(src)
            .ok_or_else(|| InstanceError::Op(format!("{src} does not exist")))?;
        std::fs::copy(&p, host_dest)
            .map(|_| ())
            .map_err(|e| InstanceError::io(format!("copying {}", p.display()), e))
    }

    fn scratch_dir(&self) -> String {
        "/run/kiln".into()
    }

    fn can_reboot(&self) -> bool {
        false
    }

    async fn reboot(&self) -> Result<(), InstanceError> {
        Err(InstanceError::Unsupported(
            "a fake instance does not reboot".into(),
        ))
    }

    async fn stop(&self) -> Result<(), InstanceError> {
        Ok(())
    }
}

#[async_trait]
impl Launched for FakeInstance {
    fn builder_kind(&self) -> BuilderKind {
        self.kind
    }

    fn boot(&self) -> Option<Boot> {
        (self.kind == BuilderKind::Vm).then_some(self.boot)
    }

    fn console_log(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("console.log"))
    }

    fn written_disk(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("overlay.qcow2"))
    }

    async fn keep(&self, _into: &Path) -> Result<Kept, InstanceError> {
        Err(InstanceError::Unsupported(
            "a fake instance cannot be kept".into(),
        ))
    }
}
