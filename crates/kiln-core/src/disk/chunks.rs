//! Disks as chunks for registry and bucket regions ([`kiln_dist::chunked`]): the packs kiln
//! has made are kept in `$KILN_HOME/chunks/packs`, and the index of the newest version of each
//! image in `$KILN_HOME/chunks/index/ACCOUNT/NAME`. A new version is packed against that index:
//! its chunks that an earlier version already has are referenced in the earlier packs, so only
//! one small pack is new, and a region that has the earlier version receives just that pack
//! and the index.

use std::path::{Path, PathBuf};

use kiln_chunk::ChunkIndex;
use kiln_dist::chunked::ChunkedDisk;

use crate::store::{Home, StoreError};

/// Where packs are kept.
pub fn packs_dir(home: &Home) -> PathBuf {
    home.root.join("chunks").join("packs")
}

fn index_path(home: &Home, account: &str, name: &str) -> PathBuf {
    home.root
        .join("chunks")
        .join("index")
        .join(account)
        .join(name.to_ascii_lowercase())
}

/// An encrypted disk's versions are packed against each other only (`NAME.key-KEYID`): a
/// plain index's frames are not sealed, and another key's cannot be opened by readers.
fn keyed_index_path(
    home: &Home,
    account: &str,
    name: &str,
    key: Option<&kiln_kms::OpenKey>,
) -> PathBuf {
    match key {
        None => index_path(home, account, name),
        Some(k) => index_path(
            home,
            account,
            &format!("{name}.key-{}", k.info().arn.key_id),
        ),
    }
}

/// The newest version's index of `name`, when every pack it uses is still here (an index
/// whose packs are gone cannot be packed against: regions lacking them could not get them).
fn known(path: &Path, home: &Home) -> Option<ChunkIndex> {
    let bytes = std::fs::read(path).ok()?;
    let index = ChunkIndex::decode(&bytes).ok()?;
    let dir = packs_dir(home);
    index
        .packs
        .iter()
        .all(|p| kiln_dist::chunked::blob_file(&dir, &p.digest.to_string()).is_file())
        .then_some(index)
}

/// Cuts the raw disk at `raw` into chunks and packs the new ones; the index becomes the
/// image's newest.
pub fn pack(home: &Home, account: &str, name: &str, raw: &Path) -> Result<ChunkedDisk, StoreError> {
    pack_keyed(home, account, name, raw, None)
}

/// [`pack`], encrypted under the image's data key for `key` when given (made on first use,
/// kept wrapped in `$KILN_HOME/kms/datakeys`, so that versions share chunks).
pub fn pack_keyed(
    home: &Home,
    account: &str,
    name: &str,
    raw: &Path,
    key: Option<&kiln_kms::OpenKey>,
) -> Result<ChunkedDisk, StoreError> {
    let dir = packs_dir(home);
    std::fs::create_dir_all(&dir).map_err(crate::store::io("creating", &dir))?;
    let index_path = keyed_index_path(home, account, name, key);
    let known = known(&index_path, home);
    let data_key = match key {
        Some(k) => Some(kiln_kms::DataKeys::new(&home.root).for_image(
            k,
            account,
            &name.to_ascii_lowercase(),
        )?),
        None => None,
    };
    let (disk, index) = kiln_dist::chunked::pack_keyed(
        raw,
        known.as_ref(),
        &dir,
        data_key.as_ref().map(|(d, w)| (d, w)),
    )?;
    // The index kept here is the plain one (the local store is not encrypted).
    let plain = index.encode()?;
    crate::store::write_atomic(&index_path, &plain)?;
    Ok(disk)
}
