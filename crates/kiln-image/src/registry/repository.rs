//! [`Repository`]: one repository of a registry, spoken to blob by blob and manifest by
//! manifest with kiln's own HTTP requests, each authenticated (the credential cached across
//! calls) and retried when it fails transiently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use oci_client::errors::{OciEnvelope, OciErrorCode};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::digest;
use crate::oci;

use super::auth::{is_insufficient_scope, parse_challenge, Credential};
use super::convert::ACCEPT;
use super::errors::{http_error, Action};
use super::remote::Remote;
use super::retry::{transient_error, transient_status, RetryPolicy};
use super::{names_tag_or_digest, parse_reference, Reference, RegistryError, RegistryOptions};

/// The media type of an OCI image index (what the referrers API answers).
const OCI_INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Upload piece size: each PATCH of a chunked upload carries this much (the last one less),
/// and a failed upload is resumed from the registry's count, so at most one piece is sent
/// again per failure.
pub const PIECE_SIZE: u64 = 8 << 20;

/// How many tags one `/tags/list` page asks for.
const TAGS_PAGE: usize = 1000;

/// One repository (`HOST[:PORT]/REPO`) of a registry, for moving blobs and manifests one at a
/// time: what distribution builds pushes of images and chunked disk artifacts from.
///
/// Every request answers the registry's basic or bearer-token challenge once and keeps the
/// credential for the next requests; transient failures are retried as the
/// [`RetryPolicy`] says. Registries on loopback, or with
/// [`RegistryOptions::insecure_http`], are spoken to over plain HTTP.
pub struct Repository {
    pub(super) remote: Remote,
    pub(super) http: reqwest::Client,
    /// `SCHEME://HOST/v2/REPO`.
    pub(super) base: String,
    /// `HOST[:PORT]/REPO`.
    name: String,
    credential: Mutex<Option<Credential>>,
    pub(super) retry: RetryPolicy,
    pub(super) piece_size: u64,
    pub(super) counters: Counters,
}

/// Running counts behind [`RepositoryStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) retries: AtomicU64,
    pub(super) resumes: AtomicU64,
    pub(super) restarts: AtomicU64,
}

/// What a [`Repository`] had to do to get its requests through, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositoryStats {
    /// Requests sent again after a transient failure (uploaded pieces included).
    pub retries: u64,
    /// Uploads continued from the offset the registry reported after a failed piece.
    pub resumes: u64,
    /// Uploads begun again from the start because the registry lost or refused the session.
    pub restarts: u64,
}

impl Repository {
    /// Opens `HOST[:PORT]/REPO` (no tag, no digest; a `docker://` prefix is allowed). No
    /// request is made: a wrong address or credentials show at the first call.
    pub fn open(repository: &str, opts: &RegistryOptions) -> Result<Repository, RegistryError> {
        if names_tag_or_digest(repository) {
            return Err(RegistryError::BadReference {
                input: repository.to_string(),
                reason: "a repository is named without a tag or digest".into(),
            });
        }
        let reference = parse_reference(repository)?;
        let name = reference.repository().to_string();
        let mut remote = Remote::new(reference, opts)?;
        remote.image = name;
        Repository::from_remote(remote)
    }

    /// The repository of `remote`, whose image name errors keep (a push names its tag).
    pub(super) fn from_remote(remote: Remote) -> Result<Repository, RegistryError> {
        let http = remote.http_client()?;
        let base = format!(
            "{}://{}/v2/{}",
            remote.scheme,
            remote.reference.resolve_registry(),
            remote.reference.repository()
        );
        Ok(Repository {
            name: format!(
                "{}/{}",
                remote.reference.registry(),
                remote.reference.repository()
            ),
            http,
            base,
            credential: Mutex::new(None),
            retry: RetryPolicy::default(),
            piece_size: PIECE_SIZE,
            counters: Counters::default(),
            remote,
        })
    }

    /// Retries as `policy` says instead of [`RetryPolicy::default`].
    pub fn with_retry(mut self, policy: RetryPolicy) -> Repository {
        self.retry = policy;
        self
    }

    /// Uploads in pieces of `bytes` (at least 1) instead of [`PIECE_SIZE`]; tests make
    /// it small to see uploads resumed.
    pub fn with_piece_size(mut self, bytes: u64) -> Repository {
        self.piece_size = bytes.max(1);
        self
    }

    /// `HOST[:PORT]/REPO`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `REPO`, the path inside the registry, as `mount_from` names other repositories.
    pub fn path(&self) -> &str {
        self.remote.reference.repository()
    }

