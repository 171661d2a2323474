//! Deleting a manifest by digest: oci-client has no DELETE, so this request is kiln's own.

use oci_client::errors::{OciEnvelope, OciErrorCode};

use super::auth::{is_insufficient_scope, parse_challenge, Credential};
use super::errors::{envelope_text, http_error, Action};
use super::remote::Remote;
use super::{Deleted, RegistryError};

impl Remote {
    /// Deletes a manifest by digest. oci-client has no DELETE, so this is kiln's own request,
    /// and it answers the registry's auth challenge itself.
    pub(super) async fn delete(&self, digest: &str) -> Result<Deleted, RegistryError> {
        let action = Action::DeleteManifest(digest);
        let url = format!(
            "{}://{}/v2/{}/manifests/{digest}",
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let http = self.http_client()?;
        let mut credential = None;
        // An anonymous request first, as oci-client does: its 401 says which auth the registry
        // wants (basic, or a token from where), and credentials go only where one asked.
        let response = loop {
            let request = match &credential {
                None => http.delete(&url),
                Some(Credential::Basic(user, password)) => {
                    http.delete(&url).basic_auth(user, Some(password))
                }
                Some(Credential::Bearer(token)) => http.delete(&url).bearer_auth(token),
            };
            let response = request
                .send()
                .await
                .map_err(|e| self.error(e.into(), action))?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || credential.is_some() {
                break response;
            }
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match self.answer(&http, challenge).await? {
                Some(answer) => credential = Some(answer),
                None => break response,
            }
        };
        let status = response.status();
        // A token registry that knows the user but grants no delete answers 401 with
        // `insufficient_scope`: that is missing access, not a wrong password.
        let insufficient = status == reqwest::StatusCode::UNAUTHORIZED
            && self.username.is_some()
            && response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_insufficient_scope);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        if insufficient {
            return Err(RegistryError::Denied {
                registry: self.registry.clone(),
                image: self.image.clone(),
                action: action.access(),
                username: self.username.clone(),
            });
        }
        let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
        let has = |code: OciErrorCode| {
            envelope
                .as_ref()
                .is_some_and(|env| env.errors.iter().any(|e| e.code == code))
        };
        if status.is_success() {
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                "manifest deleted, with every tag that named it"
            );
            return Ok(Deleted::Deleted {
                digest: digest.to_string(),
            });
        }
        if status == reqwest::StatusCode::METHOD_NOT_ALLOWED || has(OciErrorCode::Unsupported) {
            let detail = match envelope.as_ref().map(envelope_text) {
                Some(said) if !said.is_empty() => format!("it answered {status}: {said}"),
                _ => format!("it answered {status}"),
            };
            // Info, not a warning: whether a kept manifest matters is the caller's to say.
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                %detail,
                "the registry does not delete manifests; it keeps this one"
            );
            return Ok(Deleted::Unsupported {
                digest: digest.to_string(),
                detail,
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND
            || has(OciErrorCode::ManifestUnknown)
            || has(OciErrorCode::NameUnknown)
        {
            tracing::info!(
                registry = %self.registry,
                image = %self.image,
                manifest = digest,
                "no such manifest: nothing to delete"
            );
            return Ok(Deleted::NotFound);
        }
        Err(self.error(http_error(status, &body, envelope, &url), action))
    }
}
