//! Running documents on an instance, with AWSTOE's semantics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Local;
use kiln_instance::fileops::{FileOp, FileOpOutput, HashAlgorithm, PathKind};
use kiln_instance::{ExecRequest, Instance, InstanceKind};
use kiln_s3::S3Client;
use kiln_yaml::{Node, NodeKind, Scalar, Span};
use serde_json::{Map as JsonMap, Value};
use tokio::sync::OnceCell;

use crate::action::Action;
use crate::condition;
use crate::document::*;
use crate::events::{Event, Observer, Silent, StepRef};
use crate::load::for_iterations;
use crate::loader::{DocumentLoader, Resolved};
use crate::report::*;
use crate::template::{self, LoopField, Reference, Side};

/// Deepest ExecuteDocument nesting (three levels below the top document).
pub const MAX_NESTING: usize = 3;

/// Most reboots one step may ask for in a row (exit code 194) before kiln gives up.
pub const MAX_REBOOTS_PER_STEP: u32 = 10;

/// Why a step (or one attempt of it) failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong, for the user.
    pub message: String,
    /// Whether another attempt could succeed (a bad input cannot).
    pub retryable: bool,
}

impl Failure {
    /// A failure another attempt might not repeat.
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<kiln_instance::InstanceError> for Failure {
    fn from(e: kiln_instance::InstanceError) -> Self {
        Failure::retryable(e.to_string())
    }
}

/// One document to run, with the parameters given for it.
#[derive(Debug, Clone)]
pub struct DocumentRun {
    /// The document.
    pub resolved: Resolved,
    /// Parameter values given by the caller (names the document lacks are ignored).
    pub parameters: Vec<(String, String)>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Documents, run one after the other.
    pub documents: Vec<DocumentRun>,
    /// Phases to run (in each document's own order); all when `None`.
    pub phases: Option<Vec<String>>,
    /// Execution id, shown in reports and logs.
    pub execution_id: String,
}

/// Facts about the instance, read once when a document asks for them.
#[derive(Debug, Clone, Default)]
struct Facts {
    os_name: String,
    os_version: String,
    hostname: String,
}

/// Runs component documents on an instance.
pub struct Engine {
    pub(crate) instance: Arc<dyn Instance>,
    pub(crate) loader: DocumentLoader,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) s3: Option<Arc<S3Client>>,
    pub(crate) env: Vec<(String, String)>,
    facts: OnceCell<Facts>,
    /// What `{{ env:NAME }}` sees, built once.
    env_view: std::sync::OnceLock<Arc<HashMap<String, String>>>,
}

/// The state of one document while it runs.
pub(crate) struct DocRun<'a> {
    pub(crate) doc: &'a Document,
    pub(crate) identity: &'a str,
    pub(crate) vars: HashMap<String, String>,
    pub(crate) done: HashMap<(String, String), StepReport>,
    pub(crate) depth: usize,
    pub(crate) chain: Vec<String>,
    pub(crate) execution_id: String,
    pub(crate) scratch: String,
    /// Whether some step refers to `{{ context:osName }}` and friends (read from the instance).
    pub(crate) needs_facts: bool,
}

/// The current loop iteration of a step.
#[derive(Debug, Clone)]
pub(crate) struct LoopCtx {
    pub(crate) name: Option<String>,
    pub(crate) index: usize,
    pub(crate) value: String,
}

/// What an action produced.
pub(crate) enum Outcome {
    /// It finished; one output object per input item.
    Done {
        outputs: Vec<JsonMap<String, Value>>,
        nested: Option<ExecutionReport>,
    },
    /// It asked for a reboot and to be run again (exit code 194).
    Reboot,
}

impl Outcome {
    pub(crate) fn outputs(outputs: Vec<JsonMap<String, Value>>) -> Self {
        Outcome::Done {
            outputs,
            nested: None,
        }
    }

