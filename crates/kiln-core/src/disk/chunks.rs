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

/// The newest version's index of `name`, when every pack it uses is still here (an index
/// whose packs are gone cannot be packed against: regions lacking them could not get them).
fn known(home: &Home, account: &str, name: &str) -> Option<ChunkIndex> {
    let bytes = std::fs::read(index_path(home, account, name)).ok()?;
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
    let dir = packs_dir(home);
    std::fs::create_dir_all(&dir).map_err(crate::store::io("creating", &dir))?;
    let known = known(home, account, name);
    let (disk, _) = kiln_dist::chunked::pack(raw, known.as_ref(), &dir)?;
    crate::store::write_atomic(&index_path(home, account, name), &disk.index)?;
    Ok(disk)
}
