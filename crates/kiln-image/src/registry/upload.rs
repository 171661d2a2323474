//! Putting blobs into a [`Repository`] with as few bytes as possible: nothing when the
//! repository has the blob, a cross-repository mount when another repository of the registry
//! has it, else a chunked upload that is resumed from the registry's own count when a piece
//! fails.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use oci_client::errors::{OciEnvelope, OciErrorCode};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::digest;
use crate::oci;

use super::errors::{error_chain, Action};
use super::repository::{check_digest, Repository};
use super::retry::{transient_error, transient_status};
use super::RegistryError;

const OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// What [`Repository::put_blob`] did to get a blob into the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The repository had it: nothing was sent.
    Present,
    /// The registry mounted it from another of its repositories: nothing was sent.
    Mounted {
        /// The repository it came from (`REPO`, without the host).
        from: String,
    },
    /// It was uploaded.
    Uploaded {
        /// Bytes of blob sent, pieces sent again after a failure counted each time.
        bytes: u64,
    },
}

impl Sent {
    /// Bytes of blob sent (0 unless uploaded).
    pub fn bytes(&self) -> u64 {
        match self {
            Sent::Uploaded { bytes } => *bytes,
            Sent::Present | Sent::Mounted { .. } => 0,
        }
    }
}

/// Where an upload stands after a failed piece.
enum Status {
    /// The registry has this many bytes; go on at this location.
    At(u64, String),
    /// The registry lost or refused the session: start again.
    Lost,
}

impl Repository {
    /// Counts one more transient failure and waits before the next attempt, or gives up with
    /// `err` when the retry policy has no attempt left.
    async fn back_off(
        &self,
        failures: &mut u32,
        action: Action<'_>,
        reason: &str,
        err: RegistryError,
    ) -> Result<(), RegistryError> {
        *failures += 1;
        if !self.retry.again(*failures) {
            return Err(err);
        }
        self.pause(*failures, action, reason).await;
        Ok(())
    }

    /// A request that did not get an answer: the error and why, to retry with when the cause
    /// is transient (a reset, a refused connection, a timeout); the error itself otherwise.
    fn transport_failure(
        &self,
        e: reqwest::Error,
        action: Action<'_>,
    ) -> Result<(RegistryError, String), RegistryError> {
        let reason = error_chain(&e);
        let transient = transient_error(&e);
        let err = self.remote.error(e.into(), action);
        if transient {
            Ok((err, reason))
        } else {
            Err(err)
        }
    }

