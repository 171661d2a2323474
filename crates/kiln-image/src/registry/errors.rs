//! Wording failures for a person: what a registry call was for ([`Action`]), and turning
//! oci-client's errors, and the answers of kiln's own requests, into [`RegistryError`]s that
//! say who answered what and what to do.

use std::error::Error as _;

use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use serde_json::Value;

use super::remote::Remote;
use super::RegistryError;

/// How much of a registry's non-JSON error answer (an HTML page from a proxy, say) an error
/// message quotes.
const QUOTED_BODY: usize = 300;

/// What a registry call was for, to word its errors.
#[derive(Clone, Copy)]
pub(super) enum Action<'a> {
    PullManifest,
    PullBlob(&'a str),
    CheckBlob(&'a str),
    PushBlob(&'a str),
    PushManifest,
    CheckManifest,
    /// Which manifest a tag names (a 404 is an answer, not an error).
    ResolveTag,
    DeleteManifest(&'a str),
    /// A bearer token from the registry's token service, for a delete.
    DeleteToken,
    /// A cross-repository mount of a blob.
    MountBlob(&'a str),
    /// Asking the registry how much of an upload it has.
    UploadStatus(&'a str),
    /// Listing the repository's tags.
    ListTags,
    /// A bearer token from the registry's token service, for a blob or manifest request.
    Token,
}

impl Action<'_> {
    pub(super) fn doing(&self) -> String {
        match self {
            Action::PullManifest => "fetching the manifest".into(),
            Action::PullBlob(d) => format!("downloading blob {d}"),
            Action::CheckBlob(d) => format!("checking for blob {d}"),
            Action::PushBlob(d) => format!("uploading blob {d}"),
            Action::PushManifest => "pushing the manifest".into(),
            Action::CheckManifest => "checking the pushed manifest".into(),
            Action::ResolveTag => "looking up the manifest digest".into(),
            Action::DeleteManifest(d) => format!("deleting manifest {d}"),
            Action::DeleteToken => "getting a token to delete with".into(),
            Action::MountBlob(d) => format!("mounting blob {d} from another repository"),
            Action::UploadStatus(d) => format!("asking how much of blob {d} was uploaded"),
            Action::ListTags => "listing the tags".into(),
            Action::Token => "getting a token from the registry's token service".into(),
        }
    }

    /// The access a 403 refused, in the words of [`RegistryError::Denied`].
    pub(super) fn access(&self) -> &'static str {
        match self {
            Action::CheckBlob(_)
            | Action::PushBlob(_)
            | Action::PushManifest
            | Action::MountBlob(_)
            | Action::UploadStatus(_)
            | Action::Token => "push",
            Action::DeleteManifest(_) | Action::DeleteToken => "delete",
            Action::PullManifest
            | Action::PullBlob(_)
            | Action::CheckManifest
            | Action::ResolveTag
            | Action::ListTags => "pull",
        }
    }
}

impl Remote {
    pub(super) fn unsupported(&self, message: String) -> RegistryError {
        RegistryError::Unsupported {
            registry: self.registry.clone(),
            image: self.image.clone(),
            message,
        }
    }

    pub(super) fn protocol(&self, doing: &str, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            image: self.image.clone(),
            doing: doing.to_string(),
            message,
        }
    }

    pub(super) fn mismatch(&self, what: &str, expected: &str, actual: &str) -> RegistryError {
        RegistryError::DigestMismatch {
            registry: self.registry.clone(),
            image: self.image.clone(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// An error in the middle of a blob download (oci-client's own digest check included).
    pub(super) fn stream_error(&self, e: std::io::Error, digest: &str) -> RegistryError {
        if let Some(DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>())
        {
            return self.mismatch(&format!("blob {digest}"), expected, actual);
        }
        self.protocol(
            &Action::PullBlob(digest).doing(),
            format!("the download broke off: {}; try again", error_chain(&e)),
        )
    }

    /// Words an oci-client error for a person: who answered what, and what to do.
    pub(super) fn error(&self, e: OciDistributionError, action: Action<'_>) -> RegistryError {
        let (status, said) = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => (Some(401), String::new()),
            OciDistributionError::ServerError { code, message, .. } => {
                (Some(*code), message.trim().to_string())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let status = envelope.errors.iter().find_map(|err| match err.code {
                    OciErrorCode::Unauthorized => Some(401),
                    OciErrorCode::Denied => Some(403),
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound => Some(404),
                    OciErrorCode::Toomanyrequests => Some(429),
                    _ => None,
                });
                (status, envelope_text(envelope))
            }
            OciDistributionError::RequestError(r) => {
                (r.status().map(|s| s.as_u16()), String::new())
            }
            _ => (None, String::new()),
        };
        if let OciDistributionError::DigestError(DigestError::VerificationError {
            expected,
            actual,
        }) = &e
        {
            let what = match action {
                Action::PullBlob(d)
                | Action::CheckBlob(d)
                | Action::PushBlob(d)
                | Action::MountBlob(d)
                | Action::UploadStatus(d) => format!("blob {d}"),
                Action::PullManifest
                | Action::PushManifest
                | Action::CheckManifest
                | Action::ResolveTag
                | Action::DeleteManifest(_)
                | Action::DeleteToken
                | Action::ListTags
                | Action::Token => "the manifest".to_string(),
            };
            return self.mismatch(&what, expected, actual);
        }
        match status {
            Some(401) => {
                return RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    username: self.username.clone(),
                }
            }
            Some(403) => {
                return RegistryError::Denied {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    action: action.access(),
                    username: self.username.clone(),
                }
            }
            Some(404) if matches!(action, Action::PullManifest | Action::ResolveTag) => {
                return RegistryError::NotFound {
                    registry: self.registry.clone(),
                    image: self.image.clone(),
                    detail: if said.is_empty() {
                        "it answered 404".into()
                    } else {
                        format!("it answered 404, {said}")
                    },
                }
            }
            _ => {}
        }
        if let OciDistributionError::RequestError(r) = &e {
            if r.status().is_none() && (r.is_connect() || r.is_timeout() || r.is_request()) {
                let hint = if self.scheme == "https" {
                    "check the address and that the registry runs; if it serves plain HTTP \
                     (no TLS), set insecure_http"
                } else if self.insecure_http {
                    "check the address and that the registry runs; if it serves HTTPS, unset \
                     insecure_http"
                } else {
                    "check the address and that the registry runs (kiln speaks plain HTTP to \
                     registries on loopback)"
                };
                return RegistryError::Unreachable {
                    registry: self.registry.clone(),
                    url: r.url().map_or_else(
                        || format!("{}://{}", self.scheme, self.registry),
                        |u| u.to_string(),
                    ),
                    // reqwest's own message repeats the URL; the causes say what happened.
                    reason: r.source().map_or_else(|| r.to_string(), error_chain),
                    hint: hint.into(),
                };
            }
        }
        let message = match (status, said.is_empty()) {
            (Some(code), true) => format!("it answered {code}"),
            (Some(code), false) => format!("it answered {code}: {said}"),
            (None, _) => error_chain(&e),
        };
        let message = match status {
            Some(429) => format!("{message}; the registry limits requests: wait and try again"),
            Some(code) if code >= 500 => {
                format!("{message}; the registry has a problem: try again later")
            }
            _ => message,
        };
        self.protocol(&action.doing(), message)
    }
}

/// An answer kiln's own requests did not expect, as oci-client words one, so that
/// [`Remote::error`] says what it means for a person.
pub(super) fn http_error(
    status: reqwest::StatusCode,
    body: &[u8],
    envelope: Option<OciEnvelope>,
    url: &str,
) -> OciDistributionError {
    let url = url.to_string();
    match (status, envelope) {
        (reqwest::StatusCode::UNAUTHORIZED, _) => OciDistributionError::UnauthorizedError { url },
        (_, Some(envelope)) => OciDistributionError::RegistryError { envelope, url },
        (_, None) => {
            let text = String::from_utf8_lossy(body);
            let mut message: String = text.chars().take(QUOTED_BODY).collect();
            if message.len() < text.len() {
                message.push_str("...");
            }
            OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message,
            }
        }
    }
}

/// What a registry's error envelope says, `CODE: message; CODE: message`.
pub(super) fn envelope_text(envelope: &OciEnvelope) -> String {
    envelope
        .errors
        .iter()
        .map(|err| match serde_json::to_value(&err.code) {
            Ok(Value::String(code)) if !err.message.is_empty() => {
                format!("{code}: {}", err.message)
            }
            Ok(Value::String(code)) => code,
            _ => err.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its causes, `a: b: c` (reqwest hides the interesting part in the sources).
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_answers_are_quoted_short() {
        let page = "<html>".repeat(200);
        let e = http_error(
            reqwest::StatusCode::BAD_GATEWAY,
            page.as_bytes(),
            None,
            "https://auth.example.com/token?service=s&scope=x",
        );
        match e {
            OciDistributionError::ServerError { code, url, message } => {
                assert_eq!(code, 502);
                assert_eq!(url, "https://auth.example.com/token?service=s&scope=x");
                assert_eq!(message.chars().count(), QUOTED_BODY + 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            http_error(reqwest::StatusCode::UNAUTHORIZED, b"", None, "http://x/"),
            OciDistributionError::UnauthorizedError { .. }
        ));
    }

    #[test]
    fn denied_delete_says_delete() {
        let e = RegistryError::Denied {
            registry: "r.example.com".into(),
            image: "kiln/app:1.0-7".into(),
            action: Action::DeleteManifest("sha256:00").access(),
            username: Some("ci".into()),
        };
        assert_eq!(
            e.to_string(),
            "registry r.example.com denied delete access to kiln/app:1.0-7: user `ci` may not \
             delete it; check the repository name, or ask the registry's administrators for \
             delete access"
        );
    }
}
