//! Parsing and validating component documents.
//!
//! Every rule of the AWSTOE user guide is checked here, before anything runs, and every broken
//! rule is reported (not only the first), each with its file, line and column, the phase and
//! step it is in, and what to do about it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use kiln_yaml::{Diagnostic, Map, Node, NodeKind, Span};

use crate::action::{did_you_mean, Action, Field, Kind, Shape, ALL_ACTIONS};
use crate::document::*;
use crate::template::{self, Reference, Side, CONTEXT_KEYS};

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// Most iterations a loop may produce.
pub const MAX_LOOP_ITERATIONS: u64 = 10_000;

/// Most attempts a step may ask for.
pub const MAX_ATTEMPTS: i64 = 1000;

/// Problems found in one document.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The document they are about.
    pub source: Arc<Source>,
    /// Errors and warnings in document order.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// True when any item is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            write!(f, "{}", d.render(&self.source.name, &self.source.text))?;
        }
        Ok(())
    }
}

/// A valid document and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The document.
    pub document: Document,
    /// Warnings (no errors).
    pub warnings: Diagnostics,
}

/// Reads and validates a document file.
pub fn load_file(path: &Path) -> Result<Loaded, Diagnostics> {
    let name = path.display().to_string();
    let dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".").to_path_buf()
        } else {
            p.to_path_buf()
        }
    });
    let fail = |msg: String, hint: &str| Diagnostics {
        source: Arc::new(Source {
            name: name.clone(),
            text: String::new(),
            dir: dir.clone(),
        }),
        items: vec![Diagnostic::error(None, msg).with_hint(hint)],
    };
    let bytes = std::fs::read(path).map_err(|e| {
        fail(
            format!("cannot read the document: {e}"),
            "check the path given with --document",
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            format!(
                "the document is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            "save it as UTF-8",
        )
    })?;
    parse(Source { name, text, dir })
}

/// Parses and validates a document text.
pub fn parse(source: Source) -> Result<Loaded, Diagnostics> {
    let source = Arc::new(source);
    let mut c = Checker::default();
    let document = if source.text.len() > MAX_DOCUMENT_BYTES {
        c.push(Diagnostic::error(
            None,
            format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                source.text.len()
            ),
        ));
        None
    } else {
        match kiln_yaml::parse(&source.text) {
            Err(d) => {
                c.push(d);
                None
            }
            Ok(parsed) => {
                c.diags.extend(parsed.diagnostics);
                c.document(&parsed.root, &source)
            }
        }
    };
    c.diags
        .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
    let diagnostics = Diagnostics {
        source,
        items: c.diags,
    };
    match document {
        Some(document) if !diagnostics.has_errors() => Ok(Loaded {
            document,
            warnings: diagnostics,
        }),
        _ => Err(diagnostics),
    }
}

#[derive(Default)]
struct Checker {
    diags: Vec<Diagnostic>,
    context: Option<String>,
}

fn quote_hint(node: &Node) -> String {
    let src = node.flow_source.as_deref().unwrap_or("{{ ... }}");
    format!("quote it: write '{src}' (YAML reads an unquoted {{{{ as the start of a mapping)")
}

fn has_reference(node: &Node) -> bool {
    node.as_scalar()
        .is_some_and(|s| !template::scan(&s.text).is_empty())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses permission digits (`755`, `0644`, `'0700'`).
pub fn parse_permissions(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    if !(3..=4).contains(&t.len()) || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(t, 8).ok()
}

/// The outputs each action produces, for checking chaining references.
pub fn output_keys(action: Action) -> &'static [&'static str] {
    match action {
        Action::ExecuteBash | Action::ExecuteBinary | Action::ExecutePowerShell => &["stdout"],
        Action::ReadFile => &["content"],
        Action::ListFiles => &["files"],
        Action::WebDownload => &["destination"],
        Action::InstallMSI | Action::UninstallMSI => &["logFile", "msiExitCode", "stdout"],
        Action::ExecuteDocument => &[
            "executedStepCount",
            "executionId",
            "failedStepCount",
            "failureMessage",
            "ignoredFailedStepCount",
            "logUrl",
            "status",
        ],
        _ => &[],
    }
}

/// A step as references see it: name, action, inputs as written.
type StepSig<'a> = (&'a str, Action, Option<&'a Node>);

/// What a step's references may see, gathered before steps are checked.
struct Scope<'a> {
    variables: HashSet<String>,
    phases: Vec<(&'a str, Vec<StepSig<'a>>)>,
}

impl Checker {
    fn push(&mut self, d: Diagnostic) {
        let d = match &self.context {
            Some(ctx) => d.with_context(ctx.clone()),
            None => d,
        };
        self.diags.push(d);
    }

    fn error(&mut self, span: Span, msg: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::error(Some(span), msg);
        d.hint = hint;
        self.push(d);
    }

    fn warn(&mut self, span: Span, msg: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::warning(Some(span), msg);
        d.hint = hint;
        self.push(d);
    }

