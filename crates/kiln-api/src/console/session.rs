//! Signing in to the console: a session cookie that names an access key, signed with the
//! server's console key, and the CSRF token every form carries.
//!
//! The cookie holds no secret and no server-side state, so that any `kiln serve` sharing the
//! key file accepts it; the access key it names is looked up again on every request, so a key
//! that is deleted ends its sessions at once.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use kiln_core::principal::Principal;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::KeyStore;

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
/// How long a session lasts after signing in.
pub const LIFETIME_SECS: i64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// Why the console key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file exists but cannot be read, or is not 32 bytes.
    #[error("{path}: {why}")]
    Bad {
        /// The key file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The key sessions are signed with.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; 32]) -> SessionKey {
        SessionKey(bytes)
    }

    /// `HOME/console.key`, made (mode 0600, written whole through a temporary file, as the KMS
    /// writes its keys) with 32 random bytes the first time.
    pub fn load_or_create(home: &Path) -> Result<SessionKey, KeyError> {
        let path = home.join("console.key");
        let bad = |why: String| KeyError::Bad {
            path: path.display().to_string(),
            why,
        };
        match std::fs::read(&path) {
            Ok(b) => {
                let bytes: [u8; 32] = b.try_into().map_err(|b: Vec<u8>| {
                    bad(format!(
                        "is {} bytes, not 32: delete it to make a new one (every session ends)",
                        b.len()
                    ))
                })?;
                Ok(SessionKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| bad(format!("no randomness: {e}")))?;
                kiln_kms::files::write_private(&path, &bytes).map_err(|e| bad(e.to_string()))?;
                Ok(SessionKey(bytes))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    fn mac(&self, parts: &[&str]) -> [u8; 32] {
        // new_from_slice takes any length for HMAC; 32 bytes always fit.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        for p in parts {
            m.update(p.as_bytes());
            m.update(&[0]);
        }
        m.finalize().into_bytes().into()
    }
}

/// A signed-in session: who, and the token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account and user of the access key.
    pub principal: Principal,
    /// The access key id it signed in with.
    pub access_key_id: String,
    /// The CSRF token of this session's forms.
    pub csrf: String,
}

/// Sessions over a key store.
pub struct Sessions {
    key: SessionKey,
    keys: Arc<dyn KeyStore>,
}

impl Sessions {
    /// Sessions signed with `key` for the access keys of `keys`.
    pub fn new(key: SessionKey, keys: Arc<dyn KeyStore>) -> Sessions {
        Sessions { key, keys }
    }

    /// Checks an access key and its secret; the cookie value of a new session when they match.
    pub fn sign_in(&self, access_key_id: &str, secret: &str, now: i64) -> Option<String> {
        let key = self.keys.key(access_key_id)?;
        // Both sides hashed first so that the comparison takes the same time whatever the
        // lengths.
        let a = self.key.mac(&["secret", &key.secret]);
        let b = self.key.mac(&["secret", secret]);
        if !bool::from(a.ct_eq(&b)) {
            return None;
        }
        let expires = now + LIFETIME_SECS;
        let body = format!("{access_key_id}.{expires}");
        let sig = URL_SAFE_NO_PAD.encode(self.key.mac(&["session", &body]));
        Some(format!("{body}.{sig}"))
    }

    /// The session a cookie value names, when its signature holds, it has not expired and
    /// its access key still exists.
    pub fn session(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, sig) = cookie.rsplit_once('.')?;
        let want = URL_SAFE_NO_PAD.encode(self.key.mac(&["session", body]));
        if !bool::from(want.as_bytes().ct_eq(sig.as_bytes())) {
            return None;
        }
        let (id, expires) = body.rsplit_once('.')?;
        if expires.parse::<i64>().ok()? <= now {
            return None;
        }
        let key = self.keys.key(id)?;
        Some(Session {
            principal: Principal::new(key.account, key.user),
            access_key_id: id.to_string(),
            csrf: URL_SAFE_NO_PAD.encode(self.key.mac(&["csrf", cookie])),
        })
    }

    /// True when a form's token is this session's.
    pub fn csrf_ok(session: &Session, token: &str) -> bool {
        bool::from(session.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Key;

    struct One;
    impl KeyStore for One {
        fn key(&self, id: &str) -> Option<Key> {
            (id == "AKID").then(|| Key {
                account: "123456789012".into(),
                user: "alice".into(),
                secret: "s3cret".into(),
            })
        }
    }

    fn sessions() -> Sessions {
        Sessions::new(SessionKey::new([7; 32]), Arc::new(One))
    }

    #[test]
    fn a_right_secret_signs_in_and_a_wrong_one_does_not() {
        let s = sessions();
        assert!(s.sign_in("AKID", "wrong", 0).is_none());
        assert!(s.sign_in("NOPE", "s3cret", 0).is_none());
        let c = s.sign_in("AKID", "s3cret", 100).unwrap();
        let got = s.session(&c, 101).unwrap();
        assert_eq!(got.principal.account, "123456789012");
        assert!(Sessions::csrf_ok(&got, &got.csrf));
        assert!(!Sessions::csrf_ok(&got, "forged"));
    }

    #[test]
    fn tampered_expired_or_other_keys_cookies_are_refused() {
        let s = sessions();
        let c = s.sign_in("AKID", "s3cret", 100).unwrap();
        assert!(s.session(&c, 100 + LIFETIME_SECS).is_none(), "expired");
        let (body, sig) = c.rsplit_once('.').unwrap();
        let later = body.replace(&(100 + LIFETIME_SECS).to_string(), "99999999999");
        assert!(
            s.session(&format!("{later}.{sig}"), 101).is_none(),
            "extended"
        );
        let other = Sessions::new(SessionKey::new([8; 32]), Arc::new(One));
        assert!(other.session(&c, 101).is_none(), "another server's key");
    }

    #[test]
    fn the_key_file_is_made_private_once_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = SessionKey::load_or_create(d.path()).unwrap();
        let b = SessionKey::load_or_create(d.path()).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::fs::metadata(d.path().join("console.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(d.path().join("console.key"), b"short").unwrap();
        assert!(SessionKey::load_or_create(d.path()).is_err());
    }
}