    pub(crate) fn nothing() -> Self {
        Outcome::outputs(Vec::new())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn run_status(s: StepStatus) -> RunStatus {
    match s {
        StepStatus::Success | StepStatus::Skipped => RunStatus::Success,
        StepStatus::IgnoredFailure => RunStatus::SuccessWithIgnoredFailure,
        StepStatus::Failed => RunStatus::Failed,
    }
}

impl Engine {
    /// An engine for an instance, loading nested documents from local files only.
    pub fn new(instance: Arc<dyn Instance>) -> Self {
        Engine {
            instance,
            loader: DocumentLoader::new(),
            observer: Arc::new(Silent),
            s3: None,
            env: Vec::new(),
            facts: OnceCell::new(),
            env_view: std::sync::OnceLock::new(),
        }
    }

    /// Where nested documents come from.
    pub fn with_loader(mut self, loader: DocumentLoader) -> Self {
        self.loader = loader;
        self
    }

    /// Who hears about progress.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The S3 client for S3Download, S3Upload and `s3://` documents.
    pub fn with_s3(mut self, s3: Arc<S3Client>) -> Self {
        self.s3 = Some(s3);
        self
    }

    /// Environment variables every ExecuteBash and ExecuteBinary step gets.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// The instance steps run on.
    pub fn instance(&self) -> &Arc<dyn Instance> {
        &self.instance
    }

    /// Runs documents and reports what happened. Never panics on document content; every
    /// problem ends up in the report.
    pub async fn run(&self, spec: RunSpec) -> ExecutionReport {
        // Unique even when two runs share an execution id: a run removes its scratch folder.
        let scratch = format!(
            "{}/kiln-toe-{}-{}",
            self.instance.scratch_dir().trim_end_matches('/'),
            spec.execution_id,
            uuid::Uuid::new_v4().simple()
        );
        let report = self
            .run_documents(
                &spec.documents,
                spec.phases.as_deref(),
                spec.execution_id.clone(),
                scratch.clone(),
                0,
                Vec::new(),
            )
            .await;
        let _ = self
            .instance
            .file_op(&FileOp::DeleteFolder {
                path: scratch,
                force: true,
            })
            .await;
        report
    }

    fn run_documents<'a>(
        &'a self,
        documents: &'a [DocumentRun],
        phases: Option<&'a [String]>,
        execution_id: String,
        scratch: String,
        depth: usize,
        chain: Vec<String>,
    ) -> BoxFuture<'a, ExecutionReport> {
        Box::pin(async move {
            let start = Local::now();
            let mut report = ExecutionReport {
                execution_id: execution_id.clone(),
                status: RunStatus::Success,
                start_time: start,
                end_time: start,
                failure_message: String::new(),
                executed_step_count: 0,
                failed_step_count: 0,
                ignored_failed_step_count: 0,
                log_url: String::new(),
                documents: Vec::new(),
            };
            for d in documents {
                let mut chain = chain.clone();
                chain.push(d.resolved.identity.clone());
                let (doc_report, aborted) = self
                    .run_document(d, phases, &execution_id, &scratch, depth, chain)
                    .await;
                report.status = report.status.combine(doc_report.status);
                if report.failure_message.is_empty() && !doc_report.failure_message.is_empty() {
                    report.failure_message = doc_report.failure_message.clone();
                }
                report.documents.push(doc_report);
                if aborted {
                    break;
                }
            }
            report.end_time = Local::now();
            report.count();
            report
        })
    }

    /// Runs one document; the flag says whether a step aborted the run.
    async fn run_document(
        &self,
        d: &DocumentRun,
        phases: Option<&[String]>,
        execution_id: &str,
        scratch: &str,
        depth: usize,
        chain: Vec<String>,
    ) -> (DocumentReport, bool) {
        let doc = &d.resolved.loaded.document;
        let file = doc.source.name.clone();
        self.observer.event(&Event::DocumentStarted {
            depth,
            file: &file,
            name: &doc.name,
        });
        let start = Local::now();
        let mut report = DocumentReport {
            name: doc.name.clone(),
            file_path: file.clone(),
            description: doc.description.clone(),
            status: RunStatus::Success,
            start_time: start,
            end_time: start,
            failure_message: String::new(),
            phases: Vec::new(),
        };
        let vars = match self.variables(doc, &d.parameters) {
            Ok(v) => v,
            Err(msg) => {
                report.status = RunStatus::Failed;
                report.failure_message = msg;
                report.end_time = Local::now();
                self.observer.event(&Event::DocumentFinished {
                    depth,
                    report: &report,
                });
                return (report, true);
            }
        };
        let mut run = DocRun {
            doc,
            identity: &d.resolved.identity,
            vars,
            done: HashMap::new(),
            depth,
            chain,
            execution_id: execution_id.to_string(),
            scratch: scratch.to_string(),
            needs_facts: doc
                .phases
                .iter()
                .flat_map(|p| p.steps.iter())
                .any(|s| s.inputs.as_ref().is_some_and(mentions_facts)),
        };
        let mut aborted = false;
        for phase in &doc.phases {
            if phases.is_some_and(|ps| !ps.iter().any(|p| p == &phase.name)) {
                continue;
            }
            let (phase_report, stop) = self.run_phase(&mut run, phase).await;
            report.status = report.status.combine(phase_report.status);
            if report.failure_message.is_empty() && !phase_report.failure_message.is_empty() {
                report.failure_message = phase_report.failure_message.clone();
            }
            report.phases.push(phase_report);
            if stop {
                aborted = true;
                break;
            }
        }
        report.end_time = Local::now();
        self.observer.event(&Event::DocumentFinished {
            depth,
            report: &report,
        });
        (report, aborted)
    }

