//! Disk chunks under a data key: deterministic authenticated encryption of each pack frame,
//! and the data key wrapped by a KMS key, kept per account and image name.
//!
//! A frame (one zstd-compressed chunk) is sealed as `nonce (12) || AES-256-GCM(frame) || tag
//! (16)`, the nonce the first 96 bits of HMAC-SHA256 of the frame under a key derived from the
//! data key (a synthetic IV, as in AES-GCM-SIV's idea): the same frame under the same data key
//! is the same 28 bytes longer sealed frame, so a chunk unchanged between versions is
//! recognised as the same and is not sent again. Different frames get different nonces unless
//! HMAC collides in 96 bits. What that reveals without the key: which sealed chunks are equal
//! (within one image's versions, since the data key is per image name) and their sizes; not
//! their content, and nothing across images.
//!
//! The data key is reused for every version of one image under one KMS key (that is what
//! keeps reuse); it is stored only wrapped (AES-256-GCM under the KMS key's symmetric key) in
//! `$KILN_HOME/kms/datakeys/ACCOUNT/` and in every disk artifact, so a reader with the use of
//! the KMS key unwraps it and nobody else can.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{crypto, files, KeyArn, KmsError, OpenKey};

const WRAP_LABEL: &[u8] = b"kiln disk data key v1\0";
/// Bytes a sealed frame has more than its frame.
pub const SEAL_OVERHEAD: usize = crypto::NONCE_LEN + crypto::TAG_LEN;

/// A disk's data key.
pub struct DataKey {
    enc: Zeroizing<[u8; 32]>,
    nonce: Zeroizing<[u8; 32]>,
    raw: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    fn from_raw(raw: [u8; 32]) -> DataKey {
        let raw = Zeroizing::new(raw);
        DataKey {
            enc: Zeroizing::new(crypto::hmac256(&raw[..], &[b"kiln chunk enc"])),
            nonce: Zeroizing::new(crypto::hmac256(&raw[..], &[b"kiln chunk nonce"])),
            raw,
        }
    }

    /// A new random data key.
    pub fn generate() -> Result<DataKey, KmsError> {
        Ok(DataKey::from_raw(crypto::random::<32>()?))
    }

    /// Seals a frame; the same frame gives the same bytes.
    pub fn seal(&self, frame: &[u8]) -> Result<Vec<u8>, KmsError> {
        let mut nonce = [0u8; crypto::NONCE_LEN];
        nonce.copy_from_slice(&crypto::hmac256(&self.nonce[..], &[frame])[..crypto::NONCE_LEN]);
        let mut out = nonce.to_vec();
        out.extend(crypto::gcm_seal(&self.enc, nonce, b"", frame)?);
        Ok(out)
    }

    /// Opens a sealed frame; a wrong key or a changed byte is [`KmsError::Tampered`].
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, KmsError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(KmsError::Tampered("a disk chunk (too short)".into()));
        }
        let mut nonce = [0u8; crypto::NONCE_LEN];
        nonce.copy_from_slice(&sealed[..crypto::NONCE_LEN]);
        crypto::gcm_open(&self.enc, nonce, b"", &sealed[crypto::NONCE_LEN..])?
            .ok_or_else(|| KmsError::Tampered("a disk chunk".into()))
    }
}

impl kiln_chunk::FrameSeal for DataKey {
    fn seal(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        DataKey::seal(self, frame).map_err(|e| e.to_string())
    }
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        DataKey::open(self, sealed).map_err(|e| e.to_string())
    }
}

/// A data key wrapped by a KMS key: what a disk artifact carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedDataKey {
    /// The KMS key that wraps it.
    pub key_arn: KeyArn,
    /// base64 of nonce (12) || AES-256-GCM(data key).
    pub wrapped: String,
}

impl OpenKey {
    /// Wraps a data key under this key.
    pub fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedDataKey, KmsError> {
        let nonce = crypto::random::<12>()?;
        let mut out = nonce.to_vec();
        out.extend(crypto::gcm_seal(
            self.symmetric(),
            nonce,
            &self.wrap_aad(),
            &key.raw[..],
        )?);
        Ok(WrappedDataKey {
            key_arn: self.info().arn.clone(),
            wrapped: B64.encode(out),
        })
    }

    /// Unwraps a data key this key wrapped.
    pub fn unwrap_data_key(&self, wrapped: &WrappedDataKey) -> Result<DataKey, KmsError> {
        if wrapped.key_arn != self.info().arn {
            return Err(KmsError::Format(format!(
                "the data key is wrapped by {}, not {}",
                wrapped.key_arn,
                self.info().arn
            )));
        }
        let bytes = B64
            .decode(&wrapped.wrapped)
            .map_err(|_| KmsError::Format("the wrapped data key is not base64".into()))?;
        if bytes.len() != 12 + 32 + crypto::TAG_LEN {
            return Err(KmsError::Tampered("the wrapped data key".into()));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[..12]);
        let raw = crypto::gcm_open(self.symmetric(), nonce, &self.wrap_aad(), &bytes[12..])?
            .map(Zeroizing::new)
            .ok_or_else(|| KmsError::Tampered("the wrapped data key".into()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[..]);
        Ok(DataKey::from_raw(key))
    }

    fn wrap_aad(&self) -> Vec<u8> {
        let mut aad = WRAP_LABEL.to_vec();
        aad.extend_from_slice(self.info().arn.to_string().as_bytes());
        aad
    }
}

/// The data keys of images' disks, wrapped, one per account, image name and KMS key.
#[derive(Debug, Clone)]
pub struct DataKeys {
    dir: PathBuf,
}

impl DataKeys {
    /// The data keys below `home` (`$KILN_HOME`).
    pub fn new(home: &Path) -> Self {
        DataKeys {
            dir: home.join("kms").join("datakeys"),
        }
    }

    fn path(&self, account: &str, image: &str, key: &KeyArn) -> PathBuf {
        let name = hex::encode(crypto::sha256(&[
            image.as_bytes(),
            b"\0",
            key.to_string().as_bytes(),
        ]));
        self.dir.join(account).join(format!("{name}.json"))
    }

    /// The data key of `image`'s disks under `key` for `account`: the one kept, or a new one
    /// (kept from then on).
    pub fn for_image(
        &self,
        key: &OpenKey,
        account: &str,
        image: &str,
    ) -> Result<(DataKey, WrappedDataKey), KmsError> {
        let path = self.path(account, image, &key.info().arn);
        let _lock = files::lock(&self.dir.join(account).join(".lock"))?;
        if let Some(bytes) = files::read_if_exists(&path)? {
            let wrapped: WrappedDataKey =
                serde_json::from_slice(&bytes).map_err(|e| KmsError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            let data = key.unwrap_data_key(&wrapped)?;
            return Ok((data, wrapped));
        }
        let data = DataKey::generate()?;
        let wrapped = key.wrap_data_key(&data)?;
        let bytes = serde_json::to_vec_pretty(&wrapped).map_err(|_| KmsError::Crypto("JSON"))?;
        files::write_private(&path, &bytes)?;
        Ok((data, wrapped))
    }
}
