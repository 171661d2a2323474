//! Accounts and their access keys: `$KILN_HOME/accounts.json`.
//!
//! An account is a name and a 12-digit id (the account of every ARN its resources get); it has
//! access keys, each an access key id (`AKIA` and 16 characters of `[A-Z2-7]`, as AWS's look)
//! and a 40-character secret from the operating system's CSPRNG. The API server verifies a
//! request's SigV4 signature with the secret of its access key id and acts as that account.
//!
//! The file holds the secrets in the clear (the server needs them to sign again), so it is
//! root's alone: every write goes to a temporary file created with mode 0600 and renamed over
//! the old one, so it is never readable by others, not even for a moment. A file found with
//! looser permissions (edited by hand) gets a warning, and 0600 again at the next write.
//! Changes are read-modify-write under an exclusive `flock` on `accounts.lock`, so two `kiln
//! account` commands at once both keep their change. Readers take no lock: a rename replaces
//! the file whole.
//!
//! The server answers every request with a lookup: [`Accounts::snapshot`] reads the file once
//! into an immutable map, and [`Accounts::reload_if_changed`] (one `stat`) gives a new snapshot
//! only when the file was replaced since. With `kiln-sigv4`, a request is checked as:
//!
//! ```text
//! let snap = accounts.snapshot()?;            // keep it, swap in reload_if_changed's
//! let who = kiln_sigv4::verify(&incoming, &scope, SystemTime::now(), |key| {
//!     snap.lookup(key).map(|o| o.secret_access_key.expose().to_string())
//! })?;
//! let owner = snap.lookup(&who.access_key_id); // its account_id is the principal's account
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::principal::LOCAL_ACCOUNT;
use crate::store::Home;

const FILE_VERSION: u32 = 1;
const ACCESS_KEY_PREFIX: &str = "AKIA";
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+";
const SECRET_LEN: usize = 40;
const MAX_NAME_LEN: usize = 64;

/// Errors of the accounts file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The account name does not match `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    #[error(
        "`{0}` is not a valid account name: use 1 to 64 letters, digits, '.', '_' or '-', \
         starting with a letter or digit (and not 12 digits, which read as an account id)"
    )]
    InvalidName(String),
    /// An account of that name exists.
    #[error("an account named `{0}` exists already (see `kiln account list`)")]
    NameTaken(String),
    /// No account has that name or id.
    #[error("no account `{0}` (see `kiln account list`)")]
    NoSuchAccount(String),
    /// The account has no such access key.
    #[error("account `{account}` has no access key {access_key_id} (see `kiln account list`)")]
    NoSuchKey {
        /// The account's name.
        account: String,
        /// The key asked for.
        access_key_id: String,
    },
    /// The file cannot be read or written by this user.
    #[error(
        "cannot {what} {path}: permission denied. Account keys are readable by root only: \
         run the command as root (sudo)"
    )]
    PermissionDenied {
        /// What kiln was doing.
        what: &'static str,
        /// Which file.
        path: PathBuf,
    },
    /// Another filesystem error.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what kiln writes.
    #[error(
        "{path} is damaged ({why}); kiln changed nothing. Restore it from a backup, or move it \
         away to start with no accounts"
    )]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The operating system gave no random bytes.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AccountError {
    let path = path.to_path_buf();
    move |source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            AccountError::PermissionDenied { what, path }
        } else {
            AccountError::Io { what, path, source }
        }
    }
}

/// A secret access key. Its `Debug` says `<redacted>`; [`SecretKey::expose`] gives the text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretKey(String);

impl SecretKey {
    /// The secret itself, for signing or for showing it once to the user who made it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A key just made: the only time its secret is shown.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The account's 12-digit id.
    pub account_id: String,
    /// The account's name.
    pub name: String,
    /// The new access key id.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: SecretKey,
}

/// An access key without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// The access key id.
    pub access_key_id: String,
    /// When it was made.
    pub created: DateTime<Utc>,
}

/// An account without secrets, for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    /// The account's name.
    pub name: String,
    /// The 12-digit id.
    pub account_id: String,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// Its access keys, oldest first.
    pub keys: Vec<KeyInfo>,
}

