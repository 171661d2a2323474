//! The few primitives kiln-kms builds on, over aws-lc-rs, with the crate's own error type.
//!
//! Nonces are passed in by the callers: the store and data-key wrapping use random ones, the
//! deterministic layer and chunk encryption derive theirs from a keyed hash of the plaintext.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256};
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{AesKek, KeyWrap, AES_256 as KW_AES_256};

use crate::KmsError;

/// Bytes of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// `N` bytes from the operating system's CSPRNG.
pub fn random<const N: usize>() -> Result<[u8; N], KmsError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| KmsError::Random)?;
    Ok(out)
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn gcm_key(key: &[u8; 32]) -> Result<LessSafeKey, KmsError> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| KmsError::Crypto("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// AES-256-GCM: the ciphertext with its tag appended.
pub fn gcm_seal(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let key = gcm_key(key)?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| KmsError::Crypto("AES-256-GCM sealing"))?;
    Ok(buf)
}

/// AES-256-GCM opening; `None` when the tag does not match (wrong key, or changed bytes).
pub fn gcm_open(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Option<Vec<u8>>, KmsError> {
    let key = gcm_key(key)?;
    let mut buf = sealed.to_vec();
    match key.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    ) {
        Ok(plain) => {
            let n = plain.len();
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(_) => Ok(None),
    }
}

/// AES-256-CTR over `data` in place, starting at the counter block `iv` advanced by
/// `block_offset` blocks (a 128-bit big-endian counter, as Go's `cipher.NewCTR` counts), so a
/// stream can be encrypted a piece at a time (every piece but the last a multiple of 16 bytes).
pub fn ctr_xor(
    key: &[u8; 32],
    iv: [u8; 16],
    block_offset: u64,
    data: &mut [u8],
) -> Result<(), KmsError> {
    if data.is_empty() {
        return Ok(());
    }
    let counter = u128::from_be_bytes(iv).wrapping_add(u128::from(block_offset));
    let unbound =
        UnboundCipherKey::new(&AES_256, key).map_err(|_| KmsError::Crypto("AES-256 key"))?;
    let ctr = EncryptingKey::ctr(unbound).map_err(|_| KmsError::Crypto("AES-256-CTR"))?;
    ctr.less_safe_encrypt(data, EncryptionContext::Iv128(counter.to_be_bytes().into()))
        .map_err(|_| KmsError::Crypto("AES-256-CTR"))?;
    Ok(())
}

/// RFC 3394 AES key wrap of a 32-byte key under a 32-byte key: 40 bytes.
pub fn aes_kw_wrap(kek: &[u8; 32], key: &[u8; 32]) -> Result<[u8; 40], KmsError> {
    let kek = AesKek::new(&KW_AES_256, kek).map_err(|_| KmsError::Crypto("AES key wrap"))?;
    let mut out = [0u8; 40];
    kek.wrap(key, &mut out)
        .map_err(|_| KmsError::Crypto("AES key wrap"))?;
    Ok(out)
}

/// RFC 3394 AES key unwrap; `None` when the integrity check fails.
pub fn aes_kw_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Result<Option<[u8; 32]>, KmsError> {
    if wrapped.len() != 40 {
        return Ok(None);
    }
    let kek = AesKek::new(&KW_AES_256, kek).map_err(|_| KmsError::Crypto("AES key wrap"))?;
    let mut out = [0u8; 40];
    match kek.unwrap(wrapped, &mut out) {
        Ok(plain) if plain.len() == 32 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(plain);
            Ok(Some(key))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_in_pieces_is_ctr_whole() {
        let key = [7u8; 32];
        let iv = [0xffu8; 16]; // the counter wraps within the stream
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut whole = data.clone();
        ctr_xor(&key, iv, 0, &mut whole).unwrap();
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(320);
        ctr_xor(&key, iv, 0, a).unwrap();
        ctr_xor(&key, iv, 20, b).unwrap();
        assert_eq!(whole, pieces);
        assert_ne!(whole, data);
    }

    #[test]
    fn key_wrap_round_trips_and_detects_a_wrong_kek() {
        let w = aes_kw_wrap(&[1; 32], &[2; 32]).unwrap();
        assert_eq!(aes_kw_unwrap(&[1; 32], &w).unwrap(), Some([2; 32]));
        assert_eq!(aes_kw_unwrap(&[3; 32], &w).unwrap(), None);
    }
}
