//! OCI image layers in the encryption format of containers/ocicrypt, which `skopeo copy
//! --decryption-key KEY.pem`, podman and containerd's imgcrypt read.
//!
//! A layer blob is encrypted with AES-256-CTR under a layer key, followed by HMAC-SHA256 of the
//! ciphertext under the same key (`AES_256_CTR_HMAC_SHA256`); its descriptor gets the media type
//! with `+encrypted` appended and two annotations:
//! - `org.opencontainers.image.enc.keys.jwe`: base64 of a JWE, to the KMS key's P-256 public key,
//!   of the private options `{"symkey","digest","cipheroptions":{"nonce"}}` (the layer key, the
//!   plain blob's digest and the CTR nonce, each base64 as Go writes `[]byte`);
//! - `org.opencontainers.image.enc.pubopts`: base64 of `{"cipher","hmac","cipheroptions"}`.
//!
//! **Deterministic.** ocicrypt draws the layer key, nonce and JWE randomness fresh each time, so
//! the same layer encrypted twice is a new blob and is uploaded again. kiln derives them with
//! HMAC-SHA256 under the KMS key's symmetric key from the plain blob's digest and media type:
//! a layer unchanged between versions is the same encrypted blob with the same annotations,
//! and registries already have it. What that reveals to someone who can read the registry but
//! has no key: which encrypted layers (of images under the same KMS key) are the same layer,
//! and their sizes (as any encryption reveals). Nothing about the content: the derivation is
//! keyed, so a guessed layer cannot be encrypted and compared without the KMS key.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{crypto, jwe, KmsError, OpenKey};

/// What an encrypted layer's media type ends with.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
/// The annotation holding the JWE-wrapped private options.
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// The annotation holding the public options (cipher, HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER: &str = "AES_256_CTR_HMAC_SHA256";

const DERIVE_LABEL: &[u8] = b"kiln ocicrypt layer v1\0";
const PIECE: usize = 1 << 16;

/// The descriptor parts of an encrypted layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedLayer {
    /// The plain media type with `+encrypted`.
    pub media_type: String,
    /// `sha256:HEX` of the encrypted blob.
    pub digest: String,
    /// Its size: the same as the plain blob's (CTR adds nothing).
    pub size: u64,
    /// The two `org.opencontainers.image.enc.*` annotations.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct CipherOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PrivateOptions {
    symkey: String,
    digest: String,
    cipheroptions: CipherOptions,
}

