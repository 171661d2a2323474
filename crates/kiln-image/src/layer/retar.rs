//! Layers from an existing tarball (a rootfs tarball, mmdebstrap's output, a foreign layer),
//! rewritten so that the blob depends on the content only.
//!
//! Sorting needs random access to the entries, which a compressed stream does not give: a
//! compressed input is first spooled, decompressed, next to the output, then indexed (headers
//! only) and copied out in order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::tarw::{AppendError, Head, Kind};
use super::{
    check_epoch, clean_path, keep_xattr, open_tar_stream, show, sort_key, BlobSink, Compression,
    Detected, LayerBlob, LayerError,
};

#[derive(Debug, Clone)]
enum What {
    File {
        pos: u64,
        size: u64,
    },
    Dir,
    Symlink(Vec<u8>),
    /// Target path, cleaned.
    HardLink(Vec<u8>),
    Char(u64, u64),
    Block(u64, u64),
    Fifo,
}

#[derive(Debug, Clone)]
struct InEntry {
    path: Vec<u8>,
    what: What,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Rewrites a tarball (plain, gzip or zstd, told apart by magic bytes) into a deterministic
/// layer blob in `<out_dir>/sha256/<hex>`: entries sorted as [`super::write_layer`] sorts
/// them, `./` prefixes dropped, mtimes clamped to at most `epoch`, user and group names
/// dropped, ids, modes, links, devices and the xattrs [`super::write_layer`] keeps kept. When a
/// path appears twice the later entry wins, as when extracting. Hardlinks are re-pointed so
/// the first of a group in the new order carries the content. The root directory entry is
/// dropped, as [`super::write_layer`] never writes one.
pub fn layer_from_tar(
    tar_file: &Path,
    epoch: i64,
    compression: Compression,
    out_dir: &Path,
) -> Result<LayerBlob, LayerError> {
    let epoch = check_epoch(epoch)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| LayerError::io(out_dir, "cannot create the blob directory", e))?;
    let (mut stream, detected) = open_tar_stream(tar_file)?;
    // Keeps the spooled copy alive (and removes it at the end).
    let mut _spool = None;
    let mut plain = if detected == Detected::Plain {
        drop(stream);
        File::open(tar_file).map_err(|e| LayerError::io(tar_file, "cannot open", e))?
    } else {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-untar-")
            .tempfile_in(out_dir)
            .map_err(|e| LayerError::io(out_dir, "cannot create a temporary file", e))?;
        io::copy(&mut stream, tmp.as_file_mut()).map_err(|e| LayerError::BadTar {
            path: tar_file.to_path_buf(),
            message: format!("cannot decompress: {e}"),
        })?;
        let file = tmp
            .reopen()
            .map_err(|e| LayerError::io(tmp.path(), "cannot reopen", e))?;
        _spool = Some(tmp);
        file
    };

