//! Helpers shared by the engine tests: write a document, run it on the host, look at the report.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_instance::host::HostInstance;
use kiln_instance::{
    ExecOutcome, ExecRequest, FileOp, FileOpOutput, Instance, InstanceError, InstanceKind,
    OutputSink,
};
use kiln_toe::events::{Event, Observer};
use kiln_toe::loader::DocumentLoader;
use kiln_toe::report::{ExecutionReport, StepReport};
use kiln_toe::{DocumentRun, Engine, RunSpec};

/// Remembers warnings, notes and output lines.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl Observer for Recorder {
    fn event(&self, e: &Event<'_>) {
        let line = match e {
            Event::Warning { message } => format!("warning: {message}"),
            Event::Note { step, message } => format!("note {}: {message}", step.step),
            Event::Output { step, line, .. } => format!("output {}: {line}", step.step),
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A host instance that pretends to reboot (counts reboots), to test the engine's handling of
/// exit code 194 and the Reboot action; real reboots are tested with VM instances.
pub struct Rebootable {
    pub inner: HostInstance,
    pub reboots: AtomicU32,
}

#[async_trait]
impl Instance for Rebootable {
    fn id(&self) -> &str {
        "rebootable-host"
    }
    fn kind(&self) -> InstanceKind {
        InstanceKind::Host
    }
    async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError> {
        self.inner.exec(req, sink).await
    }
    async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError> {
        self.inner.file_op(op).await
    }
    async fn put_file(&self, src: &Path, dest: &str, mode: u32) -> Result<(), InstanceError> {
        self.inner.put_file(src, dest, mode).await
    }
    async fn get_file(&self, src: &str, dest: &Path) -> Result<(), InstanceError> {
        self.inner.get_file(src, dest).await
    }
    fn scratch_dir(&self) -> String {
        self.inner.scratch_dir()
    }
    fn can_reboot(&self) -> bool {
        true
    }
    async fn reboot(&self) -> Result<(), InstanceError> {
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn stop(&self) -> Result<(), InstanceError> {
        Ok(())
    }
}

/// A scratch folder with documents in it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub recorder: Arc<Recorder>,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            recorder: Arc::new(Recorder::default()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn engine(&self) -> Engine {
        Engine::new(Arc::new(HostInstance::new(self.path()))).with_observer(self.recorder.clone())
    }

    pub async fn run_with(
        &self,
        engine: &Engine,
        doc: &str,
        params: &[(&str, &str)],
        phases: Option<&[&str]>,
    ) -> ExecutionReport {
        let path = self.write("doc.yaml", doc);
        let resolved = DocumentLoader::new()
            .load(path.to_str().unwrap(), None, None)
            .await
            .unwrap_or_else(|e| panic!("document does not load:\n{e}"));
        engine
            .run(RunSpec {
                documents: vec![DocumentRun {
                    resolved,
                    parameters: params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }],
                phases: phases.map(|p| p.iter().map(|s| s.to_string()).collect()),
                execution_id: "test".into(),
            })
            .await
    }

    pub async fn run(&self, doc: &str) -> ExecutionReport {
        self.run_with(&self.engine(), doc, &[], None).await
    }
}

/// A step of the report, by phase and name.
pub fn step<'a>(r: &'a ExecutionReport, phase: &str, name: &str) -> &'a StepReport {
    r.documents
        .iter()
        .flat_map(|d| d.phases.iter())
        .filter(|p| p.name == phase)
        .flat_map(|p| p.steps.iter())
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {phase}/{name} in the report"))
}

/// An output of a step (first output object).
pub fn output(s: &StepReport, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&s.outputs).unwrap();
    v[0][key].as_str().unwrap_or_default().to_string()
}

pub fn has_step(r: &ExecutionReport, phase: &str, name: &str) -> bool {
    r.documents
        .iter()
        .flat_map(|d| d.phases.iter())
        .filter(|p| p.name == phase)
        .flat_map(|p| p.steps.iter())
        .any(|s| s.name == name)
}

pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !kiln_instance::process::parse_stat(&s).is_some_and(|p| p.zombie),
        Err(_) => false,
    }
}