#[derive(Serialize, Deserialize)]
struct PublicOptions {
    cipher: String,
    hmac: String,
    cipheroptions: CipherOptions,
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn io_err(doing: &'static str) -> impl Fn(std::io::Error) -> KmsError {
    move |e| KmsError::Format(format!("{doing}: {e}"))
}

impl OpenKey {
    /// Encrypts the layer blob read from `input` (whose digest is `plain_digest`, checked as it
    /// is read) to `output`.
    pub fn encrypt_layer(
        &self,
        plain_digest: &str,
        media_type: &str,
        input: &mut impl Read,
        output: &mut impl Write,
    ) -> Result<EncryptedLayer, KmsError> {
        if media_type.ends_with(ENCRYPTED_SUFFIX) {
            return Err(KmsError::Format(format!(
                "the layer {plain_digest} is encrypted already"
            )));
        }
        let secret = Zeroizing::new(crypto::hmac256(
            self.symmetric(),
            &[
                DERIVE_LABEL,
                plain_digest.as_bytes(),
                b"\0",
                media_type.as_bytes(),
            ],
        ));
        let symkey = Zeroizing::new(crypto::hmac256(&secret[..], &[b"symkey"]));
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&crypto::hmac256(&secret[..], &[b"nonce"])[..16]);
        let seed = Zeroizing::new(crypto::hmac256(&secret[..], &[b"jwe"]));

        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &symkey[..]);
        let mut mac = aws_lc_rs::hmac::Context::with_key(&mac_key);
        let mut plain_hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut enc_hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; PIECE];
        let mut blocks = 0u64;
        let mut size = 0u64;
        loop {
            let n = fill(input, &mut buf).map_err(io_err("reading the layer to encrypt"))?;
            if n == 0 {
                break;
            }
            plain_hash.update(&buf[..n]);
            crypto::ctr_xor(&symkey, nonce, blocks, &mut buf[..n])?;
            mac.update(&buf[..n]);
            enc_hash.update(&buf[..n]);
            output
                .write_all(&buf[..n])
                .map_err(io_err("writing the encrypted layer"))?;
            blocks += (n / 16) as u64;
            size += n as u64;
            if n < PIECE {
                break;
            }
        }
        let actual = format!("sha256:{}", hex::encode(plain_hash.finish()));
        if actual != plain_digest {
            return Err(KmsError::Format(format!(
                "the layer read to encrypt is {actual}, not {plain_digest}"
            )));
        }
        let private = PrivateOptions {
            symkey: B64.encode(&symkey[..]),
            digest: plain_digest.to_string(),
            cipheroptions: CipherOptions {
                nonce: Some(B64.encode(nonce)),
            },
        };
        let private =
            Zeroizing::new(serde_json::to_vec(&private).map_err(|_| KmsError::Crypto("JSON"))?);
        let public = PublicOptions {
            cipher: CIPHER.into(),
            hmac: B64.encode(mac.sign().as_ref()),
            cipheroptions: CipherOptions { nonce: None },
        };
        let public = serde_json::to_vec(&public).map_err(|_| KmsError::Crypto("JSON"))?;
        let jwe = jwe::encrypt(&self.public_point()?, &private, &seed)?;
        let annotations = BTreeMap::from([
            (ANNOTATION_JWE.to_string(), B64.encode(jwe)),
            (ANNOTATION_PUBOPTS.to_string(), B64.encode(public)),
        ]);
        Ok(EncryptedLayer {
            media_type: format!("{media_type}{ENCRYPTED_SUFFIX}"),
            digest: format!("sha256:{}", hex::encode(enc_hash.finish())),
            size,
            annotations,
        })
    }

    /// Decrypts an encrypted layer blob from `input` to `output`, with the annotations of its
    /// descriptor; gives the plain blob's digest. The HMAC and the plain digest are checked at
    /// the end: on an error, discard what was written.
    pub fn decrypt_layer(
        &self,
        annotations: &BTreeMap<String, String>,
        input: &mut impl Read,
        output: &mut impl Write,
    ) -> Result<String, KmsError> {
        let missing = |a: &str| {
            KmsError::Format(format!(
                "the layer has no {a} annotation: it is not an encrypted layer"
            ))
        };
        let jwes = annotations
            .get(ANNOTATION_JWE)
            .ok_or_else(|| missing(ANNOTATION_JWE))?;
        let public = annotations
            .get(ANNOTATION_PUBOPTS)
            .ok_or_else(|| missing(ANNOTATION_PUBOPTS))?;
        let bad = |what: &str| {
            KmsError::Format(format!("the layer's {what} is not what ocicrypt writes"))
        };
        let mut private = None;
        let mut last = None;
        for one in jwes.split(',') {
            let bytes = B64.decode(one.trim()).map_err(|_| bad(ANNOTATION_JWE))?;
            match jwe::decrypt(self.scalar(), &bytes) {
                Ok(p) => {
                    private = Some(p);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let private = match (private, last) {
            (Some(p), _) => p,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(missing(ANNOTATION_JWE)),
        };
        let private: PrivateOptions =
            serde_json::from_slice(&private).map_err(|_| bad("private options"))?;
        let public: PublicOptions =
            serde_json::from_slice(&B64.decode(public).map_err(|_| bad(ANNOTATION_PUBOPTS))?)
                .map_err(|_| bad(ANNOTATION_PUBOPTS))?;
        if public.cipher != CIPHER {
            return Err(KmsError::Format(format!(
                "the layer is encrypted with {}; kiln reads {CIPHER}",
                public.cipher
            )));
        }
        let symkey: Zeroizing<[u8; 32]> = Zeroizing::new(
            B64.decode(&private.symkey)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                .ok_or_else(|| bad("symmetric key"))?,
        );
        let nonce: [u8; 16] = private
            .cipheroptions
            .nonce
            .as_deref()
            .and_then(|n| B64.decode(n).ok())
            .and_then(|n| <[u8; 16]>::try_from(n.as_slice()).ok())
            .ok_or_else(|| bad("nonce"))?;
        let expected_mac = B64.decode(&public.hmac).map_err(|_| bad("HMAC"))?;
        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &symkey[..]);
        let mut mac = aws_lc_rs::hmac::Context::with_key(&mac_key);
        let mut plain_hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; PIECE];
        let mut blocks = 0u64;
        loop {
            let n = fill(input, &mut buf).map_err(io_err("reading the encrypted layer"))?;
            if n == 0 {
                break;
            }
            mac.update(&buf[..n]);
            crypto::ctr_xor(&symkey, nonce, blocks, &mut buf[..n])?;
            plain_hash.update(&buf[..n]);
            output
                .write_all(&buf[..n])
                .map_err(io_err("writing the decrypted layer"))?;
            blocks += (n / 16) as u64;
            if n < PIECE {
                break;
            }
        }
        if aws_lc_rs::constant_time::verify_slices_are_equal(mac.sign().as_ref(), &expected_mac)
            .is_err()
        {
            return Err(KmsError::Tampered("the encrypted layer (its HMAC)".into()));
        }
        let actual = format!("sha256:{}", hex::encode(plain_hash.finish()));
        if actual != private.digest {
            return Err(KmsError::Tampered(format!(
                "the encrypted layer (it decrypts to {actual}, not {})",
                private.digest
            )));
        }
        Ok(actual)
    }
}