    let entries = index(&mut plain, tar_file)?;
    let entries = dedupe(entries);
    let leaders = hardlink_leaders(&entries, tar_file)?;

    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| sort_key(&entries[a].path).cmp(&sort_key(&entries[b].path)));

    let mut sink = BlobSink::new(out_dir, compression)?;
    for &i in &order {
        let entry = &entries[i];
        // A hardlink group's members all describe the file they resolve to.
        let (content, link_to) = match &entry.what {
            What::HardLink(_) | What::File { .. } => match leaders.get(&i) {
                Some((file, leader)) => {
                    let link = (entries[*leader].path != entry.path).then_some(*leader);
                    (&entries[*file], link)
                }
                None => (entry, None),
            },
            _ => (entry, None),
        };
        let mut head = Head {
            path: &entry.path,
            kind: Kind::File,
            mode: content.mode,
            uid: content.uid,
            gid: content.gid,
            mtime: content.mtime.min(epoch),
            size: 0,
            xattrs: &content.xattrs,
        };
        let mut data = None;
        if let Some(leader) = link_to {
            head.kind = Kind::HardLink(&entries[leader].path);
            head.xattrs = &[];
        } else {
            match &content.what {
                What::File { pos, size } => {
                    head.size = *size;
                    if *size > 0 {
                        (&plain)
                            .seek(SeekFrom::Start(*pos))
                            .map_err(|e| LayerError::io(tar_file, "cannot seek", e))?;
                        data = Some((&plain).take(*size));
                    }
                }
                What::Dir => head.kind = Kind::Dir,
                What::Symlink(t) => head.kind = Kind::Symlink(t),
                What::Char(a, b) => head.kind = Kind::Char(*a, *b),
                What::Block(a, b) => head.kind = Kind::Block(*a, *b),
                What::Fifo => head.kind = Kind::Fifo,
                What::HardLink(_) => {
                    // Unreachable: every hardlink has a leader, and links resolve to files.
                    return Err(bad(
                        tar_file,
                        &entry.path,
                        "is a hardlink kiln could not resolve",
                    ));
                }
            }
        }
        let tmp = sink.tmp_path().to_path_buf();
        let reader = data.as_mut().map(|d| d as &mut dyn Read);
        sink.tar.append(&head, reader).map_err(|e| match e {
            AppendError::Write(e) => LayerError::io(&tmp, "cannot write the layer blob", e),
            AppendError::Read(e) => LayerError::io(tar_file, "cannot read", e),
            AppendError::Short => bad(
                tar_file,
                &entry.path,
                "is cut short (the tarball is truncated)",
            ),
            AppendError::Unrepresentable(what) => bad(tar_file, &entry.path, &what),
        })?;
    }
    sink.finish()
}

fn bad(tar_file: &Path, entry: &[u8], what: &str) -> LayerError {
    LayerError::BadTar {
        path: tar_file.to_path_buf(),
        message: format!("entry `{}` {what}", show(entry)),
    }
}

/// Reads every header of a plain tar, recording where each file's content is.
fn index(plain: &mut File, tar_file: &Path) -> Result<Vec<InEntry>, LayerError> {
    let terr = |e: io::Error| LayerError::BadTar {
        path: tar_file.to_path_buf(),
        message: format!("is not a readable tar stream: {e}"),
    };
    let mut archive = tar::Archive::new(&*plain);
    let mut out = Vec::new();
    for entry in archive.entries_with_seek().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        let raw_path = entry.path_bytes().into_owned();
        let header = entry.header();
        let ty = header.entry_type();
        if ty.is_pax_global_extensions() {
            tracing::debug!(tar = %tar_file.display(), "global PAX header ignored");
            continue;
        }
        if ty.is_gnu_sparse() {
            return Err(bad(
                tar_file,
                &raw_path,
                "is a GNU sparse file, which layers cannot hold; re-create the tarball without \
                 --sparse",
            ));
        }
        let field = |r: io::Result<u64>| r.map_err(|e| bad(tar_file, &raw_path, &e.to_string()));
        let mode = header
            .mode()
            .map_err(|e| bad(tar_file, &raw_path, &e.to_string()))?;
        let uid = field(header.uid())?;
        let gid = field(header.gid())?;
        let mut mtime = field(header.mtime())?;
        let device = |n: io::Result<Option<u32>>| -> Result<u64, LayerError> {
            Ok(u64::from(
                n.map_err(|e| bad(tar_file, &raw_path, &e.to_string()))?
                    .unwrap_or(0),
            ))
        };
        let what = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => What::File {
                pos: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Directory => What::Dir,
            tar::EntryType::Symlink => What::Symlink(
                entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(tar_file, &raw_path, "is a symlink without a target"))?
                    .into_owned(),
            ),
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(tar_file, &raw_path, "is a hardlink without a target"))?;
                let target = clean_path(&target)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        bad(
                            tar_file,
                            &raw_path,
                            "is a hardlink to a path outside the archive",
                        )
                    })?;
                What::HardLink(target)
            }
            tar::EntryType::Char => What::Char(
                device(header.device_major())?,
                device(header.device_minor())?,
            ),
            tar::EntryType::Block => What::Block(
                device(header.device_major())?,
                device(header.device_minor())?,
            ),
            tar::EntryType::Fifo => What::Fifo,
            other => {
                tracing::warn!(
                    tar = %tar_file.display(),
                    entry = %show(&raw_path),
                    kind = ?other,
                    "tar entry of a kind layers do not hold left out"
                );
                continue;
            }
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(terr)? {
            for ext in exts {
                let ext = ext.map_err(terr)?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if keep_xattr(name) {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                } else if key.starts_with(b"GNU.sparse.") {
                    return Err(bad(
                        tar_file,
                        &raw_path,
                        "is a PAX sparse file, which layers cannot hold; re-create the tarball \
                         without --sparse",
                    ));
                } else if key == b"mtime" {
                    // PAX times may be fractional or negative; whole seconds at or after 1970.
                    let text = String::from_utf8_lossy(ext.value_bytes()).into_owned();
                    let whole = text.split('.').next().unwrap_or("");
                    mtime = whole.parse::<i64>().map_or(mtime, |t| t.max(0) as u64);
                }
            }
        }
        xattrs.sort();
        xattrs.dedup_by(|a, b| a.0 == b.0);
        let path = clean_path(&raw_path)
            .ok_or_else(|| bad(tar_file, &raw_path, "has a `..` component"))?;
        if path.is_empty() {
            // The root directory: see the function's documentation.
            continue;
        }
        out.push(InEntry {
            path,
            what,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        });
    }
    Ok(out)
}

