//! Why a resource operation failed, with the Image Builder error each failure is.

use std::fmt;

use kiln_store::StoreError as DbError;
use kiln_yaml::{Diagnostic, Node, Severity};

use crate::store::StoreError;

/// The Image Builder error (the API model's exception shape) a failure is, so that an API can
/// answer with it without reading messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A field has a value kiln cannot take.
    InvalidParameterValue,
    /// The request cannot be read as a request (not YAML or JSON, not a mapping), or what it
    /// asks cannot be done with what it names.
    InvalidRequest,
    /// `semanticVersion` is not `MAJOR.MINOR.PATCH` within bounds.
    InvalidVersionNumber,
    /// Nothing the caller can see matches a reference.
    ResourceNotFound,
    /// A resource with that name (and version) exists with other content.
    ResourceAlreadyExists,
    /// Other resources use the resource being deleted.
    ResourceDependency,
    /// A client token was used before with another request.
    IdempotentParameterMismatch,
    /// The caller may read the resource (it is shared with it) but not change it.
    Forbidden,
    /// kiln failed (its store); retrying may succeed.
    Service,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidParameterValue,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidVersionNumber,
        ErrorCode::ResourceNotFound,
        ErrorCode::ResourceAlreadyExists,
        ErrorCode::ResourceDependency,
        ErrorCode::IdempotentParameterMismatch,
        ErrorCode::Forbidden,
        ErrorCode::Service,
    ];

    /// The exception's name in the Image Builder API model (`x-amzn-ErrorType`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameterValue => "InvalidParameterValueException",
            ErrorCode::InvalidRequest => "InvalidRequestException",
            ErrorCode::InvalidVersionNumber => "InvalidVersionNumberException",
            ErrorCode::ResourceNotFound => "ResourceNotFoundException",
            ErrorCode::ResourceAlreadyExists => "ResourceAlreadyExistsException",
            ErrorCode::ResourceDependency => "ResourceDependencyException",
            ErrorCode::IdempotentParameterMismatch => "IdempotentParameterMismatchException",
            ErrorCode::Forbidden => "ForbiddenException",
            ErrorCode::Service => "ServiceException",
        }
    }

    /// The HTTP status the model gives the exception. Only kiln's own failures are 5xx: SDKs
    /// retry those, and a client's mistake must not be retried.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ResourceNotFound => 404,
            ErrorCode::Forbidden => 403,
            ErrorCode::Service => 500,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The field it is about (`components[1].componentArn`); `None` for the whole request.
    pub field: Option<String>,
    /// As the CLI prints it: `FILE:LINE:COL: error: ...`, the line and a caret.
    pub rendered: String,
}

/// Everything wrong with a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Which error it is.
    pub code: ErrorCode,
    /// Every problem found (warnings too), in document order.
    pub problems: Vec<Problem>,
    text: String,
}

impl Invalid {
    /// The problems of a request's text named `name`; `root` (when it parsed) gives the
    /// fields the diagnostics' spans are about.
    pub fn from_diagnostics(
        code: ErrorCode,
        name: &str,
        text: &str,
        root: Option<&Node>,
        diagnostics: Vec<Diagnostic>,
    ) -> Invalid {
        let problems: Vec<Problem> = diagnostics
            .iter()
            .map(|d| Problem {
                severity: d.severity,
                message: d.message.clone(),
                hint: d.hint.clone(),
                field: match (root, d.span) {
                    (Some(root), Some(span)) => crate::request::field_path(root, span),
                    _ => None,
                },
                rendered: d.render(name, text).to_string(),
            })
            .collect();
        let text = problems.iter().map(|p| p.rendered.as_str()).collect();
        Invalid {
            code,
            problems,
            text,
        }
    }

    /// One problem of the whole request, told in a sentence.
    pub fn message(code: ErrorCode, message: impl Into<String>) -> Invalid {
        let message = message.into();
        Invalid {
            code,
            problems: vec![Problem {
                severity: Severity::Error,
                message: message.clone(),
                hint: None,
                field: None,
                rendered: message.clone(),
            }],
            text: message,
        }
    }

