//! The token-signing key and its certificate: `$KILN_HOME/registry-auth/token-key.pem` (0600,
//! PKCS#8 P-256) and `token-cert.pem` (self-signed, what docker-registry's `rootcertbundle`
//! names). Made together on first use and put in place by one rename, so two kiln processes
//! starting at once agree on one key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use sha2::Sha256;

use super::{jwt, RegistryAuthError};
use crate::store::Home;

/// The key file's name in the folder.
pub const KEY_FILE: &str = "token-key.pem";
/// The certificate file's name in the folder.
pub const CERT_FILE: &str = "token-cert.pem";

/// The token service's signing key. No `Debug`: it is the key.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    kid: String,
    dir: PathBuf,
}

/// `$KILN_HOME/registry-auth`.
pub fn dir(home: &Home) -> PathBuf {
    home.root.join("registry-auth")
}

impl TokenKey {
    /// The key in `home`, made (with its certificate) when there is none yet.
    pub fn load_or_create(home: &Home) -> Result<TokenKey, RegistryAuthError> {
        let dir = dir(home);
        if !dir.join(KEY_FILE).exists() {
            create(&dir)?;
        }
        TokenKey::load(&dir)
    }

    /// The key in `dir`.
    pub fn load(dir: &Path) -> Result<TokenKey, RegistryAuthError> {
        let path = dir.join(KEY_FILE);
        let pem = std::fs::read_to_string(&path).map_err(|e| RegistryAuthError::Io {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let bad = |detail: String| RegistryAuthError::Key {
            path: dir.to_path_buf(),
            detail,
        };
        let pkcs8 = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| bad(format!("not a PEM private key ({e})")))?
            .serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| bad(format!("not a P-256 key ({e})")))?;
        let kid = jwt::libtrust_kid(&spki_der(pair.public_key().as_ref()));
        Ok(TokenKey {
            pair,
            pkcs8,
            kid,
            dir: dir.to_path_buf(),
        })
    }

    /// The key id tokens name (`kid`), in libtrust's format, as docker-registry derives it
    /// from the certificate.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The certificate file docker-registry's `rootcertbundle` names.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// An ES256 signature (r || s, as JWS wants it) of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RegistryAuthError> {
        let rng = ring::rand::SystemRandom::new();
        self.pair
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| RegistryAuthError::Key {
                path: self.dir.clone(),
                detail: format!("signing failed ({e})"),
            })
    }

    /// The uncompressed public point (for tests that verify a signature).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The password of kiln's own credential ([`super::SERVICE_USER`]), derived from the key:
    /// whoever can read the key (kiln serve, `kiln build` as root on the same home) can push;
    /// nothing else is stored, and it changes with the key.
    pub fn service_password(&self) -> String {
        // An HMAC takes keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.pkcs8) else {
            return String::new();
        };
        mac.update(b"kiln registry service credential v1");
        format!("kilnsvc1.{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The DER SubjectPublicKeyInfo of an uncompressed P-256 point: the fixed prefix for
/// id-ecPublicKey with prime256v1, then the 65-byte point.
fn spki_der(point: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

/// Makes a key and its certificate in a folder of their own, then renames it into place; a
/// process that loses the race keeps the winner's key.
fn create(dir: &Path) -> Result<(), RegistryAuthError> {
    let io = |path: &Path, e: std::io::Error| RegistryAuthError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let bad = |detail: String| RegistryAuthError::Key {
        path: dir.to_path_buf(),
        detail,
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| bad(format!("making a key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| bad(format!("certificate: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kiln registry token service");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    // docker-registry 2.8 checks the key, not the certificate's dates; a long validity keeps
    // the operator's `rootcertbundle` valid until the key is replaced on purpose.
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let tmp = parent.join(format!(".registry-auth.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    let key_path = tmp.join(KEY_FILE);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| io(&key_path, e))?;
        f.write_all(key.serialize_pem().as_bytes())
            .map_err(|e| io(&key_path, e))?;
    }
    let cert_path = tmp.join(CERT_FILE);
    std::fs::write(&cert_path, cert.pem()).map_err(|e| io(&cert_path, e))?;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another kiln made it first (the target exists and is not empty): keep its key.
        Err(_) if dir.join(KEY_FILE).exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(dir, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_private_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        let k1 = TokenKey::load_or_create(&home).unwrap();
        let k2 = TokenKey::load_or_create(&home).unwrap();
        assert_eq!(k1.kid(), k2.kid());
        assert_eq!(k1.service_password(), k2.service_password());
        let mode = std::fs::metadata(dir(&home).join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = std::fs::read_to_string(k1.cert_path()).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        // The key id is the certificate's public key's, in libtrust's format.
        assert_eq!(k1.kid().split(':').count(), 12);
        // A signature verifies with the public key.
        let sig = k1.sign(b"payload").unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            k1.public_key(),
        );
        assert!(public.verify(b"payload", &sig).is_ok());
        assert!(public.verify(b"other", &sig).is_err());
    }

    #[test]
    fn the_spki_prefix_is_the_certificates() {
        // rcgen's SubjectPublicKeyInfo of a P-256 key is the prefix and the point.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.public_key_der();
        assert_eq!(spki_der(&spki[26..]), spki);
    }
}
