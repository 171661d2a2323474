//! Errors as Image Builder answers them: a 4xx (5xx only for kiln's own failures, which SDKs
//! retry), the `x-amzn-ErrorType` header and a `{"__type", "message"}` body.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::resources::{ErrorCode, ResourceError};
use kiln_yaml::Severity;

use crate::model::{FieldError, Model};

/// An error answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The exception's name (`ResourceNotFoundException`).
    pub code: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with the status the model gives its code (400 when the model has none).
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            status: Model::get().error_status(code).unwrap_or(400),
            message: message.into(),
        }
    }

    /// An error with its own status (authentication errors are not in the model).
    pub fn with_status(code: &str, status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            status,
            message: message.into(),
        }
    }

    /// `InvalidParameterValueException`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidParameterValueException", message)
    }

    /// `InvalidRequestException`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidRequestException", message)
    }

    /// `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new("ResourceNotFoundException", message)
    }

    /// `ServiceException`: kiln failed; the cause is logged, not sent.
    pub fn service(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "request failed");
        ApiError::new(
            "ServiceException",
            "kiln failed to carry out the request; its log says why",
        )
    }
}

impl ApiError {
    /// A request member that is not what the model says, as `op` answers it: the tag
    /// operations' InvalidParameterException, else InvalidParameterValueException for a value
    /// out of range and InvalidRequestException for a malformed request.
    pub fn field(op: crate::ops::Op, e: FieldError) -> ApiError {
        use crate::ops::Op;
        let message = format!("{}: {}", e.field, e.message);
        match op {
            Op::TagResource | Op::UntagResource | Op::ListTagsForResource => {
                ApiError::new("InvalidParameterException", message)
            }
            _ if e.value => ApiError::invalid(message),
            _ => ApiError::bad_request(message),
        }
    }
}

impl From<ResourceError> for ApiError {
    fn from(e: ResourceError) -> Self {
        let code = e.code();
        if code == ErrorCode::Service {
            return ApiError::service(&e);
        }
        let message = match &e {
            ResourceError::Invalid(_) => {
                let parts: Vec<String> = e
                    .problems()
                    .iter()
                    .filter(|p| p.severity == Severity::Error)
                    .map(|p| {
                        let mut s = match &p.field {
                            Some(f) => format!("{f}: {}", p.message),
                            None => p.message.clone(),
                        };
                        if let Some(h) = &p.hint {
                            s.push_str(&format!(" ({h})"));
                        }
                        s
                    })
                    .collect();
                if parts.is_empty() {
                    e.to_string()
                } else {
                    parts.join("; ")
                }
            }
            _ => e.to_string(),
        };
        ApiError::new(code.as_str(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::json!({"__type": self.code, "message": self.message});
        let mut r = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.code) {
            r.headers_mut().insert("x-amzn-ErrorType", v);
        }
        r
    }
}