    /// The same problems under a heading (what they are in), for the CLI's text.
    pub(crate) fn with_heading(mut self, heading: &str) -> Invalid {
        self.text = format!("{heading}\n{}", self.text);
        self
    }

    /// The same problems, each about `field`.
    pub(crate) fn about(mut self, field: &str) -> Invalid {
        for p in &mut self.problems {
            p.field = Some(field.to_string());
        }
        self
    }

    /// The code input problems imply: a version out of shape is its own error, and so is a
    /// reference to something that does not exist (Image Builder's "at least one of the
    /// resources referenced by your request does not exist").
    pub(crate) fn code_of(problems: &[Problem]) -> ErrorCode {
        let errors: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        if errors.is_empty() {
            ErrorCode::InvalidParameterValue
        } else if errors
            .iter()
            .all(|p| p.field.as_deref() == Some("semanticVersion"))
        {
            ErrorCode::InvalidVersionNumber
        } else if errors.iter().all(|p| is_missing(&p.message)) {
            ErrorCode::ResourceNotFound
        } else {
            ErrorCode::InvalidParameterValue
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a resource operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The request has problems (each with its field; rendered with FILE:LINE:COL).
    #[error("{0}")]
    Invalid(Box<Invalid>),
    /// A reference (an ARN, or `NAME[/VERSION[/BUILD]]`) is not well-formed.
    #[error("{0}")]
    BadReference(String),
    /// Nothing the caller can see matches a reference.
    #[error("{0}")]
    NotFound(String),
    /// A resource with that name (and version) exists with other content.
    #[error("{0}")]
    Exists(String),
    /// Others use it.
    #[error("{0}")]
    InUse(String),
    /// A client token was used before with another request.
    #[error("{0}")]
    TokenMismatch(String),
    /// The resource is shared with the caller, who may read it but not change it.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbError> for ResourceError {
    fn from(e: DbError) -> Self {
        ResourceError::Store(StoreError::from(e))
    }
}

impl From<Invalid> for ResourceError {
    fn from(i: Invalid) -> Self {
        ResourceError::Invalid(Box::new(i))
    }
}

impl ResourceError {
    /// Which Image Builder error it is.
    pub fn code(&self) -> ErrorCode {
        match self {
            ResourceError::Invalid(i) => i.code,
            ResourceError::BadReference(_) => ErrorCode::InvalidParameterValue,
            ResourceError::NotFound(_) => ErrorCode::ResourceNotFound,
            ResourceError::Exists(_) => ErrorCode::ResourceAlreadyExists,
            ResourceError::InUse(_) => ErrorCode::ResourceDependency,
            ResourceError::TokenMismatch(_) => ErrorCode::IdempotentParameterMismatch,
            ResourceError::Forbidden(_) => ErrorCode::Forbidden,
            // The store checks tokens, references and keys itself, in its transaction: what
            // it refuses is the caller's doing, not a failure.
            ResourceError::Store(StoreError::State(e)) => match e {
                DbError::TokenMismatch { .. } => ErrorCode::IdempotentParameterMismatch,
                DbError::NotFound { .. } => ErrorCode::ResourceNotFound,
                DbError::InUse { .. } => ErrorCode::ResourceDependency,
                DbError::AlreadyExists { .. } => ErrorCode::ResourceAlreadyExists,
                _ => ErrorCode::Service,
            },
            ResourceError::Store(_) => ErrorCode::Service,
        }
    }

    /// The problems of an invalid request (empty for other errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ResourceError::Invalid(i) => &i.problems,
            _ => &[],
        }
    }
}

/// What a request's reference to a missing resource is told: `no NOUN matches REFERENCE`.
pub(crate) fn missing(noun: &str, reference: &str) -> String {
    format!("no {noun} matches {reference}")
}

fn is_missing(message: &str) -> bool {
    message.starts_with("no ") && message.contains(" matches ")
}
