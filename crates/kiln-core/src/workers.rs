//! Build workers' tokens: made on the server's side (`kiln worker token create NAME`), shown
//! once, kept only as their sha256, revocable.
//!
//! A worker proves who it is with its token on every request to a server; the store finds the
//! worker by the token's digest, so that a copy of the database gives no one a worker's token.

use kiln_store::Worker;

use crate::state::Store;
use crate::store::{sha256_hex, StoreError};

/// What a token starts with, so that one found in a log or a file is recognised as kiln's.
pub const TOKEN_PREFIX: &str = "kwt_";

/// The longest worker name.
const MAX_NAME_LEN: usize = 64;

/// Why a worker's token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The name is not one kiln takes.
    #[error(
        "`{0}` is not a worker name: use 1 to 64 letters, digits, '.', '_' or '-', starting with \
         a letter or digit (the host's name is a good one)"
    )]
    BadName(String),
    /// No worker has this name.
    #[error("there is no worker named {0}: `kiln worker list` shows them")]
    NoSuchWorker(String),
    /// The operating system gave no random bytes.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<kiln_store::StoreError> for WorkerError {
    fn from(e: kiln_store::StoreError) -> Self {
        WorkerError::Store(StoreError::State(e))
    }
}

/// A new worker and its token (shown this once).
#[derive(Debug)]
pub struct NewToken {
    /// The worker as stored.
    pub worker: Worker,
    /// The token: `kwt_` and 64 hex digits (256 random bits).
    pub token: String,
}

/// The digest a token is stored and found by.
pub fn token_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.len() <= MAX_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Makes worker `name` and its token. A name whose token is live is refused (revoke it first);
/// a revoked name gets a new token.
pub async fn create(store: &Store, name: &str) -> Result<NewToken, WorkerError> {
    if !valid_name(name) {
        return Err(WorkerError::BadName(name.to_owned()));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| WorkerError::Random(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{TOKEN_PREFIX}{hex}");
    let worker = store.jobs().add_worker(name, &token_digest(&token)).await?;
    Ok(NewToken { worker, token })
}

/// Revokes worker `name`'s token: the worker is refused from its next request on.
pub async fn revoke(store: &Store, name: &str) -> Result<(), WorkerError> {
    if store.jobs().revoke_worker(name).await? {
        Ok(())
    } else {
        Err(WorkerError::NoSuchWorker(name.to_owned()))
    }
}

/// The worker a token belongs to, when it is one and not revoked.
pub async fn authenticate(store: &Store, token: &str) -> Result<Option<Worker>, WorkerError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    Ok(store.jobs().worker_by_token(&token_digest(token)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("build-1.example_net"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[tokio::test]
    async fn tokens_are_made_found_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::store::Home::new(dir.path().to_path_buf());
        let store = Store::open(&home).await.unwrap();
        let made = create(&store, "w1").await.unwrap();
        assert!(made.token.starts_with(TOKEN_PREFIX) && made.token.len() == 68);
        assert_ne!(
            made.worker.token_sha256, made.token,
            "only the digest is stored"
        );
        let found = authenticate(&store, &made.token).await.unwrap().unwrap();
        assert_eq!(found.name, "w1");
        assert!(authenticate(&store, "kwt_0").await.unwrap().is_none());
        assert!(matches!(
            create(&store, "w1").await,
            Err(WorkerError::Store(_))
        ));
        revoke(&store, "w1").await.unwrap();
        assert!(authenticate(&store, &made.token).await.unwrap().is_none());
        assert!(matches!(
            revoke(&store, "w2").await,
            Err(WorkerError::NoSuchWorker(_))
        ));
        let again = create(&store, "w1").await.unwrap();
        assert_ne!(again.token, made.token);
    }
}
