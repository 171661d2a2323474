//! What can go wrong with keys, and what to do about it.

use std::path::{Path, PathBuf};

/// Errors of the local KMS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// No key has that id or ARN.
    #[error("no KMS key `{0}` (see `kiln key list`; keys are named arn:kiln:kms:REGION:ACCOUNT:key/ID or by their ID)")]
    NoSuchKey(String),
    /// The reference is neither an ARN of a key nor a key id.
    #[error(
        "`{0}` is not a KMS key reference: use arn:kiln:kms:REGION:ACCOUNT:key/ID or the key's ID \
         (see `kiln key list`)"
    )]
    BadReference(String),
    /// The key is disabled: it encrypts and decrypts nothing until enabled again.
    #[error("KMS key {0} is disabled: it encrypts and decrypts nothing (its owner can run `kiln key enable {0}`)")]
    Disabled(String),
    /// The caller's account neither owns the key nor has a grant on it.
    #[error(
        "account {account} may not use KMS key {key}: it belongs to account {owner}, which has \
         not granted it (the owner runs `kiln key grant KEY {account}`)"
    )]
    NotPermitted {
        /// The key's ARN.
        key: String,
        /// Who asked.
        account: String,
        /// Who owns it.
        owner: String,
    },
    /// Only the owner may change a key (disable, enable, grant, revoke).
    #[error(
        "only the owner of KMS key {key} (account {owner}) may change it; account {account} asked"
    )]
    NotOwner {
        /// The key's ARN.
        key: String,
        /// Who asked.
        account: String,
        /// Who owns it.
        owner: String,
    },
    /// A description or account id that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The master key file is missing while keys sealed under it exist.
    #[error(
        "the master key {path} is missing, and the KMS keys in {store} were encrypted under it: \
         restore the file from a backup (kiln does not make a new one, which would open nothing)"
    )]
    MasterKeyMissing {
        /// The master key file.
        path: PathBuf,
        /// The key store.
        store: PathBuf,
    },
    /// The master key file is not 64 hexadecimal digits.
    #[error("the master key {path} is damaged ({why}): it must hold 64 hexadecimal digits (256 bits); restore it from a backup")]
    MasterKeyDamaged {
        /// The master key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The master key does not open a key's sealed material.
    #[error(
        "the master key {path} does not open KMS key {key}: it is not the master key the key was \
         made under (or the key store was changed); restore the right master key file"
    )]
    WrongMasterKey {
        /// The master key file.
        path: PathBuf,
        /// The key's ARN.
        key: String,
    },
    /// The key store file is not what kiln writes.
    #[error("{path} is damaged ({why}); kiln changed nothing. Restore it from a backup")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Encrypted data that does not open: wrong key, or changed bytes.
    #[error(
        "{0}: the data does not open with this key (a different key, or the bytes were changed)"
    )]
    Tampered(String),
    /// Encrypted data in a format kiln does not read.
    #[error("{0}")]
    Format(String),
    /// A filesystem error.
    #[error("cannot {doing} {path}: {source}")]
    Io {
        /// What kiln was doing.
        doing: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The operating system gave no random bytes.
    #[error("the operating system's random number generator failed")]
    Random,
    /// The cryptographic library refused an operation (a bug, not the input).
    #[error("the cryptographic library failed: {0}")]
    Crypto(&'static str),
}

impl KmsError {
    /// A closure turning an I/O error into [`KmsError::Io`].
    pub fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KmsError {
        let path = path.to_path_buf();
        move |source| KmsError::Io {
            doing,
            path,
            source,
        }
    }
}