/// Whose an access key is, with its secret: what the server needs to verify a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The account's 12-digit id.
    pub account_id: String,
    /// The account's name.
    pub name: String,
    /// The key's secret.
    pub secret_access_key: SecretKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    access_key_id: String,
    secret_access_key: SecretKey,
    created: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredAccount {
    name: String,
    account_id: String,
    created: DateTime<Utc>,
    keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountsFile {
    version: u32,
    accounts: Vec<StoredAccount>,
}

impl Default for AccountsFile {
    fn default() -> Self {
        AccountsFile {
            version: FILE_VERSION,
            accounts: Vec::new(),
        }
    }
}

impl AccountsFile {
    fn find(&self, account: &str) -> Option<usize> {
        self.accounts
            .iter()
            .position(|a| a.account_id == account || a.name == account)
    }

    fn key_exists(&self, access_key_id: &str) -> bool {
        self.accounts
            .iter()
            .flat_map(|a| &a.keys)
            .any(|k| k.access_key_id == access_key_id)
    }

    fn new_key(&self) -> Result<StoredKey, AccountError> {
        loop {
            let access_key_id = access_key_id()?;
            if !self.key_exists(&access_key_id) {
                return Ok(StoredKey {
                    access_key_id,
                    secret_access_key: secret_key()?,
                    created: Utc::now(),
                });
            }
        }
    }
}

/// Which version of the file a [`Snapshot`] was read from: a rename gives a new inode, so the
/// inode tells a replaced file even within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            len: meta.len(),
        }
    }
}

/// Every access key and its owner, as the file was when read: lookups are a hash map probe.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    keys: HashMap<String, KeyOwner>,
    stamp: Option<Stamp>,
}

impl Snapshot {
    /// The owner and secret of an access key id.
    pub fn lookup(&self, access_key_id: &str) -> Option<&KeyOwner> {
        self.keys.get(access_key_id)
    }

    /// How many access keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no access key at all (the server then accepts no request).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The accounts file of a kiln home.
#[derive(Debug, Clone)]
pub struct Accounts {
    path: PathBuf,
    lock: PathBuf,
}

/// Whether a name can be an account's.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let Some(first) = b.first() else {
        return false;
    };
    let looks_like_id = b.len() == 12 && b.iter().all(u8::is_ascii_digit);
    b.len() <= MAX_NAME_LEN
        && first.is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !looks_like_id
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AccountError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| AccountError::Random(e.to_string()))?;
    Ok(buf)
}

/// `AKIA` and 16 base32 characters (80 random bits).
fn access_key_id() -> Result<String, AccountError> {
    // 32 divides 256: masking a byte to 5 bits picks every character equally often.
    let bytes = random_bytes::<16>()?;
    let mut id = String::from(ACCESS_KEY_PREFIX);
    id.extend(bytes.iter().map(|b| BASE32[usize::from(b & 31)] as char));
    Ok(id)
}

/// 40 characters of `[A-Za-z0-9/+]` (240 random bits).
fn secret_key() -> Result<SecretKey, AccountError> {
    let bytes = random_bytes::<SECRET_LEN>()?;
    Ok(SecretKey(
        bytes
            .iter()
            .map(|b| SECRET_CHARS[usize::from(b & 63)] as char)
            .collect(),
    ))
}

/// 12 random digits (a u64 modulo 10^12: the bias is below one in ten million).
fn account_id() -> Result<String, AccountError> {
    let n = u64::from_le_bytes(random_bytes::<8>()?) % 1_000_000_000_000;
    Ok(format!("{n:012}"))
}

impl Accounts {
    /// The accounts of a kiln home (`$KILN_HOME/accounts.json`).
    pub fn new(home: &Home) -> Accounts {
        Accounts::at(home.accounts())
    }

