//! The model of a validated component document.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_yaml::{Node, Span};

use crate::action::Action;

/// Where a document came from, with its text (for error messages that quote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How to name it to the user: a path, an `s3://` URL, an ARN.
    pub name: String,
    /// The document text.
    pub text: String,
    /// The folder relative references resolve against (local documents only).
    pub dir: Option<PathBuf>,
}

/// A parsed and validated component document.
#[derive(Debug, Clone)]
pub struct Document {
    /// `name` (empty when absent).
    pub name: String,
    /// `description` (empty when absent).
    pub description: String,
    /// Parameters, with defaults.
    pub parameters: Vec<Parameter>,
    /// Constants.
    pub constants: Vec<Constant>,
    /// Phases in document order.
    pub phases: Vec<Phase>,
    /// Where it came from.
    pub source: Arc<Source>,
}

impl Document {
    /// A phase by name.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Parameters that have no default and are not among `given`.
    pub fn missing_parameters<'a>(&'a self, given: &[(String, String)]) -> Vec<&'a str> {
        self.parameters
            .iter()
            .filter(|p| p.default.is_none() && !given.iter().any(|(k, _)| k == &p.name))
            .map(|p| p.name.as_str())
            .collect()
    }
}

/// ``parameter `a` has no default`` or ``parameters `a`, `b` have no default``, for messages
/// about [`Document::missing_parameters`].
pub fn no_default_phrase(missing: &[&str]) -> String {
    let names = missing
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if missing.len() > 1 {
        format!("parameters {names} have no default")
    } else {
        format!("parameter {names} has no default")
    }
}

/// A parameter the caller may set.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// Name.
    pub name: String,
    /// Default value; the caller must supply one when `None`.
    pub default: Option<String>,
    /// Description.
    pub description: String,
    /// Where it was declared.
    pub span: Span,
}

/// A constant.
#[derive(Debug, Clone)]
pub struct Constant {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Where it was declared.
    pub span: Span,
}

/// The phase names a document may use.
pub const PHASE_NAMES: [&str; 4] = ["build", "validate", "test", "container-host-test"];

/// A phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// `build`, `validate`, `test` or `container-host-test`.
    pub name: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Where it was written.
    pub span: Span,
}

/// What happens when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Stop the run; the document fails.
    #[default]
    Abort,
    /// Go on with the next step; the document fails.
    Continue,
    /// Go on with the next step; the document still succeeds.
    Ignore,
}

impl OnFailure {
    /// The document spelling.
    pub fn name(self) -> &'static str {
        match self {
            OnFailure::Abort => "Abort",
            OnFailure::Continue => "Continue",
            OnFailure::Ignore => "Ignore",
        }
    }
}

/// Default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 7200;

/// A step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Name, unique in its phase.
    pub name: String,
    /// The action module.
    pub action: Action,
    /// What a failure does.
    pub on_failure: OnFailure,
    /// Time limit for one attempt (all iterations); `None` means no limit (`-1`).
    pub timeout_seconds: Option<u64>,
    /// Attempts before the step fails.
    pub max_attempts: u32,
    /// The `if` construct.
    pub condition: Option<IfClause>,
    /// The `loop` construct.
    pub looping: Option<Loop>,
    /// The inputs as written (references are expanded when the step runs).
    pub inputs: Option<Node>,
    /// For Assert: the condition its inputs hold.
    pub assertion: Option<Condition>,
    /// Where the step was written.
    pub span: Span,
}

/// A loop.
#[derive(Debug, Clone)]
pub struct Loop {
    /// Its name, for `{{ name.value }}`.
    pub name: Option<String>,
    /// What it iterates over.
    pub kind: LoopKind,
    /// Where it was written.
    pub span: Span,
}

/// What a loop iterates over.
#[derive(Debug, Clone)]
pub enum LoopKind {
    /// Integers from `start` to `end` inclusive, by `update_by` (literals or references).
    For {
        /// First value.
        start: Node,
        /// Last value (inclusive).
        end: Node,
        /// Step.
        update_by: Node,
    },
    /// The items of a list.
    ForEach(Vec<Node>),
    /// The parts of a string split at a delimiter.
    ForEachDelimited {
        /// The string.
        list: Node,
        /// The delimiter character.
        delimiter: char,
    },
}

/// Delimiters a `forEach` string list may use.
pub const DELIMITERS: &[char] = &['.', ',', ';', ':', '\n', '\t', ' ', '-', '_'];

/// `then` / `else` of an `if`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    /// Run the step.
    Execute,
    /// Skip it (counts as success).
    Skip,
    /// Fail it.
    Abort,
}

