//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): a receiver verifies a
//! delivery with any of the specification's libraries, or with a few lines of HMAC.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; each signature is
//! `v1,` and the base64 of its HMAC-SHA256 under one secret's key. Several secrets give several
//! signatures, space separated, so that a receiver can move to a new secret while the old one
//! still verifies (rotation).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret's text.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of key kiln makes for a new secret (the specification asks for 24 to 64).
const NEW_KEY_BYTES: usize = 32;

/// A topic's signing secret: `whsec_` and the base64 of its key.
///
/// Its `Debug` shows no key, so that a secret never reaches a log by way of a struct that
/// holds it; [`Secret::expose`] is the one way to the text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Why a text is not a Standard Webhooks secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a webhook secret starts with `whsec_` (then the base64 of 24 to 64 random bytes)")]
    Prefix,
    /// What follows the prefix is not base64.
    #[error("what follows `whsec_` is not base64")]
    Base64,
    /// The key is too short or too long.
    #[error("a webhook secret's key is 24 to 64 bytes; this one has {0}")]
    Length(usize),
    /// The system's random source failed.
    #[error("no random bytes for a new secret: {0}")]
    Random(String),
}

impl Secret {
    /// A secret from its text, checked as the specification describes it.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let s = Secret(text.trim().to_string());
        s.key()?;
        Ok(s)
    }

    /// A new random secret.
    pub fn generate() -> Result<Secret, SecretError> {
        let mut key = [0u8; NEW_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Secret(format!("{SECRET_PREFIX}{}", STANDARD.encode(key))))
    }

    /// The text (`whsec_...`): for the one answer that hands it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key.
    fn key(&self) -> Result<Vec<u8>, SecretError> {
        let b64 = self
            .0
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        // Receivers' libraries accept unpadded base64 too.
        let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
        let key = STANDARD
            .decode(padded.as_bytes())
            .map_err(|_| SecretError::Base64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(key)
    }

    /// A short, safe name for it (for lists): the last 4 characters of its text.
    pub fn hint(&self) -> String {
        let tail: String = self.0.chars().rev().take(4).collect();
        format!("{SECRET_PREFIX}…{}", tail.chars().rev().collect::<String>())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.hint())
    }
}

/// One `v1,` signature of a message under one secret.
pub fn sign_one(
    secret: &Secret,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    let key = secret.key()?;
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::Length(key.len()))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header: one signature per secret, space separated, in the order
/// the secrets are kept (newest last). Secrets that cannot sign (none kiln stores) are left
/// out.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| sign_one(s, id, timestamp, body).ok())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector the Standard Webhooks (Svix) reference libraries test with: a receiver's
    /// library verifies what kiln signs only if this comes out exactly.
    #[test]
    fn the_specifications_test_vector_signs_exactly() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign_one(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_space_separated() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret::generate().unwrap();
        let h = signature_header(&[a.clone(), b.clone()], "msg_1", 5, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign_one(&a, "msg_1", 5, b"{}").unwrap());
        assert_eq!(parts[1], sign_one(&b, "msg_1", 5, b"{}").unwrap());
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn secrets_are_checked_and_never_shown_by_debug() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjU"), Err(SecretError::Prefix));
        assert_eq!(Secret::parse("whsec_!!!!"), Err(SecretError::Base64));
        assert_eq!(Secret::parse("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
        let s = Secret::generate().unwrap();
        assert!(s.expose().starts_with("whsec_") && s.expose().len() > 40);
        assert!(Secret::parse(s.expose()).is_ok());
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.expose()[6..20]), "{shown}");
        assert_ne!(Secret::generate().unwrap(), s);
    }
}
