//! Files that hold key material: written 0600 through a temporary file and a rename, changed
//! under an exclusive `flock`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{crypto, KmsError};

/// Writes `bytes` to `path`, mode 0600, replacing it whole (readers never see half a file).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KmsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(KmsError::io("create", dir))?;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        hex::encode(crypto::random::<4>()?)
    ));
    let tmp = std::path::PathBuf::from(name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away; set 0600 exactly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(KmsError::io("write", &tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        KmsError::io("write", path)(e)
    })
}

/// An exclusive lock on `path` (created 0600), held until the value is dropped.
pub fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>, KmsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(KmsError::io("create", dir))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(KmsError::io("open", path))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        KmsError::io("lock", path)(std::io::Error::from_raw_os_error(errno as i32))
    })
}

/// The file's bytes, or `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, KmsError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KmsError::io("read", path)(e)),
    }
}