/// The `if` construct.
#[derive(Debug, Clone)]
pub struct IfClause {
    /// The expression.
    pub condition: Condition,
    /// What to do when true (default Execute).
    pub then: StepAction,
    /// What to do when false (default Skip).
    pub otherwise: StepAction,
}

/// A condition expression (of `if`, or of the Assert action).
#[derive(Debug, Clone)]
pub enum Condition {
    /// All true (evaluated in order, stops at the first false).
    And(Vec<Condition>),
    /// Any true (evaluated in order, stops at the first true).
    Or(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// A comparison.
    Compare {
        /// The operator.
        op: CompareOp,
        /// The operator's own operand (`stringEquals: X`).
        baseline: Node,
        /// The `value` (or `path`) operand, when the operator takes one.
        operand: Option<Node>,
        /// Where it was written.
        span: Span,
    },
}

/// Deepest nesting of `and` / `or` / `not`.
pub const MAX_CONDITION_DEPTH: usize = 4;

/// Which second operand an operator takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// None (`stringIsEmpty: X`, `fileExists: PATH`).
    None,
    /// `value:`.
    Value,
    /// `path:` (file digests).
    Path,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CompareOp {
    StringIsEmpty,
    StringIsWhitespace,
    StringEquals,
    StringLessThan,
    StringLessThanEquals,
    StringGreaterThan,
    StringGreaterThanEquals,
    PatternMatches,
    NumberEquals,
    NumberLessThan,
    NumberLessThanEquals,
    NumberGreaterThan,
    NumberGreaterThanEquals,
    BinaryExists,
    FileExists,
    FolderExists,
    FileMD5Equals,
    FileSHA1Equals,
    FileSHA256Equals,
    FileSHA512Equals,
}

/// Every comparison operator.
pub const COMPARE_OPS: [CompareOp; 20] = [
    CompareOp::StringIsEmpty,
    CompareOp::StringIsWhitespace,
    CompareOp::StringEquals,
    CompareOp::StringLessThan,
    CompareOp::StringLessThanEquals,
    CompareOp::StringGreaterThan,
    CompareOp::StringGreaterThanEquals,
    CompareOp::PatternMatches,
    CompareOp::NumberEquals,
    CompareOp::NumberLessThan,
    CompareOp::NumberLessThanEquals,
    CompareOp::NumberGreaterThan,
    CompareOp::NumberGreaterThanEquals,
    CompareOp::BinaryExists,
    CompareOp::FileExists,
    CompareOp::FolderExists,
    CompareOp::FileMD5Equals,
    CompareOp::FileSHA1Equals,
    CompareOp::FileSHA256Equals,
    CompareOp::FileSHA512Equals,
];

impl CompareOp {
    /// The key as documented.
    pub fn key(self) -> &'static str {
        match self {
            CompareOp::StringIsEmpty => "stringIsEmpty",
            CompareOp::StringIsWhitespace => "stringIsWhitespace",
            CompareOp::StringEquals => "stringEquals",
            CompareOp::StringLessThan => "stringLessThan",
            CompareOp::StringLessThanEquals => "stringLessThanEquals",
            CompareOp::StringGreaterThan => "stringGreaterThan",
            CompareOp::StringGreaterThanEquals => "stringGreaterThanEquals",
            CompareOp::PatternMatches => "patternMatches",
            CompareOp::NumberEquals => "numberEquals",
            CompareOp::NumberLessThan => "numberLessThan",
            CompareOp::NumberLessThanEquals => "numberLessThanEquals",
            CompareOp::NumberGreaterThan => "numberGreaterThan",
            CompareOp::NumberGreaterThanEquals => "numberGreaterThanEquals",
            CompareOp::BinaryExists => "binaryExists",
            CompareOp::FileExists => "fileExists",
            CompareOp::FolderExists => "folderExists",
            CompareOp::FileMD5Equals => "fileMD5Equals",
            CompareOp::FileSHA1Equals => "fileSHA1Equals",
            CompareOp::FileSHA256Equals => "fileSHA256Equals",
            CompareOp::FileSHA512Equals => "fileSHA512Equals",
        }
    }

    /// Finds an operator by key, ignoring case (the guide itself writes `stringlessThan`).
    pub fn parse(key: &str) -> Option<CompareOp> {
        COMPARE_OPS
            .iter()
            .copied()
            .find(|op| op.key().eq_ignore_ascii_case(key))
    }

    /// Which second operand it takes.
    pub fn operand(self) -> Operand {
        use CompareOp::*;
        match self {
            StringIsEmpty | StringIsWhitespace | BinaryExists | FileExists | FolderExists => {
                Operand::None
            }
            FileMD5Equals | FileSHA1Equals | FileSHA256Equals | FileSHA512Equals => Operand::Path,
            _ => Operand::Value,
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}