    /// Retries, resumes and restarts so far.
    pub fn stats(&self) -> RepositoryStats {
        RepositoryStats {
            retries: self.counters.retries.load(Ordering::Relaxed),
            resumes: self.counters.resumes.load(Ordering::Relaxed),
            restarts: self.counters.restarts.load(Ordering::Relaxed),
        }
    }

    /// A URL of the repository: `tail` after `/v2/REPO/`.
    pub(super) fn url(&self, tail: &str) -> String {
        format!("{}/{tail}", self.base)
    }

    /// Sends one request with the cached credential (answering a 401's challenge once, and
    /// keeping what answered it), retrying transient failures when `retry` says so. The
    /// answer is returned whatever its status, but a transport failure is an error.
    pub(super) async fn send<F>(
        &self,
        action: Action<'_>,
        method: Method,
        url: &str,
        decorate: F,
        retry: bool,
    ) -> Result<Response, RegistryError>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let mut failures = 0u32;
        loop {
            let more = retry && self.retry.again(failures + 1);
            let reason = match self.attempt(action, &method, url, &decorate).await? {
                Err(e) if more && transient_error(&e) => super::errors::error_chain(&e),
                Err(e) => return Err(self.remote.error(e.into(), action)),
                Ok(response) if more && transient_status(response.status()) => {
                    format!("it answered {}", response.status())
                }
                Ok(response) => return Ok(response),
            };
            failures += 1;
            self.pause(failures, action, &reason).await;
        }
    }

    /// One attempt at a request: with the cached credential, and once more with what answers
    /// the registry's challenge when it answers 401. The outer error is a failure to get a
    /// credential; the inner one the request's own transport failure, for the caller to judge.
    pub(super) async fn attempt<F>(
        &self,
        action: Action<'_>,
        method: &Method,
        url: &str,
        decorate: &F,
    ) -> Result<Result<Response, reqwest::Error>, RegistryError>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let mut answered = false;
        loop {
            let mut request = decorate(self.http.request(method.clone(), url));
            request = match self.cached() {
                None => request,
                Some(Credential::Basic(user, password)) => request.basic_auth(user, Some(password)),
                Some(Credential::Bearer(token)) => request.bearer_auth(token),
            };
            let response = match request.send().await {
                Err(e) => return Ok(Err(e)),
                Ok(response) => response,
            };
            if response.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(Ok(response));
            }
            answered = true;
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let access = if matches!(*method, Method::GET | Method::HEAD) {
                "pull"
            } else {
                "pull,push"
            };
            let scope = format!("repository:{}:{access}", self.path());
            match self
                .remote
                .answer_for(&self.http, challenge, Action::Token, &scope)
                .await?
            {
                Some(answer) => *self.lock() = Some(answer),
                None => return Ok(Ok(response)),
            }
            tracing::debug!(
                registry = %self.remote.registry,
                repository = self.path(),
                doing = %action.doing(),
                "answered the registry's auth challenge"
            );
        }
    }

    /// Waits before the next attempt after `failures` transient ones, and counts the retry.
    pub(super) async fn pause(&self, failures: u32, action: Action<'_>, reason: &str) {
        let wait = self.retry.delay(failures);
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            registry = %self.remote.registry,
            repository = self.path(),
            doing = %action.doing(),
            reason,
            failures,
            wait_ms = wait.as_millis() as u64,
            "transient failure; retrying"
        );
        tokio::time::sleep(wait).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Credential>> {
        self.credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self) -> Option<Credential> {
        self.lock().clone()
    }

    /// The error an unexpected answer means, for a person (its body read for the registry's
    /// own words).
    pub(super) async fn fail(
        &self,
        at: &Remote,
        action: Action<'_>,
        url: &str,
        response: Response,
    ) -> RegistryError {
        let status = response.status();
        let insufficient = status == StatusCode::UNAUTHORIZED
            && at.username.is_some()
            && response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_insufficient_scope);
        if insufficient {
            return RegistryError::Denied {
                registry: at.registry.clone(),
                image: at.image.clone(),
                action: action.access(),
                username: at.username.clone(),
            };
        }
        let body = response.bytes().await.unwrap_or_default();
        let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
        at.error(http_error(status, &body, envelope, url), action)
    }

    /// Whether the repository has the blob (a HEAD).
    pub async fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let action = Action::CheckBlob(digest);
        check_digest(&self.remote, digest, action)?;
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(action, Method::HEAD, &url, |r| r, true).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&self.remote, action, &url, response).await),
        }
    }

    /// `length` bytes of the blob from `offset` (a ranged GET, following a redirect to the
    /// registry's storage); a registry that ignores the range and sends the whole blob has it
    /// cut out. Fewer bytes come back only when the blob ends sooner.
    pub async fn read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let action = Action::PullBlob(digest);
        check_digest(&self.remote, digest, action)?;
        if length == 0 {
            return Ok(Vec::new());
        }
        let last = offset.saturating_add(length - 1);
        let url = self.url(&format!("blobs/{digest}"));
        let range = format!("bytes={offset}-{last}");
        let response = self
            .send(
                action,
                Method::GET,
                &url,
                |r| r.header(header::RANGE, &range),
                true,
            )
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: self.remote.registry.clone(),
                image: format!("{}@{digest}", self.path()),
                detail: "it answered 404: it has no such blob".into(),
            });
        }
        if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            return Err(self.fail(&self.remote, action, &url, response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.remote.error(e.into(), action))?;
        if status == StatusCode::PARTIAL_CONTENT {
            if body.len() as u64 > length {
                return Err(self.remote.protocol(
                    &action.doing(),
                    format!("it sent {} bytes for a range of {length}", body.len()),
                ));
            }
            return Ok(body.to_vec());
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let end = usize::try_from(last.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(body.len());
        Ok(body[start..end].to_vec())
    }

    /// The remote for a manifest reference of this repository: a tag or a `sha256:` digest.
    fn at(&self, reference: &str) -> Result<Remote, RegistryError> {
        let registry = self.remote.reference.registry().to_string();
        let repository = self.path().to_string();
        let parsed = if reference.contains(':') {
            check_digest(&self.remote, reference, Action::PullManifest)?;
            Reference::with_digest(registry, repository, reference.to_string())
        } else {
            oci::check_tag(reference)?;
            Reference::with_tag(registry, repository, reference.to_string())
        };
        Ok(self.remote.with_reference(parsed))
    }

    /// Puts `bytes` as the manifest `reference` (a tag, or the bytes' own digest) with
    /// `media_type`, byte for byte, and returns its digest once the registry's
    /// `Docker-Content-Digest` (or, when it sends none, the digest of what it serves back)
    /// is the sha256 of the bytes.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let at = self.at(reference)?;
        let action = Action::PushManifest;
        let digest = digest::sha256_bytes(bytes);
        if reference.contains(':') && reference != digest {
            return Err(at.protocol(
                &action.doing(),
                format!("the manifest's bytes have digest {digest}, not {reference}"),
            ));
        }
        let content_type = HeaderValue::from_str(media_type).map_err(|_| {
            at.protocol(
                &action.doing(),
                format!("media type `{media_type}` cannot be an HTTP header"),
            )
        })?;
        let url = self.url(&format!("manifests/{reference}"));
        let body = bytes::Bytes::copy_from_slice(bytes);
        let response = self
            .send(
                action,
                Method::PUT,
                &url,
                |r| {
                    r.header(header::CONTENT_TYPE, content_type.clone())
                        .body(body.clone())
                },
                true,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.fail(&at, action, &url, response).await);
        }
        let said = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let registry_digest = match said {
            Some(said) => said,
            None => match self.get_manifest(reference).await? {
                Some((_, _, served)) => served,
                None => "nothing".into(),
            },
        };
        if registry_digest != digest {
            return Err(at.protocol(
                &Action::CheckManifest.doing(),
                format!(
                    "it has {registry_digest} for the manifest kiln pushed as {digest}: the \
                     registry rewrote the manifest"
                ),
            ));
        }
        tracing::debug!(
            registry = %at.registry,
            image = %at.image,
            manifest = %digest,
            media_type,
            "manifest pushed"
        );
        Ok(digest)
    }

    /// The manifest `reference` (a tag or digest) names: its bytes, media type and digest
    /// (checked against the bytes); `None` when the repository has no such manifest. OCI
    /// manifests (artifacts among them) and indexes, and Docker schema 2 manifests and lists,
    /// are accepted.
    pub async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<(Vec<u8>, String, String)>, RegistryError> {
        let at = self.at(reference)?;
        let action = Action::PullManifest;
        let url = self.url(&format!("manifests/{reference}"));
        let accept = ACCEPT.join(", ");
        let response = self
            .send(
                action,
                Method::GET,
                &url,
                |r| r.header(header::ACCEPT, &accept),
                true,
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            let err = self.fail(&at, action, &url, response).await;
            return match err {
                RegistryError::NotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        let header = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header(header::CONTENT_TYPE)
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        let said = header(header::HeaderName::from_static("docker-content-digest"));
        if response
            .content_length()
            .is_some_and(|n| n > oci::MAX_JSON_BLOB)
        {
            return Err(at.unsupported("its manifest is too big for a manifest".into()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| at.error(e.into(), action))?;
        let digest = digest::sha256_bytes(&body);
        for expected in said
            .iter()
            .map(String::as_str)
            .chain(reference.contains(':').then_some(reference))
        {
            if expected != digest {
                return Err(at.mismatch("the manifest", expected, &digest));
            }
        }
        Ok(Some((body.to_vec(), media_type, digest)))
    }

    /// The OCI 1.1 referrers API's index of the manifests whose `subject` is `digest`
    /// (`GET /v2/REPO/referrers/DIGEST`); `None` when the registry does not serve the API
    /// (CNCF distribution 2.8 answers 404), so the caller uses the tag-schema fallback.
    pub async fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let at = self.at(digest)?;
        let action = Action::PullManifest;
        let url = self.url(&format!("referrers/{digest}"));
        let response = self
            .send(
                action,
                Method::GET,
                &url,
                |r| r.header(header::ACCEPT, OCI_INDEX_TYPE),
                true,
            )
            .await?;
        let status = response.status();
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
        ) || (status.is_success() && !media_type.starts_with(OCI_INDEX_TYPE))
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.fail(&at, action, &url, response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| at.error(e.into(), action))?;
        Ok(Some(body.to_vec()))
    }

    /// The digest of the manifest `reference` names (a HEAD), `None` when there is none.
    pub(super) async fn manifest_head(
        &self,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let at = self.at(reference)?;
        let action = Action::CheckManifest;
        let url = self.url(&format!("manifests/{reference}"));
        let accept = ACCEPT.join(", ");
        let response = self
            .send(
                action,
                Method::HEAD,
                &url,
                |r| r.header(header::ACCEPT, &accept),
                true,
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.fail(&at, action, &url, response).await);
        }
        match response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(d) => Ok(Some(d.to_string())),
            None => Ok(self.get_manifest(reference).await?.map(|(_, _, d)| d)),
        }
    }

    /// Every tag of the repository, page by page (`/tags/list` and its `Link` headers); none
    /// when the registry has no such repository.
    pub async fn tags(&self) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let action = Action::ListTags;
        let mut tags = Vec::new();
        let mut url = self.url(&format!("tags/list?n={TAGS_PAGE}"));
        loop {
            let response = self.send(action, Method::GET, &url, |r| r, true).await?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
                let unknown = envelope.as_ref().is_some_and(|env| {
                    env.errors
                        .iter()
                        .any(|e| e.code == OciErrorCode::NameUnknown)
                });
                if status == StatusCode::NOT_FOUND || unknown {
                    return Ok(tags);
                }
                return Err(self
                    .remote
                    .error(http_error(status, &body, envelope, &url), action));
            }
            let next = response
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .and_then(|link| reqwest::Url::parse(&self.base).ok()?.join(&link).ok());
            let body = response
                .bytes()
                .await
                .map_err(|e| self.remote.error(e.into(), action))?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                self.remote
                    .protocol(&action.doing(), format!("its tag list is not JSON: {e}"))
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) if next.as_str() != url => url = next.to_string(),
                _ => return Ok(tags),
            }
        }
    }
}

/// The target of a `Link: <URL>; rel="next"` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Refuses a digest that is not `sha256:` and 64 hex digits (it goes into URLs).
pub(super) fn check_digest(
    remote: &Remote,
    digest: &str,
    action: Action<'_>,
) -> Result<(), RegistryError> {
    match digest::split(digest) {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(())
        }
        _ => Err(remote.protocol(
            &action.doing(),
            format!("`{digest}` is not a sha256 digest (sha256: and 64 hex digits)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(next_link(r#"</v2/a>; rel="prev""#), None);
    }

    #[test]
    fn repositories_have_no_tag() {
        let opts = RegistryOptions::default();
        assert!(Repository::open("localhost:5000/a/b:1", &opts).is_err());
        let r = Repository::open("docker://localhost:5000/a/b", &opts).unwrap();
        assert_eq!((r.name(), r.path()), ("localhost:5000/a/b", "a/b"));
        assert_eq!(r.url("blobs/x"), "http://localhost:5000/v2/a/b/blobs/x");
    }
}