    /// Puts the blob `digest` of `size` bytes, read from the file `source`, into the
    /// repository: nothing when it is there already; else mounted from the first repository
    /// of `mount_from` (`REPO` paths in the same registry) that has it; else uploaded, in the
    /// upload session the last declined mount opened when there was one (the others are
    /// cancelled). A blob of at most one piece goes in one PUT; a bigger one in PATCHes of
    /// one piece each, resumed after a transient failure from what the registry reports it
    /// has (or begun again when it lost the session), within the retry policy's attempts.
    pub async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        source: &Path,
        mount_from: &[String],
    ) -> Result<Sent, RegistryError> {
        let action = Action::PushBlob(digest);
        check_digest(&self.remote, digest, action)?;
        let on_disk = tokio::fs::metadata(source)
            .await
            .map_err(oci::io_err(source, "cannot stat"))?
            .len();
        if on_disk != size {
            return Err(self.remote.protocol(
                &action.doing(),
                format!(
                    "{} has {on_disk} bytes, not the {size} of the blob",
                    source.display()
                ),
            ));
        }
        if self.blob_exists(digest).await? {
            tracing::debug!(repository = self.name(), digest, "blob already there");
            return Ok(Sent::Present);
        }
        let session = match self.mount(digest, mount_from).await? {
            Ok(from) => return Ok(Sent::Mounted { from }),
            Err(session) => session,
        };
        let bytes = if size <= self.piece_size {
            let body = tokio::fs::read(source)
                .await
                .map_err(oci::io_err(source, "cannot read"))?;
            self.upload_whole(digest, Bytes::from(body), session)
                .await?
        } else {
            self.upload_pieces(digest, size, source, session).await?
        };
        tracing::debug!(
            repository = self.name(),
            digest,
            size,
            bytes,
            "blob uploaded"
        );
        Ok(Sent::Uploaded { bytes })
    }

    /// [`Repository::put_blob`] for a small blob in memory (an index, an empty config): its
    /// digest is checked first, then it goes in one PUT unless the repository has it.
    pub async fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<Sent, RegistryError> {
        let action = Action::PushBlob(digest);
        check_digest(&self.remote, digest, action)?;
        let actual = digest::sha256_bytes(bytes);
        if actual != digest {
            return Err(self.remote.protocol(
                &action.doing(),
                format!("the bytes given have digest {actual}"),
            ));
        }
        if self.blob_exists(digest).await? {
            return Ok(Sent::Present);
        }
        let session = self.start_session(digest).await?;
        let bytes = self
            .upload_whole(digest, Bytes::copy_from_slice(bytes), session)
            .await?;
        Ok(Sent::Uploaded { bytes })
    }

    /// Tries a mount from each candidate: `Ok(from)` when one mounted, else `Err(session)`
    /// with an upload session to upload in (the last declined mount's, or a new one).
    async fn mount(
        &self,
        digest: &str,
        mount_from: &[String],
    ) -> Result<Result<String, String>, RegistryError> {
        let action = Action::MountBlob(digest);
        let mut session: Option<String> = None;
        for from in mount_from.iter().filter(|f| f.as_str() != self.path()) {
            let mut url = self.parse_url(&self.url("blobs/uploads/"), action)?;
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            let response = self
                .send(action, Method::POST, url.as_str(), |r| r, true)
                .await?;
            match response.status() {
                StatusCode::CREATED => {
                    if let Some(open) = session.take() {
                        self.cancel(&open).await;
                    }
                    tracing::debug!(repository = self.name(), digest, from, "blob mounted");
                    return Ok(Ok(from.clone()));
                }
                StatusCode::ACCEPTED => {
                    let opened = self.location(&response, action)?;
                    if let Some(previous) = session.replace(opened) {
                        self.cancel(&previous).await;
                    }
                    tracing::debug!(repository = self.name(), digest, from, "mount declined");
                }
                _ => {
                    return Err(self
                        .fail(&self.remote, action, url.as_str(), response)
                        .await)
                }
            }
        }
        match session {
            Some(session) => Ok(Err(session)),
            None => Ok(Err(self.start_session(digest).await?)),
        }
    }

    /// Opens an upload session; its location.
    async fn start_session(&self, digest: &str) -> Result<String, RegistryError> {
        let action = Action::PushBlob(digest);
        let url = self.url("blobs/uploads/");
        let response = self.send(action, Method::POST, &url, |r| r, true).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.fail(&self.remote, action, &url, response).await);
        }
        self.location(&response, action)
    }

    /// Cancels an upload session kiln will not use (best effort: the registry expires it
    /// anyway).
    async fn cancel(&self, location: &str) {
        let outcome = self
            .send(
                Action::PushBlob("(cancelled)"),
                Method::DELETE,
                location,
                |r| r,
                false,
            )
            .await;
        if let Err(e) = outcome {
            tracing::debug!(repository = self.name(), error = %e, "cancelling an upload failed");
        }
    }

    /// The absolute URL of an answer's `Location`.
    fn location(&self, response: &Response, action: Action<'_>) -> Result<String, RegistryError> {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                self.remote.protocol(
                    &action.doing(),
                    format!("it answered {} without a Location", response.status()),
                )
            })?;
        let base = self.parse_url(&self.base, action)?;
        base.join(location).map(String::from).map_err(|e| {
            self.remote.protocol(
                &action.doing(),
                format!("its Location `{location}` is not a URL: {e}"),
            )
        })
    }

    fn parse_url(&self, url: &str, action: Action<'_>) -> Result<Url, RegistryError> {
        Url::parse(url).map_err(|e| {
            self.remote
                .protocol(&action.doing(), format!("`{url}` is not a URL: {e}"))
        })
    }

    /// `location` with `digest=DIGEST` added to its query, to finish an upload.
    fn finishing(&self, location: &str, digest: &str) -> Result<String, RegistryError> {
        let mut url = self.parse_url(location, Action::PushBlob(digest))?;
        url.query_pairs_mut().append_pair("digest", digest);
        Ok(url.into())
    }

    /// Uploads a small blob in one PUT; after a transient failure, again in a new session
    /// (the registry may hold part of the failed one). Bytes sent, every attempt counted.
    async fn upload_whole(
        &self,
        digest: &str,
        body: Bytes,
        session: String,
    ) -> Result<u64, RegistryError> {
        let action = Action::PushBlob(digest);
        let mut session = Some(session);
        let mut failures = 0u32;
        let mut sent = 0u64;
        loop {
            let location = match session.take() {
                Some(location) => location,
                None => self.start_session(digest).await?,
            };
            let url = self.finishing(&location, digest)?;
            sent += body.len() as u64;
            let decorate = |r: reqwest::RequestBuilder| {
                r.header(header::CONTENT_TYPE, OCTETS).body(body.clone())
            };
            let (err, reason) = match self.attempt(action, &Method::PUT, &url, &decorate).await? {
                Ok(response) if response.status().is_success() => return Ok(sent),
                Ok(response) => {
                    let status = response.status();
                    let err = self.fail(&self.remote, action, &url, response).await;
                    if !transient_status(status) {
                        return Err(err);
                    }
                    (err, format!("it answered {status}"))
                }
                Err(e) => self.transport_failure(e, action)?,
            };
            self.back_off(&mut failures, action, &reason, err).await?;
        }
    }

    /// Uploads a blob in PATCHes of one piece, resuming after a failed piece from what the
    /// registry reports it has, then finishes it with a PUT. Bytes sent, every attempt of a
    /// piece counted whole.
    async fn upload_pieces(
        &self,
        digest: &str,
        size: u64,
        source: &Path,
        session: String,
    ) -> Result<u64, RegistryError> {
        let action = Action::PushBlob(digest);
        let mut file = tokio::fs::File::open(source)
            .await
            .map_err(oci::io_err(source, "cannot open"))?;
        let mut location = session;
        let (mut offset, mut sent, mut failures) = (0u64, 0u64, 0u32);
        let mut lost_track = false;
        while offset < size || lost_track {
            if lost_track {
                match self.upload_status(digest, &location).await? {
                    Some(Status::At(n, at)) if n <= size => {
                        self.counters.resumes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            repository = self.name(),
                            digest,
                            offset = n,
                            size,
                            "upload resumed where the registry has it"
                        );
                        (offset, location) = (n, at);
                    }
                    Some(_) => {
                        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            repository = self.name(),
                            digest,
                            "the registry lost the upload; beginning it again"
                        );
                        (offset, location) = (0, self.start_session(digest).await?);
                    }
                    None => {
                        let err = self.remote.protocol(
                            &Action::UploadStatus(digest).doing(),
                            "the registry kept failing; try again later".into(),
                        );
                        self.back_off(&mut failures, action, "upload status unavailable", err)
                            .await?;
                        continue;
                    }
                }
                lost_track = false;
                continue;
            }
            let len = self.piece_size.min(size - offset);
            let piece = read_piece(&mut file, source, offset, len).await?;
            sent += len;
            let range = format!("{offset}-{}", offset + len - 1);
            let decorate = |r: reqwest::RequestBuilder| {
                r.header(header::CONTENT_TYPE, OCTETS)
                    .header("content-range", &range)
                    .body(piece.clone())
            };
            let outcome = self
                .attempt(action, &Method::PATCH, &location, &decorate)
                .await?;
            let (err, reason) = match outcome {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    location = self.location(&response, action)?;
                    offset += len;
                    failures = 0;
                    continue;
                }
                Ok(response) => {
                    let status = response.status();
                    let err = self.fail(&self.remote, action, &location, response).await;
                    let retried = transient_status(status)
                        || status == StatusCode::NOT_FOUND
                        || status == StatusCode::RANGE_NOT_SATISFIABLE;
                    if !retried {
                        return Err(err);
                    }
                    (err, format!("it answered {status}"))
                }
                Err(e) => self.transport_failure(e, action)?,
            };
            self.back_off(&mut failures, action, &reason, err).await?;
            lost_track = true;
        }
        self.finish(digest, &location).await?;
        Ok(sent)
    }

    /// How much of the upload at `location` the registry has (a GET of the session, its
    /// `Range: 0-N`); `None` when asking failed transiently.
    async fn upload_status(
        &self,
        digest: &str,
        location: &str,
    ) -> Result<Option<Status>, RegistryError> {
        let action = Action::UploadStatus(digest);
        let response = match self.attempt(action, &Method::GET, location, &|r| r).await? {
            Ok(response) => response,
            Err(e) if transient_error(&e) => return Ok(None),
            Err(e) => return Err(self.remote.error(e.into(), action)),
        };
        let status = response.status();
        if status.is_success() {
            // `0-N` has N+1 bytes; the CNCF registry says `0-0` for an empty upload too.
            let has = response
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("0-")?.parse::<u64>().ok())
                .map_or(0, |last| if last == 0 { 0 } else { last + 1 });
            let at = match response.headers().contains_key(header::LOCATION) {
                true => self.location(&response, action)?,
                false => location.to_string(),
            };
            return Ok(Some(Status::At(has, at)));
        }
        if transient_status(status) {
            return Ok(None);
        }
        let body = response.bytes().await.unwrap_or_default();
        let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
        let gone = envelope.as_ref().is_some_and(|env| {
            env.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::BlobUploadUnknown | OciErrorCode::BlobUploadInvalid
                )
            })
        });
        if status == StatusCode::NOT_FOUND || gone {
            return Ok(Some(Status::Lost));
        }
        Err(self.remote.error(
            super::errors::http_error(status, &body, envelope, location),
            action,
        ))
    }

    /// Finishes an upload whose bytes the registry has (`PUT ?digest=`). A finish whose answer
    /// was lost and that is sent again finds no session: the blob being there is then success.
    async fn finish(&self, digest: &str, location: &str) -> Result<(), RegistryError> {
        let action = Action::PushBlob(digest);
        let url = self.finishing(location, digest)?;
        let response = self
            .send(
                action,
                Method::PUT,
                &url,
                |r| r.header(header::CONTENT_LENGTH, 0),
                true,
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        if response.status() == StatusCode::NOT_FOUND && self.blob_exists(digest).await? {
            return Ok(());
        }
        Err(self.fail(&self.remote, action, &url, response).await)
    }
}

/// `len` bytes of the file from `offset`.
async fn read_piece(
    file: &mut tokio::fs::File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Bytes, RegistryError> {
    let len = usize::try_from(len).map_err(|_| {
        RegistryError::Layout(oci::io_err(path, "cannot read")(std::io::Error::other(
            "piece too big for memory",
        )))
    })?;
    file.seek(SeekFrom::Start(offset))
        .await
        .map_err(oci::io_err(path, "cannot seek in"))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)
        .await
        .map_err(oci::io_err(path, "cannot read"))?;
    Ok(Bytes::from(buf))
}
