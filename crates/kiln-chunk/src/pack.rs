//! Packing: the chunks of a disk that no known pack holds, zstd-compressed one frame each into
//! one new pack, and the index that says where every chunk is.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::index::ZSTD_LEVEL;
use crate::seal::FrameSeal;
use crate::{ChunkError, ChunkIndex, Chunked, Digest, IndexEntry, PackRef, FORMAT_VERSION};

/// A pack blob written by [`pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackFile {
    /// Where it is: `OUT_DIR/sha256-HEX`.
    pub path: PathBuf,
    /// The sha256 of its bytes.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`pack`] found and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Uncompressed bytes of the chunks put into the new pack.
    pub new_raw_bytes: u64,
    /// Their compressed size: the new pack's size.
    pub new_stored_bytes: u64,
    /// Chunks (index entries) found in a known index's packs.
    pub chunks_reused: usize,
    /// Distinct chunks put into the new pack.
    pub chunks_new: usize,
    /// Entries whose chunk appeared earlier in this disk (runs of zeros, mostly) and is stored
    /// once.
    pub chunks_repeated: usize,
}

/// The result of [`pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The disk's index: its packs are the known packs it uses, then the new one.
    pub index: ChunkIndex,
    /// The new pack, or `None` when every chunk is in a known pack.
    pub new_pack: Option<PackFile>,
    /// What was reused and what was written.
    pub stats: PackStats,
}

/// Where one entry's chunk is stored, before the new pack has a digest.
#[derive(Clone, Copy)]
enum Place {
    Known {
        pack: PackRef,
        offset: u64,
        stored: u32,
    },
    New {
        offset: u64,
        stored: u32,
    },
}

/// Packs the disk at `source`, chunked as `chunked` says ([`crate::chunk_file`]), against the
/// indexes of earlier versions the destination has (`known`): their chunks are referenced
/// where they are, the others are compressed into one new pack in `out_dir`. The same input
/// gives the same pack, byte for byte (zstd level 3, one thread, one frame a chunk). The disk
/// is read again and checked against `chunked`, so a disk changed in between is refused.
pub fn pack(
    source: &Path,
    chunked: &Chunked,
    known: &[ChunkIndex],
    out_dir: &Path,
) -> Result<Packed, ChunkError> {
    pack_sealed(source, chunked, known, out_dir, None)
}

/// [`pack`], each new frame sealed by `seal` (an encrypted disk). `known` must be indexes
/// of packs sealed the same way: their frames are referenced as they are.
pub fn pack_sealed(
    source: &Path,
    chunked: &Chunked,
    known: &[ChunkIndex],
    out_dir: &Path,
    seal: Option<&dyn FrameSeal>,
) -> Result<Packed, ChunkError> {
    chunked.params.check()?;
    let mut known_places = HashMap::new();
    for index in known {
        index.check()?;
        for e in &index.entries {
            // check() made sure e.pack is in range.
            let pack = index.packs[e.pack as usize];
            known_places.entry(e.digest).or_insert(Place::Known {
                pack,
                offset: e.offset,
                stored: e.stored,
            });
        }
    }
    let temp = tempfile::Builder::new()
        .prefix(".kiln-pack-")
        .tempfile_in(out_dir)
        .map_err(ChunkError::io("creating a pack in", out_dir))?;
    let (places, stats, pack_digest) =
        write_new_chunks(source, chunked, &known_places, &temp, seal)?;
    let new_pack = if stats.chunks_new > 0 {
        let path = out_dir.join(format!("sha256-{}", pack_digest.hex()));
        temp.as_file()
            .sync_all()
            .map_err(ChunkError::io("writing the pack", temp.path()))?;
        temp.persist(&path).map_err(|e| ChunkError::Io {
            doing: "naming the pack",
            path: path.clone(),
            source: e.error,
        })?;
        Some(PackFile {
            path,
            digest: pack_digest,
            size: stats.new_stored_bytes,
        })
    } else {
        None
    };
    let index = index_of(chunked, &places, new_pack.as_ref());
    // A slip here would ship an index no reader can use: better to fail the push.
    index.check()?;
    Ok(Packed {
        index,
        new_pack,
        stats,
    })
}

