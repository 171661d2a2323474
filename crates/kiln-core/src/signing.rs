//! Each account's image signing key: ECDSA P-256, made on first need, kept as a PKCS#8 PEM file
//! (`$KILN_HOME/signing/ACCOUNT.pem`, 0600, in a 0700 folder). [`KeyStore`] is the one place
//! that knows where keys live, so a keystore that encrypts them under a master key can take
//! its place without touching the signers.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

/// Why a signing key could not be had or used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Not a 12-digit account id.
    #[error("`{0}` is not an account id (12 digits)")]
    Account(String),
    /// The key file could not be read or written.
    #[error("{path}: {why}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// The key file is not a P-256 PKCS#8 PEM key.
    #[error("{path}: not a P-256 private key (PKCS#8 PEM): {why}; move it away and a new key is made (images signed with it then no longer verify against the new one)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        why: String,
    },
    /// No randomness for a new key.
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
    /// A public key given to verify with is not a P-256 SPKI PEM key.
    #[error("not a P-256 public key (PEM, `BEGIN PUBLIC KEY`): {0}")]
    PublicKey(String),
}

/// Where the accounts' signing keys are kept.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The keys of the data directory `home`.
    pub fn new(home: &crate::store::Home) -> KeyStore {
        KeyStore {
            dir: home.root.join("signing"),
        }
    }

    /// The key file of `account` (whether or not it exists yet).
    pub fn path(&self, account: &str) -> Result<PathBuf, SigningError> {
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigningError::Account(account.to_string()));
        }
        Ok(self.dir.join(format!("{account}.pem")))
    }

    /// `account`'s key, made and kept now when it has none.
    pub fn key(&self, account: &str) -> Result<AccountKey, SigningError> {
        let path = self.path(account)?;
        match std::fs::read_to_string(&path) {
            Ok(pem) => return parse(&path, &pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        let key = new_key()?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SigningError::Random(e.to_string()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io(&self.dir, e))?;
        let tmp = self
            .dir
            .join(format!(".{account}.{}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        // A link never replaces: two kilns making the key at once both end with the winner's.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(account, "made the account's image signing key");
                Ok(AccountKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                parse(&path, &pem)
            }
            Err(e) => Err(io(&path, e)),
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> SigningError {
    SigningError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

fn parse(path: &Path, pem: &str) -> Result<AccountKey, SigningError> {
    SigningKey::from_pkcs8_pem(pem)
        .map(|key| AccountKey { key })
        .map_err(|e| SigningError::Damaged {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
}

fn new_key() -> Result<SigningKey, SigningError> {
    // A random 32-byte string is a valid scalar but with probability about 2^-32; retry then.
    for _ in 0..16 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| SigningError::Random(e.to_string()))?;
        if let Ok(k) = SigningKey::from_slice(&b) {
            return Ok(k);
        }
    }
    Err(SigningError::Random("no valid scalar in 16 tries".into()))
}

/// One account's signing key.
#[derive(Clone)]
pub struct AccountKey {
    key: SigningKey,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "AccountKey({})", self.fingerprint())
    }
}

impl AccountKey {
    /// The public key as PEM (SPKI, `BEGIN PUBLIC KEY`): what `cosign verify --key` and
    /// skopeo's `keyPath` read.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// `sha256:` of the public key's DER: a short name for it in records.
    pub fn fingerprint(&self) -> String {
        let der = self
            .key
            .verifying_key()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        format!("sha256:{}", crate::store::sha256_hex(&der))
    }

    /// The ASN.1 DER ECDSA signature of SHA-256 of `payload` (deterministic, RFC 6979).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.key.sign(payload);
        sig.as_bytes().to_vec()
    }
}

impl kiln_dist::attach::Signer for AccountKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        Ok(AccountKey::sign(self, payload))
    }
}

/// A public key to verify signatures with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// From PEM (SPKI).
    pub fn from_pem(pem: &str) -> Result<PublicKey, SigningError> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(|key| PublicKey { key })
            .map_err(|e| SigningError::PublicKey(e.to_string()))
    }

    /// Whether `der` is a valid signature of `payload` by this key (DER, as cosign writes;
    /// a raw 64-byte r||s is taken too).
    pub fn verifies(&self, payload: &[u8], der: &[u8]) -> bool {
        let sig = Signature::from_der(der).or_else(|_| Signature::from_slice(der));
        sig.is_ok_and(|s| self.key.verify(payload, &s).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn made_once_kept_private_and_verified_by_openssl() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = KeyStore::new(&crate::store::Home::new(tmp.path()));
        assert!(matches!(store.key("../etc"), Err(SigningError::Account(_))));
        let a = store.key("111111111111").unwrap_or_else(|e| panic!("{e}"));
        let b = store.key("111111111111").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.public_pem(), b.public_pem(), "the key is made once");
        let other = store.key("222222222222").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.public_pem(), other.public_pem());
        let path = store.path("111111111111").unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));

        let payload = br#"{"critical":{}}"#;
        let sig = a.sign(payload);
        let public = PublicKey::from_pem(&a.public_pem()).unwrap_or_else(|e| panic!("{e}"));
        assert!(public.verifies(payload, &sig));
        assert!(!public.verifies(b"other", &sig));
        let wrong = PublicKey::from_pem(&other.public_pem()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!wrong.verifies(payload, &sig));

        // An independent verifier: OpenSSL checks the DER signature with the PEM public key.
        let (pem, data, sigf) = (
            tmp.path().join("pub.pem"),
            tmp.path().join("payload"),
            tmp.path().join("sig"),
        );
        let write = |p: &Path, b: &[u8]| std::fs::write(p, b).unwrap_or_else(|e| panic!("{e}"));
        write(&pem, a.public_pem().as_bytes());
        write(&data, payload);
        write(&sigf, &sig);
        let verify = |file: &Path| {
            std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(&pem)
                .arg("-signature")
                .arg(&sigf)
                .arg(file)
                .output()
                .unwrap_or_else(|e| panic!("openssl: {e}"))
        };
        let out = verify(&data);
        assert!(
            out.status.success(),
            "openssl refused kiln's signature: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        write(&tmp.path().join("tampered"), b"{\"critical\":{ }}");
        assert!(!verify(&tmp.path().join("tampered")).status.success());
    }
}