    /// The accounts file at `path` (its lock beside it, `.lock` for `.json`).
    pub fn at(path: impl Into<PathBuf>) -> Accounts {
        let path = path.into();
        let lock = path.with_extension("lock");
        Accounts { path, lock }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes an account with one access key.
    pub fn create(&self, name: &str) -> Result<NewKey, AccountError> {
        if !valid_name(name) {
            return Err(AccountError::InvalidName(name.to_string()));
        }
        self.change(|file| {
            if file.accounts.iter().any(|a| a.name == name) {
                return Err(AccountError::NameTaken(name.to_string()));
            }
            let account_id = loop {
                let id = account_id()?;
                if id != LOCAL_ACCOUNT && !file.accounts.iter().any(|a| a.account_id == id) {
                    break id;
                }
            };
            let key = file.new_key()?;
            let new = NewKey {
                account_id: account_id.clone(),
                name: name.to_string(),
                access_key_id: key.access_key_id.clone(),
                secret_access_key: key.secret_access_key.clone(),
            };
            file.accounts.push(StoredAccount {
                name: name.to_string(),
                account_id,
                created: key.created,
                keys: vec![key],
            });
            Ok(new)
        })
    }

    /// Every account, with its key ids but no secrets, in the order they were made.
    pub fn list(&self) -> Result<Vec<AccountInfo>, AccountError> {
        Ok(self
            .load()?
            .0
            .accounts
            .into_iter()
            .map(|a| AccountInfo {
                name: a.name,
                account_id: a.account_id,
                created: a.created,
                keys: a
                    .keys
                    .into_iter()
                    .map(|k| KeyInfo {
                        access_key_id: k.access_key_id,
                        created: k.created,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Adds an access key to an account (its name or id).
    pub fn create_key(&self, account: &str) -> Result<NewKey, AccountError> {
        self.change(|file| {
            let i = file
                .find(account)
                .ok_or_else(|| AccountError::NoSuchAccount(account.to_string()))?;
            let key = file.new_key()?;
            let a = &mut file.accounts[i];
            let new = NewKey {
                account_id: a.account_id.clone(),
                name: a.name.clone(),
                access_key_id: key.access_key_id.clone(),
                secret_access_key: key.secret_access_key.clone(),
            };
            a.keys.push(key);
            Ok(new)
        })
    }

    /// Removes an access key of an account (its name or id). An account may be left with no
    /// key, as AWS allows; it then signs nothing until it gets one.
    pub fn delete_key(&self, account: &str, access_key_id: &str) -> Result<(), AccountError> {
        self.change(|file| {
            let i = file
                .find(account)
                .ok_or_else(|| AccountError::NoSuchAccount(account.to_string()))?;
            let a = &mut file.accounts[i];
            let before = a.keys.len();
            a.keys.retain(|k| k.access_key_id != access_key_id);
            if a.keys.len() == before {
                return Err(AccountError::NoSuchKey {
                    account: a.name.clone(),
                    access_key_id: access_key_id.to_string(),
                });
            }
            Ok(())
        })
    }

    /// The owner and secret of an access key id, read from the file now. A server answering
    /// many requests keeps a [`Snapshot`] instead.
    pub fn lookup(&self, access_key_id: &str) -> Result<Option<KeyOwner>, AccountError> {
        Ok(self.snapshot()?.keys.remove(access_key_id))
    }

    /// Every key and its owner, read from the file now (no file: no keys).
    pub fn snapshot(&self) -> Result<Snapshot, AccountError> {
        let (file, stamp) = self.load()?;
        let mut keys = HashMap::new();
        for a in file.accounts {
            for k in a.keys {
                keys.insert(
                    k.access_key_id,
                    KeyOwner {
                        account_id: a.account_id.clone(),
                        name: a.name.clone(),
                        secret_access_key: k.secret_access_key,
                    },
                );
            }
        }
        Ok(Snapshot { keys, stamp })
    }

    /// A new snapshot if the file was replaced (or appeared, or went) since `current` was
    /// read, else `None`: one `stat` when nothing changed.
    pub fn reload_if_changed(&self, current: &Snapshot) -> Result<Option<Snapshot>, AccountError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("read", &self.path)(e)),
        };
        if stamp == current.stamp {
            return Ok(None);
        }
        self.snapshot().map(Some)
    }

    /// Reads the file: no file is no accounts.
    fn load(&self) -> Result<(AccountsFile, Option<Stamp>), AccountError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((AccountsFile::default(), None))
            }
            Err(e) => return Err(io("read", &self.path)(e)),
        };
        // The stamp comes from the open file, so a rename between stat and read cannot pair a
        // new stamp with old contents.
        let meta = file.metadata().map_err(io("read", &self.path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %self.path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the accounts file is readable by others; kiln sets it to 0600 at its next change"
            );
        }
        let parsed: AccountsFile =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                AccountError::Corrupt {
                    path: self.path.clone(),
                    why: e.to_string(),
                }
            })?;
        if parsed.version != FILE_VERSION {
            return Err(AccountError::Corrupt {
                path: self.path.clone(),
                why: format!(
                    "version {} (this kiln reads version {FILE_VERSION})",
                    parsed.version
                ),
            });
        }
        Ok((parsed, Some(Stamp::of(&meta))))
    }

    /// Read-modify-write under the lock: `f` changes the file's contents, which are written
    /// only when it succeeds.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut AccountsFile) -> Result<T, AccountError>,
    ) -> Result<T, AccountError> {
        let _lock = self.lock()?;
        self.sweep_temporaries();
        let (mut file, _) = self.load()?;
        let out = f(&mut file)?;
        self.save(&file)?;
        Ok(out)
    }

    /// Removes temporary files of writers killed before their rename (they hold secrets too).
    /// Called under the lock, when no writer is between its write and its rename.
    fn sweep_temporaries(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!("{}.tmp-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, AccountError> {
        if let Some(dir) = self.lock.parent() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io("open", &self.lock))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
            io("lock", &self.lock)(std::io::Error::from_raw_os_error(errno as i32))
        })
    }

    fn save(&self, contents: &AccountsFile) -> Result<(), AccountError> {
        let bytes = serde_json::to_vec_pretty(contents).map_err(|e| AccountError::Corrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        // Writers are serialised by the lock; the random part keeps a leftover of a killed
        // writer from ever being taken for this one's.
        let tmp = self.path.with_extension(format!(
            "json.tmp-{}-{}",
            std::process::id(),
            hex::encode(random_bytes::<4>()?)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask can only take bits away; set 0600 exactly (an owner who cannot read
            // their own file is no better).
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("write", &self.path)(e)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::new(&Home::new(dir.path()));
        (dir, a)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_then_list_has_no_secrets() {
        let (_dir, a) = accounts();
        assert!(a.list().unwrap().is_empty());
        let k = a.create("alice").unwrap();
        assert_eq!(k.name, "alice");
        assert_eq!(k.account_id.len(), 12);
        assert!(k.account_id.bytes().all(|c| c.is_ascii_digit()));
        assert_ne!(k.account_id, LOCAL_ACCOUNT);
        assert_eq!(k.access_key_id.len(), 20);
        assert!(k.access_key_id.starts_with("AKIA"));
        assert!(k.access_key_id[4..].bytes().all(|c| BASE32.contains(&c)));
        let secret = k.secret_access_key.expose();
        assert_eq!(secret.len(), 40);
        assert!(secret.bytes().all(|c| SECRET_CHARS.contains(&c)));

        let list = a.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "alice");
        assert_eq!(list[0].account_id, k.account_id);
        assert_eq!(list[0].keys[0].access_key_id, k.access_key_id);
        let shown = format!("{list:?} {}", serde_json::to_string(&list).unwrap());
        assert!(!shown.contains(secret), "{shown}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let (_dir, a) = accounts();
        let k = a.create("alice").unwrap();
        let secret = k.secret_access_key.expose().to_string();
        let owner = a.lookup(&k.access_key_id).unwrap().unwrap();
        let snap = a.snapshot().unwrap();
        for shown in [format!("{k:?}"), format!("{owner:?}"), format!("{snap:?}")] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn names_are_checked_and_unique() {
        let (_dir, a) = accounts();
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a/b",
            "123456789012",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(a.create(bad), Err(AccountError::InvalidName(_))),
                "{bad:?}"
            );
        }
        for good in ["a", "team-a.b_c", "1team", &"a".repeat(64)] {
            a.create(good).unwrap();
        }
        assert!(matches!(a.create("a"), Err(AccountError::NameTaken(_))));
    }

    #[test]
    fn ids_and_keys_are_unique() {
        let (_dir, a) = accounts();
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for i in 0..50 {
            let k = a.create(&format!("acct{i}")).unwrap();
            assert!(ids.insert(k.account_id));
            assert!(keys.insert(k.access_key_id));
        }
    }

    #[test]
    fn keys_are_created_looked_up_and_deleted() {
        let (_dir, a) = accounts();
        let first = a.create("alice").unwrap();
        let by_name = a.create_key("alice").unwrap();
        let by_id = a.create_key(&first.account_id).unwrap();
        assert_eq!(by_id.account_id, first.account_id);
        assert_eq!(by_name.name, "alice");
        let list = a.list().unwrap();
        assert_eq!(list[0].keys.len(), 3);

        let owner = a.lookup(&by_name.access_key_id).unwrap().unwrap();
        assert_eq!(owner.account_id, first.account_id);
        assert_eq!(owner.name, "alice");
        assert_eq!(owner.secret_access_key, by_name.secret_access_key);
        assert!(a.lookup("AKIANOSUCHKEY0000000").unwrap().is_none());

        a.delete_key("alice", &by_name.access_key_id).unwrap();
        assert!(a.lookup(&by_name.access_key_id).unwrap().is_none());
        assert!(matches!(
            a.delete_key("alice", &by_name.access_key_id),
            Err(AccountError::NoSuchKey { .. })
        ));
        assert!(matches!(
            a.create_key("bob"),
            Err(AccountError::NoSuchAccount(_))
        ));
        // The last keys may go, as in AWS.
        a.delete_key(&first.account_id, &first.access_key_id)
            .unwrap();
        a.delete_key("alice", &by_id.access_key_id).unwrap();
        assert!(a.list().unwrap()[0].keys.is_empty());
    }

    #[test]
    fn the_file_is_0600_and_loose_modes_are_fixed() {
        let (_dir, a) = accounts();
        a.create("alice").unwrap();
        assert_eq!(mode(a.path()), 0o600);
        std::fs::set_permissions(a.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        a.list().unwrap();
        a.create("bob").unwrap();
        assert_eq!(mode(a.path()), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(a.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn concurrent_creates_are_all_kept() {
        let (_dir, a) = accounts();
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        a.create(&format!("t{t}-{i}")).unwrap();
                        a.create_key(&format!("t{t}-{i}")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let list = a.list().unwrap();
        assert_eq!(list.len(), 40);
        assert!(list.iter().all(|acct| acct.keys.len() == 2));
    }

    #[test]
    fn snapshots_reload_only_when_the_file_changes() {
        let (_dir, a) = accounts();
        let empty = a.snapshot().unwrap();
        assert!(empty.is_empty());
        assert!(a.reload_if_changed(&empty).unwrap().is_none());
        let k = a.create("alice").unwrap();
        let snap = a.reload_if_changed(&empty).unwrap().unwrap();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            snap.lookup(&k.access_key_id).unwrap().account_id,
            k.account_id
        );
        assert!(a.reload_if_changed(&snap).unwrap().is_none());
        let k2 = a.create_key("alice").unwrap();
        let snap2 = a.reload_if_changed(&snap).unwrap().unwrap();
        assert!(snap2.lookup(&k2.access_key_id).is_some());
    }

    #[test]
    fn a_killed_writers_temporary_file_is_removed() {
        let (dir, a) = accounts();
        let leftover = dir.path().join("accounts.json.tmp-1-00000000");
        std::fs::write(&leftover, "secrets").unwrap();
        a.create("alice").unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn a_damaged_file_is_reported_and_left_alone() {
        let (_dir, a) = accounts();
        std::fs::write(a.path(), "{not json").unwrap();
        let err = a.create("alice").unwrap_err();
        assert!(matches!(err, AccountError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(a.path()).unwrap(), "{not json");
    }
}
