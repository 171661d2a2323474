//! kiln's local KMS: keys that belong to accounts, and what kiln encrypts with them.
//!
//! - [`KeyStore`]: `kiln key create|list|disable|enable|grant|revoke`. A key is referenced as
//!   `arn:kiln:kms:REGION:ACCOUNT:key/ID` ([`KeyArn`]) or by its bare ID; its material is sealed
//!   at rest under the master key file ([`store`]). [`KeyStore::open`] gives an [`OpenKey`] to an
//!   account that may use the key (its owner, or one granted), while it is enabled.
//! - [`layer`]: container layers in ocicrypt's format (what `skopeo copy --decryption-key`
//!   reads), deterministic per key and layer.
//! - [`disk`]: disk chunks sealed under a per-image data key wrapped by the KMS key.
#![deny(missing_docs)]

mod crypto;
pub mod disk;
mod ec;
mod error;
pub mod files;
mod jwe;
pub mod layer;
pub mod store;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use disk::{DataKey, DataKeys, WrappedDataKey};
pub use error::KmsError;
pub use layer::EncryptedLayer;
pub use store::{KeyInfo, KeyState, KeyStore};

/// The region in the ARNs of kiln's keys (the same as its Image Builder resources).
pub const KMS_REGION: &str = "local";

/// `arn:kiln:kms:REGION:ACCOUNT:key/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyArn {
    /// The region (kiln's is [`KMS_REGION`]).
    pub region: String,
    /// The owning account's 12-digit id.
    pub account: String,
    /// The key's id (a UUID).
    pub key_id: String,
}

impl KeyArn {
    /// The ARN of key `key_id` of `account` in kiln's region.
    pub fn new(account: &str, key_id: &str) -> Self {
        KeyArn {
            region: KMS_REGION.into(),
            account: account.into(),
            key_id: key_id.into(),
        }
    }

    /// Parses an ARN; `Ok(None)` for what reads as a bare key id (a UUID), an error for
    /// anything else.
    pub fn parse(s: &str) -> Result<Option<KeyArn>, KmsError> {
        let bad = || KmsError::BadReference(s.to_string());
        if let Some(rest) = s.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = parts[..] else {
                return Err(bad());
            };
            let key_id = resource.strip_prefix("key/").ok_or_else(bad)?;
            let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
            if partition != "kiln"
                || service != "kms"
                || region.is_empty()
                || !account_ok
                || !is_key_id(key_id)
            {
                return Err(bad());
            }
            return Ok(Some(KeyArn {
                region: region.into(),
                account: account.into(),
                key_id: key_id.into(),
            }));
        }
        if is_key_id(s) {
            Ok(None)
        } else {
            Err(bad())
        }
    }
}

/// Whether `s` is a key id as kiln makes them (a UUID, lower case hex and dashes).
fn is_key_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

impl std::fmt::Display for KeyArn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "arn:kiln:kms:{}:{}:key/{}",
            self.region, self.account, self.key_id
        )
    }
}

impl Serialize for KeyArn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyArn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyArn::parse(&s)
            .map_err(serde::de::Error::custom)?
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a KMS key ARN")))
    }
}

/// A key with its material, for an account allowed to use it while it is enabled.
pub struct OpenKey {
    info: KeyInfo,
    symmetric: Zeroizing<[u8; 32]>,
    scalar: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for OpenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenKey")
            .field("arn", &self.info.arn.to_string())
            .finish_non_exhaustive()
    }
}

impl OpenKey {
    fn new(
        info: KeyInfo,
        symmetric: Zeroizing<[u8; 32]>,
        scalar: Zeroizing<[u8; 32]>,
    ) -> Result<Self, KmsError> {
        // A scalar that is no P-256 key means the store was edited: refuse it now, not later.
        ec::public_point(&scalar)?;
        Ok(OpenKey {
            info,
            symmetric,
            scalar,
        })
    }

    /// What the key is.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn symmetric(&self) -> &[u8; 32] {
        &self.symmetric
    }

    fn scalar(&self) -> &[u8; 32] {
        &self.scalar
    }

    fn public_point(&self) -> Result<[u8; 65], KmsError> {
        ec::public_point(&self.scalar)
    }

    /// The private key of the key's P-256 pair as PKCS#8 PEM: what `skopeo copy
    /// --decryption-key` takes to read images encrypted with this key.
    pub fn decryption_key_pem(&self) -> Result<Zeroizing<String>, KmsError> {
        ec::pkcs8_pem(&self.scalar)
    }
}

#[cfg(test)]
mod tests;