    /// A string field: text, or an error that says what was found.
    fn text<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        if node.is_unquoted_template() {
            self.error(
                node.span,
                format!("`{what}` holds an unquoted {{{{ ... }}}} reference"),
                Some(quote_hint(node)),
            );
            return None;
        }
        match node.as_text() {
            Some(t) => Some(t),
            None => {
                self.error(
                    node.span,
                    format!("`{what}` must be a string, not {}", node.type_name()),
                    None,
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, map: &Map, allowed: &[&str], what: &str, as_error: bool) {
        for (key, node) in map.keys() {
            if allowed.contains(&key) {
                continue;
            }
            let hint = did_you_mean(key, allowed.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("{what} takes: {}", allowed.join(", "))));
            if as_error {
                self.error(node.span, format!("unknown key `{key}` in {what}"), hint);
            } else {
                self.warn(
                    node.span,
                    format!("`{key}` is not an input of {what}; it is ignored"),
                    hint,
                );
            }
        }
        for (k, _) in &map.entries {
            if k.as_scalar().is_none() {
                self.error(k.span, format!("keys of {what} must be plain names"), None);
            }
        }
    }

    fn document(&mut self, root: &Node, source: &Arc<Source>) -> Option<Document> {
        let Some(map) = root.as_map() else {
            self.error(
                root.span,
                format!(
                    "a component document is a YAML mapping with `schemaVersion` and `phases`, \
                     not {}",
                    root.type_name()
                ),
                None,
            );
            return None;
        };
        self.unknown_keys(
            map,
            &[
                "name",
                "description",
                "schemaVersion",
                "parameters",
                "constants",
                "phases",
            ],
            "a component document",
            true,
        );
        let name = map
            .get("name")
            .and_then(|n| self.text(n, "name"))
            .unwrap_or("")
            .to_string();
        let description = map
            .get("description")
            .and_then(|n| self.text(n, "description"))
            .unwrap_or("")
            .to_string();
        match map.entry("schemaVersion") {
            None => self.error(
                root.span,
                "missing `schemaVersion`",
                Some("add `schemaVersion: 1.0` at the top of the document".into()),
            ),
            Some((_, v)) => match v.as_text() {
                Some("1.0" | "1") => {}
                Some(other) => self.error(
                    v.span,
                    format!("`schemaVersion` must be 1.0, not `{other}`"),
                    Some("write `schemaVersion: 1.0`".into()),
                ),
                None => self.error(
                    v.span,
                    format!("`schemaVersion` must be 1.0, not {}", v.type_name()),
                    None,
                ),
            },
        }
        let parameters = self.parameters(map.get("parameters"));
        let constants = self.constants(map.get("constants"));
        let mut names: HashMap<&str, Span> = HashMap::new();
        let declared = parameters
            .iter()
            .map(|p| (p.name.as_str(), p.span))
            .chain(constants.iter().map(|c| (c.name.as_str(), c.span)));
        let mut dupes = Vec::new();
        for (n, span) in declared {
            if let Some(first) = names.insert(n, span) {
                dupes.push((n.to_string(), span, first));
            }
        }
        for (n, span, first) in dupes {
            self.error(
                span,
                format!("`{n}` is declared twice (first at {})", first.start),
                Some("parameter and constant names must be unique in a document".into()),
            );
        }
        let variables: HashSet<String> = names.keys().map(|s| s.to_string()).collect();
        let phases = match map.entry("phases") {
            None => {
                self.error(
                    root.span,
                    "missing `phases`",
                    Some("add `phases:` with at least one of build, validate, test".into()),
                );
                Vec::new()
            }
            Some((_, node)) => self.phases(node, variables),
        };
        Some(Document {
            name,
            description,
            parameters,
            constants,
            phases,
            source: source.clone(),
        })
    }

    /// The single-key entries of a `parameters` or `constants` list.
    fn declarations<'n>(
        &mut self,
        node: Option<&'n Node>,
        what: &str,
    ) -> Vec<(String, Span, &'n Map)> {
        let Some(node) = node else {
            return Vec::new();
        };
        if node.is_null() {
            return Vec::new();
        }
        let Some(items) = node.as_seq() else {
            self.error(
                node.span,
                format!("`{what}` must be a list of `- Name: {{type: string, ...}}` entries"),
                None,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let Some(m) = item.as_map().filter(|m| m.len() == 1) else {
                self.error(
                    item.span,
                    format!("each entry of `{what}` is a mapping with exactly one name"),
                    Some("write `- MyName:` followed by its settings indented below".to_string()),
                );
                continue;
            };
            let (k, v) = &m.entries[0];
            let Some(name) = k.as_text() else {
                self.error(k.span, format!("a name in `{what}` must be a string"), None);
                continue;
            };
            if !(3..=128).contains(&name.chars().count()) || !is_ident(name) {
                self.error(
                    k.span,
                    format!(
                        "`{name}`: names in `{what}` are 3 to 128 characters of letters, digits, \
                         `-` and `_`"
                    ),
                    None,
                );
            }
            let Some(settings) = v.as_map() else {
                self.error(
                    v.span,
                    format!("`{name}` needs its settings as a mapping (`type: string`, ...)"),
                    None,
                );
                continue;
            };
            match settings.entry("type") {
                None => self.error(k.span, format!("`{name}` needs `type: string`"), None),
                Some((_, t)) if t.as_text() != Some("string") => self.error(
                    t.span,
                    format!(
                        "`{name}`: the only supported type is `string`, not `{}`",
                        t.as_text().unwrap_or(t.type_name())
                    ),
                    None,
                ),
                _ => {}
            }
            out.push((name.to_string(), k.span, settings));
        }
        out
    }

    fn parameters(&mut self, node: Option<&Node>) -> Vec<Parameter> {
        let mut out = Vec::new();
        for (name, span, settings) in self.declarations(node, "parameters") {
            self.unknown_keys(
                settings,
                &["type", "default", "description"],
                "a parameter",
                true,
            );
            let default = settings.get("default").and_then(|d| {
                if d.is_null() {
                    None
                } else {
                    self.text(d, "default").map(str::to_string)
                }
            });
            let description = settings
                .get("description")
                .and_then(|d| self.text(d, "description"))
                .unwrap_or("")
                .to_string();
            out.push(Parameter {
                name,
                default,
                description,
                span,
            });
        }
        out
    }

    fn constants(&mut self, node: Option<&Node>) -> Vec<Constant> {
        let mut out = Vec::new();
        for (name, span, settings) in self.declarations(node, "constants") {
            self.unknown_keys(settings, &["type", "value"], "a constant", true);
            let value = match settings.get("value") {
                None => {
                    self.error(span, format!("constant `{name}` needs a `value`"), None);
                    String::new()
                }
                Some(v) if v.is_null() => String::new(),
                Some(v) => self.text(v, "value").unwrap_or("").to_string(),
            };
            out.push(Constant { name, value, span });
        }
        out
    }

    fn phases(&mut self, node: &Node, variables: HashSet<String>) -> Vec<Phase> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.span,
                format!(
                    "`phases` must be a list of phases, not {}",
                    node.type_name()
                ),
                Some("write `phases:` then `  - name: build` and its `steps:`".into()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.span,
                "`phases` is empty",
                Some("add at least one of the phases build, validate, test".into()),
            );
        }
        // First pass: phase and step names, so that references can be checked in any order.
        let mut raw: Vec<(&Node, &Map, String)> = Vec::new();
        let mut seen: HashMap<String, Span> = HashMap::new();
        for item in items {
            let Some(m) = item.as_map() else {
                self.error(
                    item.span,
                    "a phase is a mapping with `name` and `steps`",
                    None,
                );
                continue;
            };
            self.unknown_keys(m, &["name", "steps"], "a phase", true);
            let Some(name_node) = m.get("name") else {
                self.error(item.span, "this phase has no `name`", None);
                continue;
            };
            let Some(name) = self.text(name_node, "name") else {
                continue;
            };
            if !PHASE_NAMES.contains(&name) {
                self.error(
                    name_node.span,
                    format!("unknown phase `{name}`"),
                    Some(format!("phases are {}", PHASE_NAMES.join(", "))),
                );
            }
            if let Some(first) = seen.insert(name.to_string(), name_node.span) {
                self.error(
                    name_node.span,
                    format!("phase `{name}` is defined twice (first at {})", first.start),
                    Some("each phase name must be unique in a document".into()),
                );
                continue;
            }
            raw.push((item, m, name.to_string()));
        }
        let mut scope = Scope {
            variables,
            phases: Vec::new(),
        };
        for (_, m, name) in &raw {
            let steps = m
                .get("steps")
                .and_then(Node::as_seq)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| {
                    let sm = s.as_map()?;
                    let n = sm.get("name")?.as_text()?;
                    let a = Action::parse(sm.get("action")?.as_text()?)?;
                    Some((n, a, sm.get("inputs")))
                })
                .collect();
            scope.phases.push((name.as_str(), steps));
        }
        let mut out = Vec::new();
        for (pi, (item, m, name)) in raw.iter().enumerate() {
            let steps = match m.get("steps") {
                None => {
                    self.error(item.span, format!("phase `{name}` has no `steps`"), None);
                    Vec::new()
                }
                Some(s) => self.steps(s, name, pi, &scope),
            };
            out.push(Phase {
                name: name.clone(),
                steps,
                span: item.span,
            });
        }
        out
    }

    fn steps(&mut self, node: &Node, phase: &str, phase_index: usize, scope: &Scope) -> Vec<Step> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.span,
                format!(
                    "`steps` of phase `{phase}` must be a list, not {}",
                    node.type_name()
                ),
                None,
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.warn(node.span, format!("phase `{phase}` has no steps"), None);
        }
        let mut names: HashMap<String, Span> = HashMap::new();
        let mut loop_names: HashMap<String, Span> = HashMap::new();
        let mut out = Vec::new();
        for (si, item) in items.iter().enumerate() {
            self.context = Some(format!("phase `{phase}`"));
            if let Some(step) = self.step(
                item,
                phase,
                phase_index,
                si,
                scope,
                &mut names,
                &mut loop_names,
            ) {
                out.push(step);
            }
        }
        self.context = None;
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        node: &Node,
        phase: &str,
        phase_index: usize,
        step_index: usize,
        scope: &Scope,
        names: &mut HashMap<String, Span>,
        loop_names: &mut HashMap<String, Span>,
    ) -> Option<Step> {
        let Some(m) = node.as_map() else {
            self.error(
                node.span,
                format!(
                    "a step is a mapping with `name`, `action` and `inputs`, not {}",
                    node.type_name()
                ),
                None,
            );
            return None;
        };
        let name = match m.get("name") {
            None => {
                self.error(node.span, "this step has no `name`", None);
                None
            }
            Some(n) => self.text(n, "name").map(str::to_string).inspect(|name| {
                let bad = name.chars().any(|c| matches!(c, '.' | '{' | '}' | '[' | ']') || c.is_control());
                if bad || name.chars().count() > 128 {
                    self.error(
                        n.span,
                        format!("step name `{name}` is not valid"),
                        Some("step names are up to 128 characters without `.`, `{`, `}`, `[`, `]` (they are used in `{{ phase.Step.outputs.x }}`)".into()),
                    );
                }
                if let Some(first) = names.insert(name.clone(), n.span) {
                    self.error(
                        n.span,
                        format!("step name `{name}` is already used in this phase (at {})", first.start),
                        Some("step names must be unique within a phase".into()),
                    );
                }
            }),
        };
        let display = name
            .clone()
            .unwrap_or_else(|| format!("#{}", step_index + 1));
        self.context = Some(format!("phase `{phase}`, step `{display}`"));
        self.unknown_keys(
            m,
            &[
                "name",
                "action",
                "inputs",
                "onFailure",
                "timeoutSeconds",
                "maxAttempts",
                "if",
                "loop",
            ],
            "a step",
            true,
        );
        let action = match m.get("action") {
            None => {
                self.error(
                    node.span,
                    "this step has no `action`",
                    Some("add `action:` with an action module such as ExecuteBash".into()),
                );
                None
            }
            Some(a) => self.text(a, "action").and_then(|text| {
                let parsed = Action::parse(text);
                if parsed.is_none() {
                    let hint = did_you_mean(text, ALL_ACTIONS.iter().map(|a| a.name()))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "actions are: {}",
                                ALL_ACTIONS
                                    .iter()
                                    .map(|a| a.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        });
                    self.error(a.span, format!("unknown action `{text}`"), Some(hint));
                }
                parsed
            }),
        };
        let on_failure = match m.get("onFailure") {
            None => OnFailure::Abort,
            Some(v) => match v.as_text() {
                Some("Abort") => OnFailure::Abort,
                Some("Continue") => OnFailure::Continue,
                Some("Ignore") => OnFailure::Ignore,
                other => {
                    let shown =
                        other.map_or_else(|| v.type_name().to_string(), |t| format!("`{t}`"));
                    let hint = other
                        .and_then(|t| did_you_mean(t, ["Abort", "Continue", "Ignore"]))
                        .map(|s| format!("write `{s}`"))
                        .unwrap_or_else(|| "choose one value".into());
                    self.error(
                        v.span,
                        format!("`onFailure` must be Abort, Continue or Ignore, not {shown}"),
                        Some(hint),
                    );
                    OnFailure::Abort
                }
            },
        };
        let timeout_seconds = match m.get("timeoutSeconds") {
            None => Some(DEFAULT_TIMEOUT_SECONDS),
            Some(v) => match v.as_scalar().and_then(|s| s.as_int()) {
                Some(-1) => None,
                Some(n) if n >= 1 => Some(n as u64),
                Some(n) => {
                    self.error(
                        v.span,
                        format!("`timeoutSeconds` must be at least 1, or -1 for no limit; {n} is not allowed"),
                        None,
                    );
                    None
                }
                None => {
                    self.error(
                        v.span,
                        format!(
                            "`timeoutSeconds` must be an integer number of seconds (or -1 for no limit), not {}",
                            describe(v)
                        ),
                        Some(format!("for example `timeoutSeconds: {DEFAULT_TIMEOUT_SECONDS}` (the default)")),
                    );
                    None
                }
            },
        };
        let max_attempts = match m.get("maxAttempts") {
            None => 1,
            Some(v) => match v.as_scalar().and_then(|s| s.as_int()) {
                Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => n as u32,
                Some(n) => {
                    self.error(
                        v.span,
                        format!("`maxAttempts` must be between 1 and {MAX_ATTEMPTS}, not {n}"),
                        None,
                    );
                    1
                }
                None => {
                    self.error(
                        v.span,
                        format!("`maxAttempts` must be an integer, not {}", describe(v)),
                        Some("for example `maxAttempts: 3`".into()),
                    );
                    1
                }
            },
        };
        let timeout_seconds = if action == Some(Action::ExecuteDocument) {
            None
        } else {
            timeout_seconds
        };
        if action == Some(Action::ExecuteDocument) {
            if let Some(v) = m.get("timeoutSeconds") {
                if v.as_scalar().and_then(|s| s.as_int()) != Some(-1) {
                    self.error(
                        v.span,
                        "ExecuteDocument runs without a time limit: `timeoutSeconds` must be -1 or left out",
                        None,
                    );
                }
            }
            if let Some(v) = m.get("maxAttempts") {
                if v.as_scalar().and_then(|s| s.as_int()) != Some(1) {
                    self.error(
                        v.span,
                        "ExecuteDocument runs once: `maxAttempts` must be 1 or left out",
                        None,
                    );
                }
            }
        }
        let looping = m.get("loop").and_then(|l| self.looping(l, loop_names));
        let condition = m.get("if").and_then(|c| self.if_clause(c));
        let inputs = m.get("inputs").filter(|n| !n.is_null()).cloned();
        let assertion = match action {
            Some(action) => self.inputs(action, m.get("inputs"), node.span),
            None => None,
        };
        // References: in inputs, loop lists and conditions.
        let refs_ctx = RefCtx {
            phase_index,
            step_index,
            loop_name: looping.as_ref().map(|l| l.name.clone()),
            has_loop: looping.is_some(),
        };
        if let Some(i) = m.get("inputs") {
            self.references(i, scope, &refs_ctx, true);
        }
        if let Some(c) = m.get("if") {
            self.references(c, scope, &refs_ctx, true);
        }
        if let Some(l) = m.get("loop").and_then(Node::as_map) {
            if let Some(fe) = l.get("forEach") {
                self.references(
                    fe,
                    scope,
                    &RefCtx {
                        has_loop: false,
                        loop_name: None,
                        ..refs_ctx.clone()
                    },
                    true,
                );
            }
            if let Some(f) = l.get("for") {
                self.references(
                    f,
                    scope,
                    &RefCtx {
                        has_loop: false,
                        loop_name: None,
                        ..refs_ctx
                    },
                    false,
                );
            }
        }
        Some(Step {
            name: name?,
            action: action?,
            on_failure,
            timeout_seconds,
            max_attempts,
            condition,
            looping,
            inputs,
            assertion,
            span: node.span,
        })
    }

    fn looping(&mut self, node: &Node, loop_names: &mut HashMap<String, Span>) -> Option<Loop> {
        let Some(m) = node.as_map() else {
            self.error(
                node.span,
                "`loop` must be a mapping with `for` or `forEach`",
                None,
            );
            return None;
        };
        self.unknown_keys(m, &["name", "for", "forEach"], "a loop", true);
        let name = m.get("name").and_then(|n| {
            let t = self.text(n, "loop name")?.to_string();
            if !is_ident(&t) || t == "loop" {
                self.error(
                    n.span,
                    format!("loop name `{t}` is not valid"),
                    Some("use letters, digits, `-` and `_`; `loop` itself is reserved".into()),
                );
            }
            if let Some(first) = loop_names.insert(t.clone(), n.span) {
                self.error(
                    n.span,
                    format!(
                        "loop name `{t}` is already used in this phase (at {})",
                        first.start
                    ),
                    Some("loop names must be unique within a phase".into()),
                );
            }
            Some(t)
        });
        let kind = match (m.get("for"), m.get("forEach")) {
            (Some(_), Some(fe)) => {
                self.error(
                    fe.span,
                    "a loop has either `for` or `forEach`, not both",
                    None,
                );
                return None;
            }
            (None, None) => {
                self.error(node.span, "a loop needs `for` or `forEach`", None);
                return None;
            }
            (Some(f), None) => self.for_loop(f)?,
            (None, Some(fe)) => self.for_each(fe)?,
        };
        Some(Loop {
            name,
            kind,
            span: node.span,
        })
    }

    fn for_loop(&mut self, node: &Node) -> Option<LoopKind> {
        let Some(m) = node.as_map() else {
            self.error(node.span, "`for` needs `start`, `end` and `updateBy`", None);
            return None;
        };
        self.unknown_keys(m, &["start", "end", "updateBy"], "a for loop", true);
        let mut get = |key: &str| -> Option<(Node, Option<i64>)> {
            let Some(v) = m.get(key) else {
                self.error(node.span, format!("`for` needs `{key}`"), None);
                return None;
            };
            if v.is_unquoted_template() {
                self.error(
                    v.span,
                    format!("`{key}` holds an unquoted reference"),
                    Some(quote_hint(v)),
                );
                return None;
            }
            let literal = v.as_scalar().and_then(|s| s.as_int());
            if literal.is_none() && !has_reference(v) {
                self.error(
                    v.span,
                    format!("`{key}` must be an integer, not {}", describe(v)),
                    None,
                );
                return None;
            }
            Some((v.clone(), literal))
        };
        let (start, s) = get("start")?;
        let (end, e) = get("end")?;
        let (update_by, u) = get("updateBy")?;
        if let (Some(s), Some(e), Some(u)) = (s, e, u) {
            if let Err(msg) = for_iterations(s, e, u) {
                self.error(update_by.span, msg, None);
            }
        } else if u == Some(0) {
            self.error(
                update_by.span,
                "`updateBy` must not be 0 (the loop would never end)",
                None,
            );
        }
        Some(LoopKind::For {
            start,
            end,
            update_by,
        })
    }

    fn for_each(&mut self, node: &Node) -> Option<LoopKind> {
        if let Some(items) = node.as_seq() {
            if items.is_empty() {
                self.error(node.span, "`forEach` has no items", None);
            }
            for item in items {
                if item.is_unquoted_template() {
                    self.error(
                        item.span,
                        "a `forEach` item holds an unquoted reference",
                        Some(quote_hint(item)),
                    );
                } else if item.as_text().is_none() {
                    self.error(
                        item.span,
                        format!("`forEach` items must be strings, not {}", item.type_name()),
                        None,
                    );
                }
            }
            return Some(LoopKind::ForEach(items.to_vec()));
        }
        let Some(m) = node.as_map() else {
            self.error(
                node.span,
                "`forEach` is a list of values, or a mapping with `list` and `delimiter`",
                None,
            );
            return None;
        };
        if node.is_unquoted_template() {
            self.error(
                node.span,
                "`forEach` holds an unquoted reference",
                Some(quote_hint(node)),
            );
            return None;
        }
        self.unknown_keys(m, &["list", "delimiter"], "a forEach loop", true);
        let Some(list) = m.get("list") else {
            self.error(node.span, "`forEach` needs `list`", None);
            return None;
        };
        self.text(list, "list")?;
        let delimiter = match m.get("delimiter") {
            None => ',',
            Some(d) => {
                let text = self.text(d, "delimiter")?;
                let c = match text {
                    "\\n" => Some('\n'),
                    "\\t" => Some('\t'),
                    t if t.chars().count() == 1 => t.chars().next(),
                    _ => None,
                };
                match c.filter(|c| DELIMITERS.contains(c)) {
                    Some(c) => c,
                    None => {
                        self.error(
                            d.span,
                            format!("`{}` is not an allowed delimiter", text.escape_default()),
                            Some("use one character of . , ; : - _ space, \\n (newline) or \\t (tab)".into()),
                        );
                        return None;
                    }
                }
            }
        };
        Some(LoopKind::ForEachDelimited {
            list: list.clone(),
            delimiter,
        })
    }

    fn if_clause(&mut self, node: &Node) -> Option<IfClause> {
        let node = match node.as_seq() {
            Some([only]) => only,
            Some(_) => {
                self.error(
                    node.span,
                    "`if` holds one condition",
                    Some("combine several with `and` or `or`".into()),
                );
                return None;
            }
            None => node,
        };
        let Some(m) = node.as_map() else {
            self.error(node.span, "`if` must be a mapping with one operator", None);
            return None;
        };
        let then = self.step_action(m, "then", StepAction::Execute);
        let otherwise = self.step_action(m, "else", StepAction::Skip);
        let condition = self.condition(node, 0, true)?;
        Some(IfClause {
            condition,
            then,
            otherwise,
        })
    }

    fn step_action(&mut self, m: &Map, key: &str, default: StepAction) -> StepAction {
        match m.get(key) {
            None => default,
            Some(v) => match v.as_text() {
                Some("Execute") => StepAction::Execute,
                Some("Skip") => StepAction::Skip,
                Some("Abort") => StepAction::Abort,
                _ => {
                    self.error(
                        v.span,
                        format!("`{key}` must be Execute, Skip or Abort"),
                        None,
                    );
                    default
                }
            },
        }
    }

    /// A condition from a mapping with exactly one operator.
    pub(crate) fn condition(
        &mut self,
        node: &Node,
        depth: usize,
        allow_then_else: bool,
    ) -> Option<Condition> {
        if node.is_unquoted_template() {
            self.error(
                node.span,
                "a condition holds an unquoted reference",
                Some(quote_hint(node)),
            );
            return None;
        }
        let Some(m) = node.as_map() else {
            self.error(
                node.span,
                format!(
                    "a condition is a mapping with one operator, not {}",
                    node.type_name()
                ),
                None,
            );
            return None;
        };
        let ops: Vec<(&str, &Node, &Node)> = m
            .entries
            .iter()
            .filter_map(|(k, v)| {
                let key = k.as_text()?;
                (matches!(key, "and" | "or" | "not") || CompareOp::parse(key).is_some())
                    .then_some((key, k, v))
            })
            .collect();
        let (key, key_node, value) = match ops.as_slice() {
            [one] => *one,
            [] => {
                self.error(
                    node.span,
                    "this condition has no operator",
                    Some("use a comparison (stringEquals, numberLessThan, fileExists, ...) or and / or / not".into()),
                );
                return None;
            }
            [_, second, ..] => {
                self.error(
                    second.1.span,
                    format!(
                        "a condition has one operator; `{}` is a second one",
                        second.0
                    ),
                    Some("combine conditions with `and` or `or`".into()),
                );
                return None;
            }
        };
        let mut allowed: Vec<&str> = vec![key];
        if allow_then_else {
            allowed.extend(["then", "else"]);
        }
        let result = match key {
            "and" | "or" | "not" => {
                if depth + 1 > MAX_CONDITION_DEPTH {
                    self.error(
                        key_node.span,
                        format!("conditions nest at most {MAX_CONDITION_DEPTH} levels of and / or / not"),
                        None,
                    );
                    return None;
                }
                let items: Vec<&Node> = match (key, value.as_seq()) {
                    ("not", Some([one])) => vec![one],
                    ("not", Some(_)) => {
                        self.error(value.span, "`not` negates exactly one condition", None);
                        return None;
                    }
                    ("not", None) => vec![value],
                    (_, Some(list)) if !list.is_empty() => list.iter().collect(),
                    _ => {
                        self.error(
                            value.span,
                            format!("`{key}` takes a list of conditions"),
                            Some(format!("write `{key}:` then `- stringEquals: ...` items")),
                        );
                        return None;
                    }
                };
                let mut parts = Vec::new();
                for item in items {
                    parts.push(self.condition(item, depth + 1, false)?);
                }
                match key {
                    "and" => Condition::And(parts),
                    "or" => Condition::Or(parts),
                    _ => Condition::Not(Box::new(parts.remove(0))),
                }
            }
            _ => {
                let op = CompareOp::parse(key)?;
                if op.key() != key {
                    self.warn(
                        key_node.span,
                        format!("operator `{key}` is spelled `{}`", op.key()),
                        None,
                    );
                }
                if value.is_unquoted_template() {
                    self.error(
                        value.span,
                        format!("`{key}` holds an unquoted reference"),
                        Some(quote_hint(value)),
                    );
                    return None;
                }
                if value.as_scalar().is_none() {
                    self.error(
                        value.span,
                        format!("`{key}` takes a single value, not {}", value.type_name()),
                        None,
                    );
                    return None;
                }
                let operand_key = match op.operand() {
                    Operand::None => None,
                    Operand::Value => Some("value"),
                    Operand::Path => Some("path"),
                };
                let operand = match operand_key {
                    None => None,
                    Some(k) => {
                        allowed.push(k);
                        match m.get(k) {
                            None => {
                                self.error(
                                    node.span,
                                    format!("`{key}` needs `{k}:` to compare with"),
                                    None,
                                );
                                return None;
                            }
                            Some(v) if v.is_unquoted_template() => {
                                self.error(
                                    v.span,
                                    format!("`{k}` holds an unquoted reference"),
                                    Some(quote_hint(v)),
                                );
                                return None;
                            }
                            Some(v) if v.as_scalar().is_none() => {
                                self.error(
                                    v.span,
                                    format!("`{k}` must be a single value, not {}", v.type_name()),
                                    None,
                                );
                                return None;
                            }
                            Some(v) => Some(v.clone()),
                        }
                    }
                };
                self.check_literal_operand(op, value);
                Condition::Compare {
                    op,
                    baseline: value.clone(),
                    operand,
                    span: key_node.span,
                }
            }
        };
        for (k, kn) in m.keys() {
            if !allowed.contains(&k) {
                let hint = match k {
                    "then" | "else" => {
                        Some("`then` and `else` belong at the top of `if`".to_string())
                    }
                    "value" | "path" => Some(format!("`{key}` does not take `{k}`")),
                    _ => None,
                };
                self.error(
                    kn.span,
                    format!("unexpected key `{k}` in this condition"),
                    hint,
                );
            }
        }
        Some(result)
    }

    fn check_literal_operand(&mut self, op: CompareOp, value: &Node) {
        if has_reference(value) {
            return;
        }
        let Some(text) = value.as_text() else {
            return;
        };
        use CompareOp::*;
        match op {
            PatternMatches => {
                if let Err(e) = regex::Regex::new(&format!("(?i){text}")) {
                    self.error(
                        value.span,
                        format!("not a valid regular expression: {e}"),
                        None,
                    );
                }
            }
            NumberEquals
            | NumberLessThan
            | NumberLessThanEquals
            | NumberGreaterThan
            | NumberGreaterThanEquals
                if crate::condition::parse_number(text).is_none() =>
            {
                self.error(
                    value.span,
                    format!("`{op}` compares numbers; `{text}` is not one"),
                    None,
                );
            }
            _ => {}
        }
    }

    /// Checks a step's inputs against its action; returns the condition of an Assert.
    fn inputs(
        &mut self,
        action: Action,
        node: Option<&Node>,
        step_span: Span,
    ) -> Option<Condition> {
        let schema = action.schema();
        let node = match node {
            Some(n) if !n.is_null() => n,
            _ if schema.inputs_optional => return None,
            other => {
                let span = other.map_or(step_span, |n| n.span);
                let needed: Vec<&str> = schema
                    .fields
                    .iter()
                    .filter(|f| f.required)
                    .map(|f| f.name)
                    .collect();
                let hint = if needed.is_empty() {
                    None
                } else {
                    Some(format!(
                        "{action} needs {}",
                        needed
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                };
                self.error(span, format!("{action} needs `inputs`"), hint);
                return None;
            }
        };
        self.unquoted_templates(node);
        match schema.shape {
            Shape::Condition => return self.condition(node, 0, false),
            Shape::Map => {
                let Some(m) = node.as_map() else {
                    let hint = if node.as_seq().is_some() {
                        Some(format!("{action} takes its inputs as a mapping: remove the `-` before the first key"))
                    } else {
                        None
                    };
                    self.error(
                        node.span,
                        format!(
                            "the inputs of {action} are a mapping, not {}",
                            node.type_name()
                        ),
                        hint,
                    );
                    return None;
                };
                self.fields(action, m, node.span, schema.fields);
                if action == Action::ExecutePowerShell
                    && (m.get("commands").is_some() == m.get("file").is_some())
                {
                    self.error(
                        node.span,
                        "ExecutePowerShell takes either `commands` or `file`, not both or neither",
                        None,
                    );
                }
            }
            Shape::List => {
                let items = match (node.as_seq(), node.as_map()) {
                    (Some(items), _) => items,
                    (None, Some(m))
                        if m.len() == 1 && m.get("commands").and_then(Node::as_seq).is_some() =>
                    {
                        self.warn(
                            node.span,
                            format!("the inputs of {action} are a list; this `commands:` wrapper (as in the user guide's looping example) is read as that list"),
                            Some("remove `commands:` and list the items directly under `inputs:`".into()),
                        );
                        m.get("commands").and_then(Node::as_seq).unwrap_or_default()
                    }
                    _ => {
                        self.error(
                            node.span,
                            format!(
                                "the inputs of {action} are a list of operations, not {}",
                                node.type_name()
                            ),
                            Some(format!(
                                "write each operation as a list item: `- {}: ...`",
                                schema.fields.first().map_or("path", |f| f.name)
                            )),
                        );
                        return None;
                    }
                };
                if items.is_empty() {
                    self.error(
                        node.span,
                        format!("{action} has an empty list of inputs"),
                        None,
                    );
                }
                for item in items {
                    match item.as_map() {
                        Some(m) => self.fields(action, m, item.span, schema.fields),
                        None if item.is_unquoted_template() => {}
                        None => self.error(
                            item.span,
                            format!(
                                "each input of {action} is a mapping, not {}",
                                item.type_name()
                            ),
                            None,
                        ),
                    }
                }
            }
        }
        None
    }

    /// Reports every unquoted `{{ ... }}` in a subtree, once.
    fn unquoted_templates(&mut self, node: &Node) {
        if node.is_unquoted_template() {
            self.error(
                node.span,
                "unquoted {{ ... }} reference",
                Some(quote_hint(node)),
            );
            return;
        }
        match &node.kind {
            NodeKind::Seq(items) => items.iter().for_each(|i| self.unquoted_templates(i)),
            NodeKind::Map(m) => m
                .entries
                .iter()
                .for_each(|(_, v)| self.unquoted_templates(v)),
            NodeKind::Scalar(_) => {}
        }
    }

    fn fields(&mut self, action: Action, m: &Map, span: Span, fields: &[Field]) {
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        self.unknown_keys(m, &names, action.name(), false);
        for f in fields {
            match m.get(f.name) {
                None if f.required => self.error(
                    span,
                    format!("{action} needs `{}` ({})", f.name, f.kind.describe()),
                    None,
                ),
                None => {}
                Some(v) => self.field(action, f, v),
            }
        }
    }

    fn field(&mut self, action: Action, f: &Field, v: &Node) {
        if v.is_unquoted_template() || has_reference(v) {
            return;
        }
        let bad = |c: &mut Checker, extra: Option<String>| {
            c.error(
                v.span,
                format!(
                    "`{}` of {action} must be {}, not {}",
                    f.name,
                    f.kind.describe(),
                    describe(v)
                ),
                extra,
            )
        };
        match f.kind {
            Kind::Str => {
                if v.as_scalar().is_none() {
                    bad(self, None);
                }
            }
            Kind::Bool => {
                let ok = v.as_scalar().is_some_and(|s| {
                    s.as_bool().is_some()
                        || matches!(s.text.to_ascii_lowercase().as_str(), "true" | "false")
                });
                if !ok {
                    bad(self, None);
                }
            }
            Kind::Int => {
                let ok = v
                    .as_scalar()
                    .is_some_and(|s| s.as_int().is_some() || s.text.trim().parse::<i64>().is_ok());
                if !ok {
                    bad(self, None);
                }
            }
            Kind::StrList => match v.as_seq() {
                Some(items) => {
                    for item in items {
                        if item.as_scalar().is_none() && !item.is_unquoted_template() {
                            self.error(
                                item.span,
                                format!("items of `{}` must be strings, not {}", f.name, item.type_name()),
                                Some("a line with `key: value` inside a list becomes a mapping; quote the whole line".into()),
                            );
                        }
                    }
                }
                None => bad(
                    self,
                    Some(format!("write `{}:` then one `- item` per line", f.name)),
                ),
            },
            Kind::Permissions => {
                if v.as_text().and_then(parse_permissions).is_none() {
                    bad(self, None);
                }
            }
            Kind::Encoding => {
                if v.as_text()
                    .and_then(kiln_instance::fileops::Encoding::parse)
                    .is_none()
                {
                    bad(self, None);
                }
            }
            Kind::NameValueList => match v.as_seq() {
                Some(items) => {
                    for item in items {
                        let ok = item.as_map().is_some_and(|m| {
                            m.get("name").and_then(Node::as_text).is_some()
                                && m.get("value").is_some_and(|x| x.as_scalar().is_some())
                        });
                        if !ok {
                            self.error(
                                item.span,
                                format!("each entry of `{}` needs `name` and `value`", f.name),
                                None,
                            );
                        } else if let Some(m) = item.as_map() {
                            self.unknown_keys(m, &["name", "value"], "a parameter entry", true);
                        }
                    }
                }
                None => bad(self, None),
            },
            Kind::StrMap => {
                if v.as_map()
                    .is_none_or(|m| m.entries.iter().any(|(_, x)| x.as_scalar().is_none()))
                {
                    bad(self, None);
                }
            }
            Kind::Any => {}
            Kind::OneOf(words) => {
                if !v.as_text().is_some_and(|t| words.contains(&t)) {
                    bad(self, None);
                }
            }
        }
    }

    fn references(&mut self, node: &Node, scope: &Scope, ctx: &RefCtx, chaining_allowed: bool) {
        match &node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .for_each(|i| self.references(i, scope, ctx, chaining_allowed)),
            NodeKind::Map(m) => m
                .entries
                .iter()
                .for_each(|(_, v)| self.references(v, scope, ctx, chaining_allowed)),
            NodeKind::Scalar(s) => {
                for found in template::scan(&s.text) {
                    self.reference(node.span, &found, scope, ctx, chaining_allowed);
                }
            }
        }
    }

    fn reference(
        &mut self,
        span: Span,
        found: &template::Found,
        scope: &Scope,
        ctx: &RefCtx,
        chaining_allowed: bool,
    ) {
        let expr = &found.expr;
        match &found.reference {
            Reference::Variable(name) => {
                if !scope.variables.contains(name) {
                    let hint = did_you_mean(name, scope.variables.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{{{{ {s} }}}}`?"))
                        .or_else(|| Some("declare it under `parameters` or `constants`".into()));
                    self.warn(
                        span,
                        format!("`{{{{ {expr} }}}}` is not a parameter or constant of this document; it will be left as written"),
                        hint,
                    );
                }
            }
            Reference::Loop { name, .. } => {
                let matches_loop = match name {
                    None => ctx.has_loop,
                    Some(n) => ctx.loop_name.as_ref().is_some_and(|l| l.as_deref() == Some(n.as_str())),
                };
                if !matches_loop {
                    self.warn(
                        span,
                        format!("`{{{{ {expr} }}}}` refers to a loop this step does not have; it will be left as written"),
                        None,
                    );
                }
            }
            Reference::Chain { phase, step, side, index, key } => {
                if !chaining_allowed {
                    self.error(span, format!("`{{{{ {expr} }}}}`: loop bounds cannot use chaining"), None);
                    return;
                }
                let Some(pi) = scope.phases.iter().position(|(p, _)| p == phase) else {
                    self.error(span, format!("`{{{{ {expr} }}}}` refers to phase `{phase}`, which this document does not have"), None);
                    return;
                };
                let steps = &scope.phases[pi].1;
                let Some(si) = steps.iter().position(|(s, _, _)| s == step) else {
                    let hint = did_you_mean(step, steps.iter().map(|(s, _, _)| *s)).map(|s| format!("did you mean `{s}`?"));
                    self.error(span, format!("`{{{{ {expr} }}}}` refers to step `{step}`, which phase `{phase}` does not have"), hint);
                    return;
                };
                if pi > ctx.phase_index || (pi == ctx.phase_index && si >= ctx.step_index) {
                    self.error(
                        span,
                        format!("`{{{{ {expr} }}}}` refers to step `{step}`, which has not run yet at this point"),
                        Some("a step can only use the inputs and outputs of steps before it".into()),
                    );
                    return;
                }
                let (_, action, inputs) = steps[si];
                match side {
                    Side::Outputs => {
                        let keys = output_keys(action);
                        match key {
                            Some(k) if !keys.contains(&k.as_str()) => {
                                let msg = if keys.is_empty() {
                                    format!("`{{{{ {expr} }}}}`: {action} has no outputs")
                                } else {
                                    format!("`{{{{ {expr} }}}}`: {action} has no output `{k}` (it has {})", keys.join(", "))
                                };
                                self.error(span, msg, None);
                            }
                            _ => {}
                        }
                    }
                    Side::Inputs => {
                        if let (Some(i), Some(list)) = (index, inputs.and_then(Node::as_seq)) {
                            if *i >= list.len() {
                                self.error(span, format!("`{{{{ {expr} }}}}`: step `{step}` has {} input item(s); indexes start at 0", list.len()), None);
                            }
                        }
                        if let Some(k) = key {
                            let fields = action.schema().fields;
                            if !fields.is_empty() && !fields.iter().any(|f| f.name == k) {
                                self.warn(span, format!("`{{{{ {expr} }}}}`: {action} has no input `{k}`"), None);
                            }
                        }
                    }
                }
            }
            Reference::Env(_) => {}
            Reference::Context(k) => {
                if !CONTEXT_KEYS.contains(&k.as_str()) {
                    self.error(span, format!("`{{{{ {expr} }}}}` is not a context variable"), Some(format!("context variables are {}", CONTEXT_KEYS.join(", "))));
                }
            }
            Reference::Aws(_) => self.error(
                span,
                format!("`{{{{ {expr} }}}}`: AWS Systems Manager and instance metadata variables are not available outside AWS"),
                Some("pass the value as a component parameter instead".into()),
            ),
        }
    }
}

#[derive(Clone)]
struct RefCtx {
    phase_index: usize,
    step_index: usize,
    /// `Some(None)`: an unnamed loop; `None`: no loop.
    loop_name: Option<Option<String>>,
    has_loop: bool,
}

fn describe(v: &Node) -> String {
    match v.as_scalar() {
        Some(s) if !s.is_null() && s.type_name() == "a string" => {
            format!("the string `{}`", s.text)
        }
        _ => v.type_name().to_string(),
    }
}

/// The values of a `for` loop, or why the loop is not allowed.
pub fn for_iterations(start: i64, end: i64, update_by: i64) -> Result<Vec<i64>, String> {
    if update_by == 0 {
        return Err("`updateBy` must not be 0 (the loop would never end)".into());
    }
    if (start < end && update_by < 0) || (start > end && update_by > 0) {
        return Err(format!(
            "a loop from {start} to {end} by {update_by} never reaches its end: `updateBy` must be {}",
            if start < end { "positive" } else { "negative" }
        ));
    }
    let count = (end - start) / update_by + 1;
    if count as u64 > MAX_LOOP_ITERATIONS {
        return Err(format!(
            "a loop from {start} to {end} by {update_by} makes {count} iterations; the limit is {MAX_LOOP_ITERATIONS}"
        ));
    }
    Ok((0..count).map(|i| start + i * update_by).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_digits() {
        assert_eq!(parse_permissions("0777"), Some(0o777));
        assert_eq!(parse_permissions("755"), Some(0o755));
        assert_eq!(parse_permissions("4755"), Some(0o4755));
        assert_eq!(parse_permissions("79"), None);
        assert_eq!(parse_permissions("888"), None);
    }

    #[test]
    fn for_loops() {
        assert_eq!(for_iterations(1, 10, 4).unwrap(), vec![1, 5, 9]);
        assert_eq!(for_iterations(3, 1, -1).unwrap(), vec![3, 2, 1]);
        assert_eq!(for_iterations(5, 5, 1).unwrap(), vec![5]);
        assert!(for_iterations(1, 3, 0).is_err());
        assert!(for_iterations(1, 3, -1).is_err());
        assert!(for_iterations(0, 1_000_000, 1).is_err());
    }
}
