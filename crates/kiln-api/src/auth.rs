//! Who a request comes from: its SigV4 signature, verified by signing it again
//! ([`kiln_sigv4::verify`]), names an access key, and the key its account.

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::request::Parts;
use kiln_core::principal::Principal;
use kiln_sigv4::{Incoming, Scope};

use crate::error::ApiError;

/// Decides who sent a request.
pub trait Authenticator: Send + Sync {
    /// The principal a request was signed by, or the error to answer with.
    fn authenticate(&self, parts: &Parts, body: &[u8]) -> Result<Principal, ApiError>;
}

/// An access key as the server needs it.
#[derive(Clone)]
pub struct Key {
    /// The 12-digit account id.
    pub account: String,
    /// The account's name (recorded as the owner of what its requests make).
    pub user: String,
    /// The secret access key.
    pub secret: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("account", &self.account)
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where access keys are found.
pub trait KeyStore: Send + Sync {
    /// The key with this access key id, if one exists.
    fn key(&self, access_key_id: &str) -> Option<Key>;
}

/// SigV4 over a key store, for one region's scope.
pub struct SigV4 {
    keys: Arc<dyn KeyStore>,
    scope: Scope,
}

impl SigV4 {
    /// Verifies requests signed for `region` with the keys of `keys`.
    pub fn new(keys: Arc<dyn KeyStore>, region: &str) -> SigV4 {
        SigV4 {
            keys,
            scope: Scope::imagebuilder(region),
        }
    }
}

impl Authenticator for SigV4 {
    fn authenticate(&self, parts: &Parts, body: &[u8]) -> Result<Principal, ApiError> {
        let incoming = Incoming {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        };
        // The key is looked up once: the secret checks the signature, the account names the
        // principal.
        let found = std::sync::Mutex::new(None);
        let verified = kiln_sigv4::verify(&incoming, &self.scope, SystemTime::now(), |id| {
            let k = self.keys.key(id)?;
            let secret = k.secret.clone();
            if let Ok(mut f) = found.lock() {
                *f = Some(k);
            }
            Some(secret)
        })
        .map_err(|e| ApiError::with_status(e.code(), e.http_status(), e.to_string()))?;
        let key = found
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::service("a verified key vanished"))?;
        tracing::debug!(access_key_id = %verified.access_key_id, account = %key.account, "authenticated");
        Ok(Principal::new(key.account, key.user))
    }
}