/// Keeps the last entry of each path, in archive order.
fn dedupe(entries: Vec<InEntry>) -> Vec<InEntry> {
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert(e.path.clone(), i);
    }
    entries
        .into_iter()
        .enumerate()
        .filter(|(i, e)| last.get(&e.path) == Some(i))
        .map(|(_, e)| e)
        .collect()
}

/// For every member of a hardlink group (the file and the links to it): the index of the file
/// entry and of the member that comes first in layer order (it carries the content).
fn hardlink_leaders(
    entries: &[InEntry],
    tar_file: &Path,
) -> Result<HashMap<usize, (usize, usize)>, LayerError> {
    let by_path: HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_slice(), i))
        .collect();
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let What::HardLink(_) = &entry.what else {
            continue;
        };
        // Follow link-to-link chains to the file; a chain longer than the archive is a cycle.
        let mut at = i;
        let mut steps = 0;
        let file = loop {
            match &entries[at].what {
                What::HardLink(target) => {
                    let Some(&next) = by_path.get(target.as_slice()) else {
                        return Err(bad(
                            tar_file,
                            &entry.path,
                            &format!(
                                "is a hardlink to `{}`, which is not in the archive",
                                show(target)
                            ),
                        ));
                    };
                    at = next;
                }
                What::File { .. } => break at,
                _ => {
                    return Err(bad(
                        tar_file,
                        &entry.path,
                        "is a hardlink to something that is not a regular file",
                    ))
                }
            }
            steps += 1;
            if steps > entries.len() {
                return Err(bad(
                    tar_file,
                    &entry.path,
                    "is a hardlink in a cycle of hardlinks",
                ));
            }
        };
        groups.entry(file).or_insert_with(|| vec![file]).push(i);
    }
    let mut leaders = HashMap::new();
    for (file, members) in groups {
        let leader = members
            .iter()
            .copied()
            .min_by(|&a, &b| sort_key(&entries[a].path).cmp(&sort_key(&entries[b].path)))
            .unwrap_or(file);
        for m in members {
            leaders.insert(m, (file, leader));
        }
    }
    Ok(leaders)
}
