//! JWE (RFC 7516) in the JSON serialization, as go-jose writes and reads it for ocicrypt: one
//! recipient, `ECDH-ES+A256KW` (RFC 7518 4.6: P-256, Concat KDF with SHA-256, AES key wrap)
//! and `A256GCM` content. Everything is in the protected header, which is the GCM's AAD.
//!
//! kiln derives the ephemeral key, the content key and the IV from a seed the caller gives
//! (a keyed hash of what is encrypted), so the same payload for the same recipient gives the
//! same JWE: see [`crate::layer`] for why and what that reveals.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{crypto, ec, KmsError};

const ALG: &str = "ECDH-ES+A256KW";
const ENC: &str = "A256GCM";

#[derive(Serialize, Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    enc: String,
    epk: Epk,
}

#[derive(Serialize, Deserialize)]
struct Recipient {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<serde_json::Value>,
    encrypted_key: String,
}

#[derive(Serialize, Deserialize)]
struct Jwe {
    protected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encrypted_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recipients: Vec<Recipient>,
    iv: String,
    ciphertext: String,
    tag: String,
}

/// The key-encryption key of ECDH-ES+A256KW: Concat KDF (NIST SP 800-56A, one SHA-256 round)
/// over Z with AlgorithmID = the `alg` value, empty PartyUInfo and PartyVInfo, 256 bits.
fn kek(z: &[u8; 32]) -> [u8; 32] {
    let alg_len = (ALG.len() as u32).to_be_bytes();
    crypto::sha256(&[
        &1u32.to_be_bytes(),
        z,
        &alg_len,
        ALG.as_bytes(),
        &0u32.to_be_bytes(),
        &0u32.to_be_bytes(),
        &256u32.to_be_bytes(),
    ])
}

/// Encrypts `payload` to the P-256 point `recipient`; everything random in a JWE comes from
/// `seed`.
pub fn encrypt(recipient: &[u8; 65], payload: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>, KmsError> {
    let eph = ec::scalar_from_seed(crypto::hmac256(seed, &[b"epk"]))?;
    let cek = Zeroizing::new(crypto::hmac256(seed, &[b"cek"]));
    let iv_full = crypto::hmac256(seed, &[b"iv"]);
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&iv_full[..12]);

    let point = ec::public_point(&eph)?;
    let header = Header {
        alg: ALG.into(),
        enc: ENC.into(),
        epk: Epk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: B64URL.encode(&point[1..33]),
            y: B64URL.encode(&point[33..65]),
        },
    };
    let protected =
        B64URL.encode(serde_json::to_vec(&header).map_err(|_| KmsError::Crypto("JSON"))?);
    let z = ec::agree(&eph, recipient)?;
    let wrapped = crypto::aes_kw_wrap(&kek(&z), &cek)?;
    let mut sealed = crypto::gcm_seal(&cek, iv, protected.as_bytes(), payload)?;
    let tag = sealed.split_off(sealed.len() - crypto::TAG_LEN);
    let jwe = Jwe {
        protected,
        encrypted_key: Some(B64URL.encode(wrapped)),
        recipients: Vec::new(),
        iv: B64URL.encode(iv),
        ciphertext: B64URL.encode(&sealed),
        tag: B64URL.encode(tag),
    };
    serde_json::to_vec(&jwe).map_err(|_| KmsError::Crypto("JSON"))
}

fn bad(why: &str) -> KmsError {
    KmsError::Format(format!(
        "the layer's JWE (org.opencontainers.image.enc.keys.jwe) {why}"
    ))
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, KmsError> {
    B64URL
        .decode(value.trim_end_matches('='))
        .map_err(|_| bad(&format!("has a `{field}` that is not base64url")))
}

/// Decrypts a JWE made for the P-256 key `scalar`: ECDH-ES+A256KW with A256GCM only.
pub fn decrypt(scalar: &[u8; 32], jwe: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let jwe: Jwe =
        serde_json::from_slice(jwe).map_err(|e| bad(&format!("is not JSON of a JWE: {e}")))?;
    let header: Header = serde_json::from_slice(&b64("protected", &jwe.protected)?)
        .map_err(|_| bad("has no ECDH-ES protected header kiln reads"))?;
    if header.alg != ALG || header.enc != ENC || header.epk.crv != "P-256" {
        return Err(bad(&format!(
            "uses {} with {} on {}: kiln reads {ALG} with {ENC} on P-256",
            header.alg, header.enc, header.epk.crv
        )));
    }
    let encrypted_key = match (&jwe.encrypted_key, jwe.recipients.first()) {
        (Some(k), _) => k.clone(),
        (None, Some(r)) => r.encrypted_key.clone(),
        (None, None) => return Err(bad("has no encrypted key")),
    };
    let mut point = vec![4u8];
    point.extend(b64("epk.x", &header.epk.x)?);
    point.extend(b64("epk.y", &header.epk.y)?);
    let z = ec::agree(scalar, &point)?;
    let cek = crypto::aes_kw_unwrap(&kek(&z), &b64("encrypted_key", &encrypted_key)?)?
        .map(Zeroizing::new)
        .ok_or_else(|| KmsError::Tampered("the layer's JWE key".into()))?;
    let iv: [u8; 12] = b64("iv", &jwe.iv)?
        .try_into()
        .map_err(|_| bad("has an IV that is not 96 bits"))?;
    let mut sealed = b64("ciphertext", &jwe.ciphertext)?;
    sealed.extend(b64("tag", &jwe.tag)?);
    crypto::gcm_open(&cek, iv, jwe.protected.as_bytes(), &sealed)?
        .map(Zeroizing::new)
        .ok_or_else(|| KmsError::Tampered("the layer's JWE".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_deterministic_and_tamper_is_detected() {
        let scalar = ec::new_scalar().unwrap();
        let point = ec::public_point(&scalar).unwrap();
        let a = encrypt(&point, b"{\"symkey\":\"x\"}", &[1; 32]).unwrap();
        let b = encrypt(&point, b"{\"symkey\":\"x\"}", &[1; 32]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, encrypt(&point, b"{\"symkey\":\"x\"}", &[2; 32]).unwrap());
        assert_eq!(&decrypt(&scalar, &a).unwrap()[..], b"{\"symkey\":\"x\"}");

        let other = ec::new_scalar().unwrap();
        assert!(matches!(decrypt(&other, &a), Err(KmsError::Tampered(_))));

        let mut v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let ct = v["ciphertext"].as_str().unwrap().to_string();
        let first = if ct.starts_with('A') { 'B' } else { 'A' };
        let flipped: String = std::iter::once(first).chain(ct.chars().skip(1)).collect();
        v["ciphertext"] = flipped.into();
        let tampered = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            decrypt(&scalar, &tampered),
            Err(KmsError::Tampered(_))
        ));
    }
}