/// Reads the disk chunk by chunk, checks it is what `chunked` says, and appends the chunks no
/// known pack has (each once) to `temp`. Returns every entry's place, the stats and the digest
/// of what was written to `temp`.
fn write_new_chunks(
    source: &Path,
    chunked: &Chunked,
    known: &HashMap<Digest, Place>,
    temp: &tempfile::NamedTempFile,
    seal: Option<&dyn FrameSeal>,
) -> Result<(Vec<Place>, PackStats, Digest), ChunkError> {
    let changed = |what: String| ChunkError::SourceChanged {
        path: source.to_path_buf(),
        what,
    };
    let file = File::open(source).map_err(ChunkError::io("opening the disk to pack", source))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = BufWriter::with_capacity(1 << 20, temp.as_file());
    let mut compressor =
        zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|source| ChunkError::Zstd {
            doing: "starting to compress a pack",
            source,
        })?;
    let mut whole = Sha256::new();
    let mut pack_hash = Sha256::new();
    let mut new_places: HashMap<Digest, Place> = HashMap::new();
    let mut places = Vec::with_capacity(chunked.chunks.len());
    let mut stats = PackStats::default();
    let mut at = 0u64;
    let mut buf = Vec::new();
    for chunk in &chunked.chunks {
        if chunk.offset != at {
            return Err(changed(format!(
                "chunk at {} after {at} bytes",
                chunk.offset
            )));
        }
        buf.resize(chunk.length as usize, 0);
        reader.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => changed(format!("shorter than {}", at + 1)),
            _ => ChunkError::Io {
                doing: "reading the disk to pack",
                path: source.to_path_buf(),
                source: e,
            },
        })?;
        at += u64::from(chunk.length);
        whole.update(&buf);
        if Digest::of(&buf) != chunk.digest {
            return Err(changed(format!("the chunk at {} differs", chunk.offset)));
        }
        if let Some(place) = known.get(&chunk.digest) {
            stats.chunks_reused += 1;
            places.push(*place);
            continue;
        }
        if let Some(place) = new_places.get(&chunk.digest) {
            stats.chunks_repeated += 1;
            places.push(*place);
            continue;
        }
        let frame = compressor
            .compress(&buf)
            .map_err(|source| ChunkError::Zstd {
                doing: "compressing a chunk",
                source,
            })?;
        let frame = match seal {
            Some(seal) => seal.seal(&frame).map_err(|why| ChunkError::Seal {
                doing: "encrypting a chunk",
                why,
            })?,
            None => frame,
        };
        let place = Place::New {
            offset: stats.new_stored_bytes,
            // A frame is at most a little more than its chunk (<= 16 MiB).
            stored: u32::try_from(frame.len()).unwrap_or(u32::MAX),
        };
        out.write_all(&frame)
            .map_err(ChunkError::io("writing the pack", temp.path()))?;
        pack_hash.update(&frame);
        stats.new_stored_bytes += frame.len() as u64;
        stats.new_raw_bytes += u64::from(chunk.length);
        stats.chunks_new += 1;
        new_places.insert(chunk.digest, place);
        places.push(place);
    }
    let mut rest = [0u8; 1];
    let more = reader
        .read(&mut rest)
        .map_err(ChunkError::io("reading the disk to pack", source))?;
    if more > 0 || at != chunked.size {
        return Err(changed(format!("not {} bytes long", chunked.size)));
    }
    if Digest(whole.finalize().into()) != chunked.digest {
        return Err(changed(format!(
            "its digest is no longer {}",
            chunked.digest
        )));
    }
    out.flush()
        .map_err(ChunkError::io("writing the pack", temp.path()))?;
    Ok((places, stats, Digest(pack_hash.finalize().into())))
}

