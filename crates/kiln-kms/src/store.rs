//! The key store: `$KILN_HOME/kms/keys.json`, every key's material sealed under the master key.
//!
//! A key is a 256-bit symmetric key (it wraps disks' data keys) and a P-256 key pair (the
//! recipient of OCI image layers' JWE). Both are sealed together with AES-256-GCM under the
//! master key (a random nonce a seal, the key's ARN as associated data, so material moved to
//! another key's entry does not open). Names, owners, states and grants are in the clear: they
//! are what `kiln key list` shows.
//!
//! The master key is `$KILN_HOME/master.key` unless configured: 64 hexadecimal digits, 0600,
//! made on first use. kiln never makes a new one while keys exist: they would not open.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{crypto, files, KeyArn, KmsError, OpenKey};

const FILE_VERSION: u32 = 1;
const SEAL_LABEL: &[u8] = b"kiln kms key v1\0";
/// Longest description kept (as AWS KMS allows).
pub const MAX_DESCRIPTION: usize = 8192;

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Encrypts and decrypts.
    Enabled,
    /// Encrypts nothing new and decrypts nothing.
    Disabled,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
        })
    }
}

/// What is known of a key without its material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Its ARN.
    pub arn: KeyArn,
    /// What the owner wrote about it.
    pub description: String,
    /// Enabled or disabled.
    pub state: KeyState,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// Accounts besides the owner that may use it.
    pub grants: Vec<String>,
}

impl KeyInfo {
    /// Whether `account` may use the key (owner or granted), enabled or not.
    pub fn permits(&self, account: &str) -> bool {
        self.arn.account == account || self.grants.iter().any(|g| g == account)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(flatten)]
    info: KeyInfo,
    /// base64 of nonce (12) || AES-256-GCM(symmetric (32) || P-256 scalar (32)).
    sealed: String,
}

#[derive(Serialize, Deserialize, Default)]
struct StoreFile {
    version: u32,
    keys: Vec<Entry>,
}

/// The local KMS's keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
    lock: PathBuf,
    master: PathBuf,
}

impl KeyStore {
    /// The store below `home` (`$KILN_HOME`), with the master key at `master_key`, or
    /// `home/master.key` when `None`.
    pub fn new(home: &Path, master_key: Option<PathBuf>) -> Self {
        KeyStore {
            path: home.join("kms").join("keys.json"),
            lock: home.join("kms").join("keys.lock"),
            master: master_key.unwrap_or_else(|| home.join("master.key")),
        }
    }

    /// Where the keys are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the master key is.
    pub fn master_key_path(&self) -> &Path {
        &self.master
    }