    /// Parameter values (given, else default) and constants.
    fn variables(
        &self,
        doc: &Document,
        given: &[(String, String)],
    ) -> Result<HashMap<String, String>, String> {
        let missing = doc.missing_parameters(given);
        if !missing.is_empty() {
            return Err(format!(
                "{}: {} and no value was given; pass --parameters {}",
                doc.source.name,
                crate::document::no_default_phrase(&missing),
                missing
                    .iter()
                    .map(|m| format!("{m}=VALUE"))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let mut vars = HashMap::new();
        for p in &doc.parameters {
            let value = given
                .iter()
                .rev()
                .find(|(k, _)| k == &p.name)
                .map(|(_, v)| v.clone())
                .or_else(|| p.default.clone());
            if let Some(v) = value {
                vars.insert(p.name.clone(), v);
            }
        }
        for c in &doc.constants {
            if given.iter().any(|(k, _)| k == &c.name) {
                self.observer.event(&Event::Warning {
                    message: &format!(
                        "{}: `{}` is a constant and cannot be overridden; the given value is ignored",
                        doc.source.name, c.name
                    ),
                });
            }
            vars.insert(c.name.clone(), c.value.clone());
        }
        for (k, _) in given {
            if !vars.contains_key(k) {
                self.observer.event(&Event::Warning {
                    message: &format!(
                        "{}: the document has no parameter `{k}`; the given value is ignored",
                        doc.source.name
                    ),
                });
            }
        }
        Ok(vars)
    }

    async fn run_phase(&self, run: &mut DocRun<'_>, phase: &Phase) -> (PhaseReport, bool) {
        let doc_name = run.doc.source.name.clone();
        self.observer.event(&Event::PhaseStarted {
            depth: run.depth,
            document: &doc_name,
            phase: &phase.name,
        });
        let start = Local::now();
        let mut report = PhaseReport {
            name: phase.name.clone(),
            status: RunStatus::Success,
            start_time: start,
            end_time: start,
            failure_message: String::new(),
            steps: Vec::new(),
        };
        let windows: Vec<String> = phase
            .steps
            .iter()
            .filter(|s| s.action.windows_only())
            .map(|s| {
                format!(
                    "step `{}` ({}:{}) uses {}",
                    s.name, doc_name, s.span.start, s.action
                )
            })
            .collect();
        if !windows.is_empty() {
            report.status = RunStatus::Failed;
            report.failure_message = format!(
                "phase `{}` was not started: {} {} Windows-only and cannot run on Linux",
                phase.name,
                windows.join("; "),
                if windows.len() > 1 { "are" } else { "is" }
            );
            report.end_time = Local::now();
            self.observer.event(&Event::PhaseFinished {
                depth: run.depth,
                report: &report,
            });
            return (report, true);
        }
        let mut stop = false;
        for step in &phase.steps {
            let step_report = self.run_step(run, phase, step).await;
            report.status = report.status.combine(run_status(step_report.status));
            if step_report.status == StepStatus::Failed && report.failure_message.is_empty() {
                report.failure_message = format!(
                    "step `{}` ({}) failed: {}",
                    step.name, step.action, step_report.failure_message
                );
            }
            let abort =
                step_report.status == StepStatus::Failed && step.on_failure == OnFailure::Abort;
            run.done
                .insert((phase.name.clone(), step.name.clone()), step_report.clone());
            report.steps.push(step_report);
            if abort {
                stop = true;
                break;
            }
        }
        report.end_time = Local::now();
        self.observer.event(&Event::PhaseFinished {
            depth: run.depth,
            report: &report,
        });
        (report, stop)
    }

    async fn run_step(&self, run: &DocRun<'_>, phase: &Phase, step: &Step) -> StepReport {
        let sref = StepRef {
            depth: run.depth,
            document: &run.doc.source.name,
            phase: &phase.name,
            step: &step.name,
            action: step.action,
        };
        self.observer.event(&Event::StepStarted(sref));
        let start = Local::now();
        let mut report = StepReport {
            name: step.name.clone(),
            action: step.action.name().to_string(),
            status: StepStatus::Success,
            failure_message: String::new(),
            timeout_seconds: step.timeout_seconds.map_or(-1, |t| t as i64),
            on_failure: step.on_failure.name().to_string(),
            max_attempts: step.max_attempts,
            attempts: 0,
            start_time: start,
            end_time: start,
            inputs: "[]".into(),
            outputs: "[]".into(),
            looping: None,
            detailed_output: None,
            input_values: Vec::new(),
            output_values: Vec::new(),
        };
        let mut failure: Option<Failure> = None;
        let mut execute = true;
        if let Some(clause) = &step.condition {
            let resolver = self.resolver(run, &phase.name, &step.name, None).await;
            match self.eval(&clause.condition, &resolver, run).await {
                Ok(value) => {
                    let action = if value { clause.then } else { clause.otherwise };
                    match action {
                        StepAction::Execute => {}
                        StepAction::Skip => execute = false,
                        StepAction::Abort => {
                            failure = Some(Failure::fatal(format!(
                                "its `if` condition is {value}, and `{}` says Abort",
                                if value { "then" } else { "else" }
                            )));
                        }
                    }
                }
                Err(f) => failure = Some(f),
            }
        }
        if !execute {
            report.status = StepStatus::Skipped;
        } else if failure.is_none() {
            for attempt in 1..=step.max_attempts {
                report.attempts = attempt;
                let fut = self.attempt(run, phase, step, sref, &mut report);
                let result = match step.timeout_seconds {
                    None => fut.await,
                    Some(secs) => {
                        match tokio::time::timeout(Duration::from_secs(secs), fut).await {
                            Ok(r) => r,
                            Err(_) => Err(Failure::retryable(if step.looping.is_some() {
                                format!("the loop run timed out after {secs} s (timeoutSeconds)")
                            } else {
                                format!("timed out after {secs} s (timeoutSeconds); every process it started was killed")
                            })),
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        failure = None;
                        break;
                    }
                    Err(f) => {
                        let last = attempt == step.max_attempts || !f.retryable;
                        if !last {
                            self.observer.event(&Event::Note {
                                step: sref,
                                message: &format!(
                                    "attempt {attempt} of {} failed: {}; trying again",
                                    step.max_attempts, f.message
                                ),
                            });
                        }
                        let stop = !f.retryable;
                        failure = Some(f);
                        if stop {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            report.failure_message = f.message;
            report.status = if step.on_failure == OnFailure::Ignore {
                StepStatus::IgnoredFailure
            } else {
                StepStatus::Failed
            };
        }
        report.inputs = Value::from(report.input_values.clone()).to_string();
        report.outputs = Value::from(
            report
                .output_values
                .iter()
                .cloned()
                .map(Value::Object)
                .collect::<Vec<_>>(),
        )
        .to_string();
        report.end_time = Local::now();
        self.observer.event(&Event::StepFinished {
            step: sref,
            report: &report,
        });
        report
    }

    /// One attempt of a step: every loop iteration (or the single run), with reboots.
    async fn attempt(
        &self,
        run: &DocRun<'_>,
        phase: &Phase,
        step: &Step,
        sref: StepRef<'_>,
        report: &mut StepReport,
    ) -> Result<(), Failure> {
        let base = self.resolver(run, &phase.name, &step.name, None).await;
        let iterations: Vec<Option<LoopCtx>> = match &step.looping {
            None => vec![None],
            Some(l) => self
                .loop_values(l, &base, &run.doc.source)?
                .into_iter()
                .enumerate()
                .map(|(index, value)| {
                    Some(LoopCtx {
                        name: l.name.clone(),
                        index,
                        value,
                    })
                })
                .collect(),
        };
        let total = iterations.len();
        report.looping = step.looping.as_ref().map(|l| LoopReport {
            name: l.name.clone(),
            iterations: total,
            completed_iterations: 0,
            failed_iteration: None,
        });
        let mut all_outputs: Vec<Vec<JsonMap<String, Value>>> = Vec::new();
        for lctx in iterations {
            if let Some(l) = &lctx {
                self.observer.event(&Event::Note {
                    step: sref,
                    message: &format!("iteration {} of {total}: {}", l.index + 1, l.value),
                });
            }
            let resolver = Resolver {
                looping: lctx.clone(),
                ..base.clone()
            };
            let mut reboots = 0;
            let outcome = loop {
                let result = async {
                    let inputs = match &step.inputs {
                        Some(node) => Some(expand_node(node, &resolver, &run.doc.source)?),
                        None => None,
                    };
                    report.input_values = inputs_json(step.action, inputs.as_ref());
                    self.action(run, step, sref, inputs.as_ref(), &resolver)
                        .await
                }
                .await;
                match result {
                    Ok(Outcome::Reboot) => {
                        reboots += 1;
                        if !self.instance.can_reboot() {
                            break Err(Failure::fatal(format!(
                                "it exited with code 194 to ask for a reboot, but the {} instance cannot reboot; run it in a VM (builder: vm)",
                                self.instance.kind()
                            )));
                        }
                        if reboots > MAX_REBOOTS_PER_STEP {
                            break Err(Failure::fatal(format!(
                                "it asked for a reboot (exit code 194) {MAX_REBOOTS_PER_STEP} times in a row; giving up (is it idempotent?)"
                            )));
                        }
                        self.observer.event(&Event::Note {
                            step: sref,
                            message: "exit code 194: rebooting the instance, then running this step again",
                        });
                        if let Err(e) = self.instance.reboot().await {
                            break Err(Failure::fatal(format!("reboot failed: {e}")));
                        }
                    }
                    other => break other,
                }
            };
            match outcome {
                Ok(Outcome::Done { outputs, nested }) => {
                    if let Some(n) = nested {
                        let failed = !n.status.ok();
                        let message = n.failure_message.clone();
                        report.output_values = outputs.clone();
                        report.detailed_output = Some(vec![n]);
                        if failed {
                            return Err(Failure::fatal(format!(
                                "the nested document failed: {message}"
                            )));
                        }
                    }
                    all_outputs.push(outputs);
                    if let Some(l) = report.looping.as_mut() {
                        l.completed_iterations += 1;
                    }
                }
                Ok(Outcome::Reboot) => unreachable!("reboots are handled above"),
                Err(mut f) => {
                    if let (Some(l), Some(ctx)) = (report.looping.as_mut(), &lctx) {
                        l.failed_iteration = Some(ctx.index);
                        f.message = format!(
                            "iteration {} ({}) failed: {}",
                            ctx.index, ctx.value, f.message
                        );
                    }
                    return Err(f);
                }
            }
        }
        report.output_values = consolidate(all_outputs);
        Ok(())
    }

    async fn facts(&self) -> Facts {
        self.facts
            .get_or_init(|| async {
                let mut facts = Facts::default();
                if let Ok(FileOpOutput::Text(t)) = self
                    .instance
                    .file_op(&FileOp::ReadFile {
                        path: "/etc/os-release".into(),
                        encoding: Default::default(),
                    })
                    .await
                {
                    for line in t.lines() {
                        if let Some((k, v)) = line.split_once('=') {
                            let v = v.trim_matches('"').to_string();
                            match k {
                                "NAME" => facts.os_name = v,
                                "VERSION_ID" => facts.os_version = v,
                                _ => {}
                            }
                        }
                    }
                }
                let req = ExecRequest {
                    program: "uname".into(),
                    args: vec!["-n".into()],
                    timeout: Some(Duration::from_secs(30)),
                    ..ExecRequest::default()
                };
                if let Ok(out) = self.instance.exec(&req, &mut kiln_instance::Discard).await {
                    facts.hostname = out.stdout.trim().to_string();
                }
                facts
            })
            .await
            .clone()
    }

    /// A resolver for a step (without loop variables).
    pub(crate) async fn resolver(
        &self,
        run: &DocRun<'_>,
        phase: &str,
        step: &str,
        looping: Option<LoopCtx>,
    ) -> Resolver {
        let facts = if run.needs_facts {
            Some(self.facts().await)
        } else {
            None
        };
        let env = self
            .env_view
            .get_or_init(|| {
                let mut env: HashMap<String, String> = HashMap::new();
                // On the host, steps see kiln's own environment; elsewhere only what kiln sets.
                if self.instance.kind() == InstanceKind::Host {
                    env.extend(std::env::vars());
                }
                env.extend(self.env.iter().cloned());
                Arc::new(env)
            })
            .clone();
        Resolver {
            vars: Arc::new(run.vars.clone()),
            done: Arc::new(
                run.done
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            (v.status, v.input_values.clone(), v.output_values.clone()),
                        )
                    })
                    .collect(),
            ),
            env,
            facts,
            execution_id: run.execution_id.clone(),
            phase: phase.to_string(),
            step: step.to_string(),
            looping,
        }
    }

    fn loop_values(
        &self,
        l: &Loop,
        resolver: &Resolver,
        source: &Source,
    ) -> Result<Vec<String>, Failure> {
        match &l.kind {
            LoopKind::For {
                start,
                end,
                update_by,
            } => {
                let int = |n: &Node, what: &str| -> Result<i64, Failure> {
                    let text = expand_text(n, resolver, source)?;
                    text.trim().parse::<i64>().map_err(|_| {
                        Failure::fatal(format!(
                            "{}:{}: loop `{what}` must be an integer, got `{text}`",
                            source.name, n.span.start
                        ))
                    })
                };
                let values = for_iterations(
                    int(start, "start")?,
                    int(end, "end")?,
                    int(update_by, "updateBy")?,
                )
                .map_err(|m| Failure::fatal(format!("{}:{}: {m}", source.name, l.span.start)))?;
                Ok(values.into_iter().map(|v| v.to_string()).collect())
            }
            LoopKind::ForEach(items) => items
                .iter()
                .map(|n| expand_text(n, resolver, source))
                .collect(),
            LoopKind::ForEachDelimited { list, delimiter } => {
                let text = expand_text(list, resolver, source)?;
                Ok(text
                    .split(*delimiter)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect())
            }
        }
    }

    /// Evaluates a condition.
    pub(crate) fn eval<'a>(
        &'a self,
        cond: &'a Condition,
        resolver: &'a Resolver,
        run: &'a DocRun<'_>,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            let source = &run.doc.source;
            match cond {
                Condition::And(parts) => {
                    for p in parts {
                        if !self.eval(p, resolver, run).await? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
                Condition::Or(parts) => {
                    for p in parts {
                        if self.eval(p, resolver, run).await? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                Condition::Not(inner) => Ok(!self.eval(inner, resolver, run).await?),
                Condition::Compare {
                    op,
                    baseline,
                    operand,
                    ..
                } => {
                    let b = expand_text(baseline, resolver, source)?;
                    let v = match operand {
                        Some(o) => expand_text(o, resolver, source)?,
                        None => String::new(),
                    };
                    self.compare(*op, &b, &v).await
                }
            }
        })
    }

    async fn compare(&self, op: CompareOp, baseline: &str, value: &str) -> Result<bool, Failure> {
        let algorithm = match op {
            CompareOp::BinaryExists => {
                let req = ExecRequest {
                    program: "sh".into(),
                    args: vec![
                        "-c".into(),
                        "command -v -- \"$1\" >/dev/null 2>&1".into(),
                        "sh".into(),
                        baseline.to_string(),
                    ],
                    timeout: Some(Duration::from_secs(60)),
                    ..ExecRequest::default()
                };
                let out = self
                    .instance
                    .exec(&req, &mut kiln_instance::Discard)
                    .await?;
                return Ok(out.status.success());
            }
            CompareOp::FileExists | CompareOp::FolderExists => {
                let kind = self
                    .instance
                    .file_op(&FileOp::Stat {
                        path: baseline.to_string(),
                    })
                    .await?;
                let want = if op == CompareOp::FileExists {
                    PathKind::File
                } else {
                    PathKind::Folder
                };
                return Ok(kind == FileOpOutput::Kind(want));
            }
            CompareOp::FileMD5Equals => HashAlgorithm::Md5,
            CompareOp::FileSHA1Equals => HashAlgorithm::Sha1,
            CompareOp::FileSHA256Equals => HashAlgorithm::Sha256,
            CompareOp::FileSHA512Equals => HashAlgorithm::Sha512,
            _ => return Ok(condition::compare(op, baseline, value)),
        };
        match self
            .instance
            .file_op(&FileOp::Hash {
                path: value.to_string(),
                algorithm,
            })
            .await
        {
            Ok(FileOpOutput::Text(digest)) => Ok(digest.eq_ignore_ascii_case(baseline.trim())),
            _ => Ok(false),
        }
    }

    /// Runs a nested document for ExecuteDocument.
    pub(crate) async fn run_nested(
        &self,
        run: &DocRun<'_>,
        reference: &str,
        bucket_owner: Option<&str>,
        phases: Option<Vec<String>>,
        parameters: Vec<(String, String)>,
    ) -> Result<ExecutionReport, Failure> {
        if run.depth >= MAX_NESTING {
            return Err(Failure::fatal(format!(
                "documents nest at most {MAX_NESTING} levels deep; `{reference}` would be level {}",
                run.depth + 1
            )));
        }
        let resolved = self
            .loader
            .load(reference, run.doc.source.dir.as_deref(), bucket_owner)
            .await
            .map_err(|e| Failure::fatal(format!("cannot load `{reference}`:\n{e}")))?;
        if run.chain.contains(&resolved.identity) || resolved.identity == run.identity {
            return Err(Failure::fatal(format!(
                "`{reference}` is already running higher up in this chain of documents ({}); a document cannot run itself",
                run.chain.join(" -> ")
            )));
        }
        let docs = vec![DocumentRun {
            resolved,
            parameters,
        }];
        let id = uuid::Uuid::new_v4().to_string();
        let scratch = format!("{}/nested-{id}", run.scratch);
        Ok(self
            .run_documents(
                &docs,
                phases.as_deref(),
                id,
                scratch,
                run.depth + 1,
                run.chain.clone(),
            )
            .await)
    }
}

fn mentions_facts(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Scalar(s) => template::scan(&s.text).iter().any(|f| {
            matches!(&f.reference, Reference::Context(k) if matches!(k.as_str(), "osName" | "osVersion" | "hostname"))
        }),
        NodeKind::Seq(items) => items.iter().any(mentions_facts),
        NodeKind::Map(m) => m.entries.iter().any(|(_, v)| mentions_facts(v)),
    }
}

/// The outputs of a looped step: each key's values joined with newlines, item by item.
fn consolidate(per_iteration: Vec<Vec<JsonMap<String, Value>>>) -> Vec<JsonMap<String, Value>> {
    let mut iter = per_iteration.into_iter();
    let Some(mut acc) = iter.next() else {
        return Vec::new();
    };
    for outputs in iter {
        for (i, obj) in outputs.into_iter().enumerate() {
            if i >= acc.len() {
                acc.push(obj);
                continue;
            }
            for (k, v) in obj {
                let joined = match (acc[i].get(&k), &v) {
                    (Some(Value::String(a)), Value::String(b)) => {
                        Value::String(format!("{a}\n{b}"))
                    }
                    (Some(a), b) => Value::String(format!("{}\n{}", json_text(a), json_text(b))),
                    (None, _) => v.clone(),
                };
                acc[i].insert(k, joined);
            }
        }
    }
    acc
}

/// Text of a JSON value as it is substituted into a document.
pub(crate) fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn inputs_json(action: Action, inputs: Option<&Node>) -> Vec<Value> {
    let Some(node) = inputs else {
        return Vec::new();
    };
    match (action.schema().shape, node.as_seq()) {
        (crate::action::Shape::List, Some(items)) => items.iter().map(Node::to_json).collect(),
        (crate::action::Shape::List, None) => match node.as_map().and_then(|m| m.get("commands")) {
            Some(Node {
                kind: NodeKind::Seq(items),
                ..
            }) => items.iter().map(Node::to_json).collect(),
            _ => vec![node.to_json()],
        },
        _ => vec![node.to_json()],
    }
}

/// Resolves references while a step runs.
#[derive(Clone)]
pub(crate) struct Resolver {
    vars: Arc<HashMap<String, String>>,
    #[allow(clippy::type_complexity)]
    done: Arc<HashMap<(String, String), (StepStatus, Vec<Value>, Vec<JsonMap<String, Value>>)>>,
    env: Arc<HashMap<String, String>>,
    facts: Option<Facts>,
    execution_id: String,
    phase: String,
    step: String,
    looping: Option<LoopCtx>,
}

impl Resolver {
    fn resolve(&self, r: &Reference) -> Result<Option<String>, String> {
        Ok(match r {
            Reference::Variable(name) => self.vars.get(name).cloned(),
            Reference::Loop { name, field } => match &self.looping {
                Some(l) if name.is_none() || name == &l.name => Some(match field {
                    LoopField::Index => l.index.to_string(),
                    LoopField::Value => l.value.clone(),
                }),
                _ => None,
            },
            Reference::Chain {
                phase,
                step,
                side,
                index,
                key,
            } => {
                let expr = format!(
                    "{phase}.{step}.{}{}{}",
                    if *side == Side::Inputs {
                        "inputs"
                    } else {
                        "outputs"
                    },
                    index.map(|i| format!("[{i}]")).unwrap_or_default(),
                    key.as_ref().map(|k| format!(".{k}")).unwrap_or_default()
                );
                let Some((status, inputs, outputs)) = self.done.get(&(phase.clone(), step.clone()))
                else {
                    return Err(format!(
                        "`{{{{ {expr} }}}}`: step `{step}` of phase `{phase}` has not run in this execution (was its phase selected with --phases?)"
                    ));
                };
                if *status == StepStatus::Skipped {
                    return Err(format!(
                        "`{{{{ {expr} }}}}`: step `{step}` was skipped by its `if` condition"
                    ));
                }
                let i = index.unwrap_or(0);
                let item: Option<Value> = match side {
                    Side::Inputs => inputs.get(i).cloned(),
                    Side::Outputs => outputs.get(i).cloned().map(Value::Object),
                };
                let Some(item) = item else {
                    return Err(format!(
                        "`{{{{ {expr} }}}}`: step `{step}` has no {} item {i}",
                        if *side == Side::Inputs {
                            "input"
                        } else {
                            "output"
                        }
                    ));
                };
                match key {
                    None => Some(json_text(&item)),
                    Some(k) => match item.get(k) {
                        Some(v) => Some(json_text(v)),
                        None => {
                            return Err(format!(
                                "`{{{{ {expr} }}}}`: step `{step}` has no {} `{k}`",
                                if *side == Side::Inputs {
                                    "input"
                                } else {
                                    "output"
                                }
                            ))
                        }
                    },
                }
            }
            Reference::Env(name) => Some(self.env.get(name).cloned().unwrap_or_default()),
            Reference::Context(key) => {
                let facts = self.facts.clone().unwrap_or_default();
                let now = chrono::Utc::now();
                Some(match key.as_str() {
                    "executionId" => self.execution_id.clone(),
                    "osPlatform" => "linux".into(),
                    "osName" => facts.os_name,
                    "osVersion" => facts.os_version,
                    "date" => now.format("%Y-%m-%d").to_string(),
                    "dateTime" => now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "uuid" => uuid::Uuid::new_v4().to_string(),
                    "hostname" => facts.hostname,
                    "phase" => self.phase.clone(),
                    "step" => self.step.clone(),
                    _ => return Ok(None),
                })
            }
            Reference::Aws(_) => None,
        })
    }
}

fn located(source: &Source, span: Span, msg: String) -> Failure {
    Failure::fatal(format!("{}:{}: {msg}", source.name, span.start))
}

/// Expands references in one scalar's text.
pub(crate) fn expand_text(node: &Node, r: &Resolver, source: &Source) -> Result<String, Failure> {
    let Some(s) = node.as_scalar() else {
        return Err(located(
            source,
            node.span,
            format!("expected a single value, found {}", node.type_name()),
        ));
    };
    template::expand(&s.text, |reference| r.resolve(reference))
        .map_err(|m| located(source, node.span, m))
}

/// Expands references in every scalar of a tree.
pub(crate) fn expand_node(node: &Node, r: &Resolver, source: &Source) -> Result<Node, Failure> {
    Ok(Node {
        kind: match &node.kind {
            NodeKind::Scalar(s) => {
                if template::scan(&s.text).is_empty() {
                    NodeKind::Scalar(s.clone())
                } else {
                    NodeKind::Scalar(Scalar {
                        text: expand_text(node, r, source)?,
                        style: s.style,
                    })
                }
            }
            NodeKind::Seq(items) => NodeKind::Seq(
                items
                    .iter()
                    .map(|i| expand_node(i, r, source))
                    .collect::<Result<_, _>>()?,
            ),
            NodeKind::Map(m) => NodeKind::Map(kiln_yaml::Map {
                entries: m
                    .entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), expand_node(v, r, source)?)))
                    .collect::<Result<_, Failure>>()?,
            }),
        },
        span: node.span,
        flow_source: node.flow_source.clone(),
    })
}