/// The index of the packed disk: known packs in order of first use, then the new pack.
fn index_of(chunked: &Chunked, places: &[Place], new_pack: Option<&PackFile>) -> ChunkIndex {
    let mut packs: Vec<PackRef> = Vec::new();
    let mut numbers: HashMap<Digest, u32> = HashMap::new();
    for place in places {
        if let Place::Known { pack, .. } = place {
            numbers.entry(pack.digest).or_insert_with(|| {
                packs.push(*pack);
                (packs.len() - 1) as u32
            });
        }
    }
    let new_number = packs.len() as u32;
    if let Some(p) = new_pack {
        packs.push(PackRef {
            digest: p.digest,
            size: p.size,
        });
    }
    let entries = chunked
        .chunks
        .iter()
        .zip(places)
        .map(|(chunk, place)| {
            let (pack, offset, stored) = match *place {
                Place::Known {
                    pack,
                    offset,
                    stored,
                } => (
                    numbers.get(&pack.digest).copied().unwrap_or(0),
                    offset,
                    stored,
                ),
                Place::New { offset, stored } => (new_number, offset, stored),
            };
            IndexEntry {
                digest: chunk.digest,
                length: chunk.length,
                pack,
                offset,
                stored,
            }
        })
        .collect();
    ChunkIndex {
        version: FORMAT_VERSION,
        params: chunked.params,
        size: chunked.size,
        digest: chunked.digest,
        packs,
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{random_bytes, write_file};
    use crate::{chunk_file, Params};

    fn packed(dir: &Path, name: &str, data: &[u8], known: &[ChunkIndex]) -> Packed {
        let path = write_file(dir, name, data);
        let chunked = chunk_file(&path, &Params::DEFAULT).unwrap();
        let out = dir.join(format!("{name}.packs"));
        std::fs::create_dir_all(&out).unwrap();
        pack(&path, &chunked, known, &out).unwrap()
    }

    #[test]
    fn deterministic_and_repeats_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = random_bytes(7, 2 << 20);
        data.extend(std::iter::repeat_n(0u8, 3 << 20));
        data.extend(random_bytes(8, 1 << 20));
        let a = packed(dir.path(), "a", &data, &[]);
        let b = packed(dir.path(), "b", &data, &[]);
        let (pa, pb) = (a.new_pack.clone().unwrap(), b.new_pack.clone().unwrap());
        assert_eq!(pa.digest, pb.digest);
        assert_eq!(a.index, b.index);
        let bytes = std::fs::read(&pa.path).unwrap();
        assert_eq!(bytes, std::fs::read(&pb.path).unwrap());
        assert_eq!(Digest::of(&bytes), pa.digest);
        assert_eq!(
            pa.path.file_name().unwrap().to_str().unwrap(),
            format!("sha256-{}", pa.digest.hex())
        );
        assert_eq!(bytes.len() as u64, pa.size);
        // 3 MiB of zeros is many 64 KiB chunks of one digest, stored once.
        assert!(a.stats.chunks_repeated >= 20, "{:?}", a.stats);
        assert!(a.stats.new_raw_bytes < (3 << 20) + 400_000, "{:?}", a.stats);
        assert_eq!(
            a.index.packs,
            vec![PackRef {
                digest: pa.digest,
                size: pa.size
            }]
        );
        assert_eq!(
            a.stats.chunks_new + a.stats.chunks_repeated,
            a.index.entries.len()
        );
        // No temp file is left beside the pack.
        assert_eq!(
            std::fs::read_dir(pa.path.parent().unwrap())
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn known_chunks_are_referenced_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = random_bytes(9, 4 << 20);
        let mut v2 = v1.clone();
        v2[2_000_000..2_000_100].copy_from_slice(&random_bytes(10, 100));
        let first = packed(dir.path(), "v1", &v1, &[]);
        let old = first.new_pack.clone().unwrap();
        let second = packed(dir.path(), "v2", &v2, std::slice::from_ref(&first.index));
        let new = second.new_pack.clone().unwrap();
        assert!(second.stats.chunks_new <= 3, "{:?}", second.stats);
        assert!(new.size * 20 < old.size, "{} vs {}", new.size, old.size);
        assert_eq!(
            second.index.packs,
            vec![
                PackRef {
                    digest: old.digest,
                    size: old.size
                },
                PackRef {
                    digest: new.digest,
                    size: new.size
                },
            ]
        );
        // Reused entries point where the first index had them.
        let where_first: HashMap<_, _> = first
            .index
            .entries
            .iter()
            .map(|e| (e.digest, (e.offset, e.stored)))
            .collect();
        for e in second.index.entries.iter().filter(|e| e.pack == 0) {
            assert_eq!(where_first[&e.digest], (e.offset, e.stored));
        }
        // The same disk again: nothing new, no pack, only the old pack listed.
        let again = packed(
            dir.path(),
            "v1again",
            &v1,
            std::slice::from_ref(&first.index),
        );
        assert_eq!(again.new_pack, None);
        assert_eq!(again.index.packs, first.index.packs);
        assert_eq!(again.index.entries, first.index.entries);
        assert_eq!(
            std::fs::read_dir(dir.path().join("v1again.packs"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_disk_changed_since_chunking_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = random_bytes(11, 1 << 20);
        let path = write_file(dir.path(), "disk", &data);
        let chunked = chunk_file(&path, &Params::DEFAULT).unwrap();
        let mut changed = data.clone();
        changed[500_000] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let err = pack(&path, &chunked, &[], dir.path()).unwrap_err();
        assert!(matches!(err, ChunkError::SourceChanged { .. }), "{err}");
        std::fs::write(&path, &data[..data.len() - 1]).unwrap();
        let err = pack(&path, &chunked, &[], dir.path()).unwrap_err();
        assert!(matches!(err, ChunkError::SourceChanged { .. }), "{err}");
        // Only the disk is left: the temp pack went with the error.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