    /// Makes a key for `account`.
    pub fn create(&self, account: &str, description: &str) -> Result<KeyInfo, KmsError> {
        check_account(account)?;
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(KmsError::Invalid(format!(
                "the description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        let _lock = files::lock(&self.lock)?;
        let mut file = self.load()?;
        let master = self.master_key(!file.keys.is_empty())?;
        let arn = KeyArn::new(account, &uuid::Uuid::new_v4().to_string());
        let symmetric = Zeroizing::new(crypto::random::<32>()?);
        let scalar = crate::ec::new_scalar()?;
        let info = KeyInfo {
            arn,
            description: description.to_string(),
            state: KeyState::Enabled,
            created: Utc::now(),
            grants: Vec::new(),
        };
        let mut plain = Zeroizing::new([0u8; 64]);
        plain[..32].copy_from_slice(&symmetric[..]);
        plain[32..].copy_from_slice(&scalar[..]);
        let nonce = crypto::random::<12>()?;
        let aad = seal_aad(&info.arn);
        let mut sealed = nonce.to_vec();
        sealed.extend(crypto::gcm_seal(&master, nonce, &aad, &plain[..])?);
        file.keys.push(Entry {
            info: info.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        });
        self.save(&file)?;
        tracing::info!(key = %info.arn, "created a KMS key");
        Ok(info)
    }

    /// The keys `account` may use: its own, then those granted to it.
    pub fn list(&self, account: &str) -> Result<Vec<KeyInfo>, KmsError> {
        let file = self.load()?;
        let mut own: Vec<KeyInfo> = Vec::new();
        let mut granted = Vec::new();
        for e in file.keys {
            if e.info.arn.account == account {
                own.push(e.info);
            } else if e.info.permits(account) {
                granted.push(e.info);
            }
        }
        own.extend(granted);
        Ok(own)
    }

    /// The key `reference` names, as `account` sees it: a key it may not use is not found
    /// through a bare id, and refused by name through its ARN.
    pub fn describe(&self, reference: &str, account: &str) -> Result<KeyInfo, KmsError> {
        let file = self.load()?;
        Ok(find(&file, reference, account)?.info.clone())
    }

    /// Enables or disables a key (its owner only).
    pub fn set_state(
        &self,
        reference: &str,
        account: &str,
        state: KeyState,
    ) -> Result<KeyInfo, KmsError> {
        self.change(reference, account, |info| info.state = state)
    }

    /// Lets `grantee` use a key (its owner only).
    pub fn grant(
        &self,
        reference: &str,
        account: &str,
        grantee: &str,
    ) -> Result<KeyInfo, KmsError> {
        check_account(grantee)?;
        self.change(reference, account, |info| {
            if info.arn.account != grantee && !info.grants.iter().any(|g| g == grantee) {
                info.grants.push(grantee.to_string());
            }
        })
    }

    /// Takes `grantee`'s use of a key back (its owner only).
    pub fn revoke(
        &self,
        reference: &str,
        account: &str,
        grantee: &str,
    ) -> Result<KeyInfo, KmsError> {
        self.change(reference, account, |info| {
            info.grants.retain(|g| g != grantee)
        })
    }

    /// Whether `account` may use the key now (it exists, is the account's or granted, and is
    /// enabled), without opening its material: what a request naming the key is checked with.
    pub fn check_usable(&self, reference: &str, account: &str) -> Result<KeyInfo, KmsError> {
        let file = self.load()?;
        let entry = find(&file, reference, account)?;
        usable(&entry.info, account)?;
        Ok(entry.info.clone())
    }

    /// The key with its material, for `account` to encrypt or decrypt with: refused when the
    /// key is not the account's to use or is disabled.
    pub fn open(&self, reference: &str, account: &str) -> Result<OpenKey, KmsError> {
        let file = self.load()?;
        let entry = find(&file, reference, account)?;
        let info = &entry.info;
        usable(info, account)?;
        let master = self.master_key(true)?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&entry.sealed)
            .map_err(|e| self.corrupt(format!("key {}: {e}", info.arn)))?;
        if sealed.len() != 12 + 64 + crypto::TAG_LEN {
            return Err(self.corrupt(format!(
                "key {}: sealed material of {} bytes",
                info.arn,
                sealed.len()
            )));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        let plain = crypto::gcm_open(&master, nonce, &seal_aad(&info.arn), &sealed[12..])?
            .map(Zeroizing::new)
            .ok_or_else(|| KmsError::WrongMasterKey {
                path: self.master.clone(),
                key: info.arn.to_string(),
            })?;
        let mut symmetric = Zeroizing::new([0u8; 32]);
        symmetric.copy_from_slice(&plain[..32]);
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&plain[32..]);
        OpenKey::new(info.clone(), symmetric, scalar)
    }

    fn change(
        &self,
        reference: &str,
        account: &str,
        edit: impl FnOnce(&mut KeyInfo),
    ) -> Result<KeyInfo, KmsError> {
        let _lock = files::lock(&self.lock)?;
        let mut file = self.load()?;
        let arn = find(&file, reference, account)?.info.arn.clone();
        let entry = file
            .keys
            .iter_mut()
            .find(|e| e.info.arn == arn)
            .ok_or_else(|| KmsError::NoSuchKey(reference.to_string()))?;
        if entry.info.arn.account != account {
            return Err(KmsError::NotOwner {
                key: arn.to_string(),
                account: account.to_string(),
                owner: arn.account.clone(),
            });
        }
        edit(&mut entry.info);
        let info = entry.info.clone();
        self.save(&file)?;
        tracing::info!(key = %info.arn, state = %info.state, grants = ?info.grants, "changed a KMS key");
        Ok(info)
    }

    /// The master key; made (0600) when missing and `keys_exist` is false.
    fn master_key(&self, keys_exist: bool) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let text = match files::read_if_exists(&self.master)? {
            Some(t) => Zeroizing::new(t),
            None if keys_exist => {
                return Err(KmsError::MasterKeyMissing {
                    path: self.master.clone(),
                    store: self.path.clone(),
                })
            }
            None => {
                let key = Zeroizing::new(crypto::random::<32>()?);
                let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
                files::write_private(&self.master, text.as_bytes())?;
                tracing::info!(path = %self.master.display(), "made a new KMS master key");
                return Ok(key);
            }
        };
        let damaged = |why: String| KmsError::MasterKeyDamaged {
            path: self.master.clone(),
            why,
        };
        let trimmed = std::str::from_utf8(&text[..])
            .map_err(|_| damaged("not text".into()))?
            .trim();
        if trimmed.len() != 64 {
            return Err(damaged(format!("{} characters", trimmed.len())));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(trimmed, &mut key[..]).map_err(|e| damaged(e.to_string()))?;
        Ok(key)
    }

    fn corrupt(&self, why: String) -> KmsError {
        KmsError::Corrupt {
            path: self.path.clone(),
            why,
        }
    }

    fn load(&self) -> Result<StoreFile, KmsError> {
        let Some(bytes) = files::read_if_exists(&self.path)? else {
            return Ok(StoreFile {
                version: FILE_VERSION,
                keys: Vec::new(),
            });
        };
        let file: StoreFile =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(self.corrupt(format!(
                "version {} (this kiln reads {FILE_VERSION})",
                file.version
            )));
        }
        Ok(file)
    }

    fn save(&self, file: &StoreFile) -> Result<(), KmsError> {
        let mut bytes = serde_json::to_vec_pretty(file).map_err(|e| self.corrupt(e.to_string()))?;
        bytes.push(b'\n');
        files::write_private(&self.path, &bytes)
    }
}

fn usable(info: &KeyInfo, account: &str) -> Result<(), KmsError> {
    if !info.permits(account) {
        return Err(KmsError::NotPermitted {
            key: info.arn.to_string(),
            account: account.to_string(),
            owner: info.arn.account.clone(),
        });
    }
    if info.state == KeyState::Disabled {
        return Err(KmsError::Disabled(info.arn.to_string()));
    }
    Ok(())
}

fn seal_aad(arn: &KeyArn) -> Vec<u8> {
    let mut aad = SEAL_LABEL.to_vec();
    aad.extend_from_slice(arn.to_string().as_bytes());
    aad
}

fn check_account(account: &str) -> Result<(), KmsError> {
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(KmsError::Invalid(format!(
            "`{account}` is not an account id: use the account's 12 digits (see `kiln account list`)"
        )))
    }
}

/// The entry `reference` names. A bare id finds only keys `account` may use (another
/// account's key of the same id would otherwise be ambiguous); an ARN finds any.
fn find<'a>(file: &'a StoreFile, reference: &str, account: &str) -> Result<&'a Entry, KmsError> {
    let reference = reference.trim();
    if let Some(arn) = KeyArn::parse(reference)? {
        return file
            .keys
            .iter()
            .find(|e| e.info.arn == arn)
            .ok_or_else(|| KmsError::NoSuchKey(reference.to_string()));
    }
    file.keys
        .iter()
        .find(|e| e.info.arn.key_id == reference && e.info.permits(account))
        .ok_or_else(|| KmsError::NoSuchKey(reference.to_string()))
}
