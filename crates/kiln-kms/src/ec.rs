//! P-256 for the JWE recipients of encrypted layers: a key is kept as its 32-byte scalar.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPrivateKeyBin, Pkcs8V1Der};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::{crypto, KmsError};

/// A new random scalar.
pub fn new_scalar() -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let key =
        PrivateKey::generate(&ECDH_P256).map_err(|_| KmsError::Crypto("P-256 key generation"))?;
    scalar_of(&key)
}

fn scalar_of(key: &PrivateKey) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let bin: EcPrivateKeyBin<'static> = key
        .as_be_bytes()
        .map_err(|_| KmsError::Crypto("P-256 key export"))?;
    let bytes = bin.as_ref();
    if bytes.len() != 32 {
        return Err(KmsError::Crypto("P-256 key export"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(bytes);
    Ok(out)
}

/// The private key of a scalar.
pub fn private_key(scalar: &[u8; 32]) -> Result<PrivateKey, KmsError> {
    PrivateKey::from_private_key(&ECDH_P256, scalar).map_err(|_| KmsError::Crypto("P-256 key"))
}

/// A scalar derived from `seed` (hashed again in the rare case it is not below the group
/// order): the same seed gives the same key.
pub fn scalar_from_seed(seed: [u8; 32]) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let mut candidate = Zeroizing::new(seed);
    for _ in 0..64 {
        if let Ok(key) = private_key(&candidate) {
            return scalar_of(&key);
        }
        *candidate = crypto::sha256(&[&candidate[..]]);
    }
    Err(KmsError::Crypto("P-256 key derivation"))
}

/// The uncompressed public point (0x04 || x || y) of a scalar.
pub fn public_point(scalar: &[u8; 32]) -> Result<[u8; 65], KmsError> {
    let public = private_key(scalar)?
        .compute_public_key()
        .map_err(|_| KmsError::Crypto("P-256 public key"))?;
    public
        .as_ref()
        .try_into()
        .map_err(|_| KmsError::Crypto("P-256 public key"))
}

/// The ECDH shared secret (the x coordinate) of a scalar and a peer's uncompressed point.
pub fn agree(scalar: &[u8; 32], peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let key = private_key(scalar)?;
    agreement::agree(
        &key,
        UnparsedPublicKey::new(&ECDH_P256, peer),
        KmsError::Format("the JWE's ephemeral key is not a P-256 point".into()),
        |z| {
            let mut out = Zeroizing::new([0u8; 32]);
            if z.len() != 32 {
                return Err(KmsError::Crypto("ECDH"));
            }
            out.copy_from_slice(z);
            Ok(out)
        },
    )
}

/// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), which ocicrypt (skopeo's
/// `--decryption-key`) reads.
pub fn pkcs8_pem(scalar: &[u8; 32]) -> Result<Zeroizing<String>, KmsError> {
    let der: Pkcs8V1Der<'static> = private_key(scalar)?
        .as_der()
        .map_err(|_| KmsError::Crypto("PKCS#8 export"))?;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der.as_ref()));
    let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).map_err(|_| KmsError::Crypto("PEM"))?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}
