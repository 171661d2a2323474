//! Rebuilding a disk from its index: chunks of a local earlier version where they match, the
//! rest by coalesced ranged reads of packs, checked chunk by chunk and as a whole.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::chunker::stream_chunks;
use crate::seal::FrameSeal;
use crate::{ChunkError, ChunkIndex, Digest};

/// Neighbouring chunk frames closer than this are read in one request, the gap read and thrown
/// away: a request costs more than 64 KiB of transfer on any registry or bucket.
pub const MAX_GAP: u64 = 64 * 1024;
/// No request reads more than this (but a single frame longer than it), so that a read that
/// fails costs little to retry and memory stays bounded.
pub const MAX_READ: u64 = 8 * 1024 * 1024;

/// Where a rebuild reads ranges of packs: a registry's blobs, an S3 bucket, a local folder.
#[async_trait]
pub trait PackSource: Send + Sync {
    /// `length` bytes at `offset` of the pack blob `pack`; fewer is an error.
    async fn read(
        &self,
        pack: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, std::io::Error>;
}

/// What a [`rebuild`] read, from where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// Bytes read from the pack source (compressed, gaps included).
    pub bytes_fetched: u64,
    /// Bytes of the disk written from the base file.
    pub bytes_reused: u64,
    /// Entries whose chunk was fetched from a pack.
    pub chunks_fetched: usize,
    /// Entries whose chunk came from the base file.
    pub chunks_reused: usize,
    /// Entries of a repeated all-zero chunk, left as holes without reading anything.
    pub zero_chunks: usize,
    /// Range requests made to the pack source.
    pub range_requests: usize,
}

/// One distinct chunk the disk needs, and where it goes.
#[derive(Debug, Clone)]
struct Need {
    /// The first entry with this digest, for errors and its place in a pack.
    entry: usize,
    length: u32,
    /// Offsets in the disk where it goes.
    at: Vec<u64>,
    filled: bool,
}

/// One range request: frames of one pack, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetch {
    pack: u32,
    start: u64,
    end: u64,
    /// (digest, frame offset, frame length) of each chunk to take from it.
    frames: Vec<(Digest, u64, u32)>,
}

/// Rebuilds the disk `index` describes at `out`. Chunks of `base` (an earlier version, chunked
/// with the index's parameters) whose digests the disk has are copied; the others are read
/// from `source` in coalesced ranges ([`MAX_GAP`], [`MAX_READ`]), decompressed and checked.
/// Repeated all-zero chunks are left as holes. The file is written beside `out` and renamed
/// onto it only once its sha256 is the index's: on any error `out` is as it was and nothing is
/// left. `out` may be `base`. Needs a tokio runtime: reading the base and hashing the result
/// run on its blocking threads; chunks fetched are written from the calling task.
pub async fn rebuild(
    index: &ChunkIndex,
    out: &Path,
    base: Option<&Path>,
    source: &dyn PackSource,
) -> Result<RebuildStats, ChunkError> {
    rebuild_sealed(index, out, base, source, None).await
}

/// [`rebuild`] of a disk whose packs were sealed by `seal` ([`crate::pack_sealed`]).
pub async fn rebuild_sealed(
    index: &ChunkIndex,
    out: &Path,
    base: Option<&Path>,
    source: &dyn PackSource,
    seal: Option<&dyn FrameSeal>,
) -> Result<RebuildStats, ChunkError> {
    index.check()?;
    let mut stats = RebuildStats::default();
    let (mut needs, zero_chunks) = needs_of(index);
    stats.zero_chunks = zero_chunks;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".kiln-rebuild-")
        .tempfile_in(&dir)
        .map_err(ChunkError::io("creating the disk's temp file in", &dir))?;
    // Holes: what is never written reads as zeros.
    temp.as_file()
        .set_len(index.size)
        .map_err(ChunkError::io("sizing the disk", temp.path()))?;
    if let Some(base) = base {
        let file = temp
            .as_file()
            .try_clone()
            .map_err(ChunkError::io("opening the disk", temp.path()))?;
        let (base, temp_path, params) =
            (base.to_path_buf(), temp.path().to_path_buf(), index.params);
        needs = blocking("reading the base disk", move || {
            copy_from_base(&base, &params, &file, &temp_path, &mut needs)?;
            Ok(needs)
        })
        .await?;
    }
    for need in needs.values().filter(|n| n.filled) {
        stats.chunks_reused += need.at.len();
        stats.bytes_reused += u64::from(need.length) * need.at.len() as u64;
    }
    for fetch in plan(index, &needs) {
        fetch_range(
            index,
            &fetch,
            &mut needs,
            temp.as_file(),
            temp.path(),
            Packs { source, seal },
            &mut stats,
        )
        .await?;
    }
    let expected = index.digest;
    let out_path = out.to_path_buf();
    blocking("checking the rebuilt disk", move || {
        finish(temp, expected, out_path)
    })
    .await?;
    tracing::debug!(?stats, out = %out.display(), "rebuilt disk");
    Ok(stats)
}

/// Runs `f` on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    doing: &'static str,
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, ChunkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChunkError::Task {
            doing,
            why: e.to_string(),
        })?
}

/// The distinct non-zero chunks the disk needs, and how many entries are repeated zero chunks.
/// Only digests used more than once are compared with zeros of their length: hashing zeros
/// for every chunk would cost as much as hashing the disk, and a zero chunk used once is
/// simply fetched (and still written as a hole).
fn needs_of(index: &ChunkIndex) -> (HashMap<Digest, Need>, usize) {
    let mut needs: HashMap<Digest, Need> = HashMap::new();
    let mut at = 0u64;
    for (i, e) in index.entries.iter().enumerate() {
        needs
            .entry(e.digest)
            .or_insert(Need {
                entry: i,
                length: e.length,
                at: Vec::new(),
                filled: false,
            })
            .at
            .push(at);
        at += u64::from(e.length);
    }
    let mut zero_digest_of: HashMap<u32, Digest> = HashMap::new();
    let mut zeros = 0;
    needs.retain(|digest, need| {
        if need.at.len() < 2 {
            return true;
        }
        let zero = *zero_digest_of
            .entry(need.length)
            .or_insert_with(|| Digest::of(&vec![0u8; need.length as usize]));
        if zero == *digest {
            zeros += need.at.len();
            return false;
        }
        true
    });
    (needs, zeros)
}

/// Chunks `base` and writes every chunk the disk needs where it goes, marking it filled. A base
/// chunk's digest is computed from the bytes read, so what is copied is what the index names.
fn copy_from_base(
    base: &Path,
    params: &crate::Params,
    out: &File,
    out_path: &Path,
    needs: &mut HashMap<Digest, Need>,
) -> Result<(), ChunkError> {
    let file = File::open(base).map_err(ChunkError::io("opening the base disk", base))?;
    stream_chunks(file, base, params, |chunk, bytes| {
        if let Some(need) = needs.get_mut(&chunk.digest).filter(|n| !n.filled) {
            write_chunk(out, out_path, bytes, &need.at)?;
            need.filled = true;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes `bytes` at each offset, unless they are all zero: the file was sized with holes.
fn write_chunk(out: &File, out_path: &Path, bytes: &[u8], at: &[u64]) -> Result<(), ChunkError> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(());
    }
    for &offset in at {
        out.write_all_at(bytes, offset)
            .map_err(ChunkError::io("writing the disk", out_path))?;
    }
    Ok(())
}

/// The range requests for every need not filled: frames grouped by pack in offset order, a
/// request extended to the next frame while the gap is at most [`MAX_GAP`] and the request at
/// most [`MAX_READ`].
fn plan(index: &ChunkIndex, needs: &HashMap<Digest, Need>) -> Vec<Fetch> {
    let mut by_pack: BTreeMap<u32, Vec<(u64, u32, Digest)>> = BTreeMap::new();
    for (digest, need) in needs.iter().filter(|(_, n)| !n.filled) {
        let e = &index.entries[need.entry];
        by_pack
            .entry(e.pack)
            .or_default()
            .push((e.offset, e.stored, *digest));
    }
    let mut fetches = Vec::new();
    for (pack, mut frames) in by_pack {
        frames.sort_unstable();
        let mut current: Option<Fetch> = None;
        for (offset, stored, digest) in frames {
            let end = offset + u64::from(stored);
            if let Some(f) = current.as_mut() {
                let joins = offset <= f.end.saturating_add(MAX_GAP);
                if joins && end.max(f.end) - f.start <= MAX_READ {
                    f.end = f.end.max(end);
                    f.frames.push((digest, offset, stored));
                    continue;
                }
            }
            fetches.extend(current.take());
            current = Some(Fetch {
                pack,
                start: offset,
                end,
                frames: vec![(digest, offset, stored)],
            });
        }
        fetches.extend(current);
    }
    fetches
}

/// Where frames come from and how they open.
#[derive(Clone, Copy)]
struct Packs<'a> {
    source: &'a dyn PackSource,
    seal: Option<&'a dyn FrameSeal>,
}

/// Makes one range request and writes every chunk in it, each decompressed and checked.
async fn fetch_range(
    index: &ChunkIndex,
    fetch: &Fetch,
    needs: &mut HashMap<Digest, Need>,
    out: &File,
    out_path: &Path,
    packs: Packs<'_>,
    stats: &mut RebuildStats,
) -> Result<(), ChunkError> {
    let Packs { source, seal } = packs;
    // plan() only names packs of the index.
    let pack = index.packs[fetch.pack as usize].digest;
    let length = fetch.end - fetch.start;
    let source_err = |source| ChunkError::Source {
        pack,
        offset: fetch.start,
        length,
        source,
    };
    stats.range_requests += 1;
    let bytes = source
        .read(&pack, fetch.start, length)
        .await
        .map_err(source_err)?;
    if bytes.len() as u64 != length {
        return Err(source_err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the source gave {} bytes", bytes.len()),
        )));
    }
    stats.bytes_fetched += length;
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(|source| ChunkError::Zstd {
        doing: "starting to decompress chunks",
        source,
    })?;
    for &(digest, offset, stored) in &fetch.frames {
        let Some(need) = needs.get_mut(&digest) else {
            continue;
        };
        let bad = |why: String| ChunkError::BadChunk {
            chunk: need.entry,
            digest,
            pack,
            offset,
            why,
        };
        let from = (offset - fetch.start) as usize;
        let stored_frame = &bytes[from..from + stored as usize];
        let opened;
        let frame = match seal {
            Some(seal) => {
                opened = seal
                    .open(stored_frame)
                    .map_err(|why| bad(format!("it does not decrypt: {why}")))?;
                &opened[..]
            }
            None => stored_frame,
        };
        let chunk = decompressor
            .decompress(frame, need.length as usize)
            .map_err(|e| bad(format!("not a zstd frame of {} bytes: {e}", need.length)))?;
        if chunk.len() != need.length as usize {
            return Err(bad(format!("{} bytes, not {}", chunk.len(), need.length)));
        }
        let actual = Digest::of(&chunk);
        if actual != digest {
            return Err(bad(format!("its bytes have digest {actual}")));
        }
        write_chunk(out, out_path, &chunk, &need.at)?;
        need.filled = true;
        stats.chunks_fetched += need.at.len();
    }
    Ok(())
}

/// Hashes the rebuilt file and, if it is the disk the index names, renames it onto `out`.
fn finish(temp: NamedTempFile, expected: Digest, out: PathBuf) -> Result<(), ChunkError> {
    let mut file =
        File::open(temp.path()).map_err(ChunkError::io("reading the disk", temp.path()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(ChunkError::io("reading the disk", temp.path()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = Digest(hasher.finalize().into());
    if actual != expected {
        return Err(ChunkError::FileDigest { expected, actual });
    }
    temp.as_file()
        .sync_all()
        .map_err(ChunkError::io("writing the disk", temp.path()))?;
    temp.persist(&out).map_err(|e| ChunkError::Io {
        doing: "renaming the rebuilt disk onto",
        path: out.clone(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::test_util::{random_bytes, write_file};
    use crate::{chunk_file, pack, IndexEntry, PackRef, Packed, Params};

    /// Packs in memory, as a registry would serve them; can flip a byte or cut a read short.
    #[derive(Default)]
    struct MemSource {
        packs: HashMap<Digest, Vec<u8>>,
        flip_at: Option<u64>,
        short: bool,
        reads: Mutex<Vec<(u64, u64)>>,
    }

    #[async_trait]
    impl PackSource for MemSource {
        async fn read(&self, pack: &Digest, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
            self.reads.lock().unwrap().push((offset, length));
            let bytes = self.packs.get(pack).ok_or(std::io::ErrorKind::NotFound)?;
            let (start, end) = (offset as usize, (offset + length) as usize);
            let mut out = bytes
                .get(start..end)
                .ok_or(std::io::ErrorKind::InvalidInput)?
                .to_vec();
            if let Some(at) = self
                .flip_at
                .filter(|at| (offset..offset + length).contains(at))
            {
                out[(at - offset) as usize] ^= 0x40;
            }
            if self.short {
                out.pop();
            }
            Ok(out)
        }
    }

    impl MemSource {
        fn add(&mut self, packed: &Packed) {
            if let Some(p) = &packed.new_pack {
                self.packs.insert(p.digest, std::fs::read(&p.path).unwrap());
            }
        }
    }

    fn version(dir: &Path, name: &str, data: &[u8], known: &[ChunkIndex]) -> Packed {
        let path = write_file(dir, name, data);
        let chunked = chunk_file(&path, &Params::DEFAULT).unwrap();
        let packs = dir.join("packs");
        std::fs::create_dir_all(&packs).unwrap();
        pack(&path, &chunked, known, &packs).unwrap()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mixed_disk(seed: u64) -> Vec<u8> {
        let mut data = random_bytes(seed, 3 << 20);
        data.extend(std::iter::repeat_n(0u8, 2 << 20));
        data.extend(random_bytes(seed + 1, (1 << 20) + 123));
        data
    }

    #[tokio::test]
    async fn without_a_base_every_chunk_is_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let data = mixed_disk(20);
        let packed = version(dir.path(), "v1", &data, &[]);
        let mut source = MemSource::default();
        source.add(&packed);
        let out = dir.path().join("out");
        let stats = rebuild(&packed.index, &out, None, &source).await.unwrap();
        assert!(std::fs::read(&out).unwrap() == data);
        let entries = packed.index.entries.len();
        assert_eq!(stats.chunks_fetched + stats.zero_chunks, entries);
        assert!(stats.zero_chunks >= 14, "{stats:?}");
        // The whole pack is under MAX_READ and its frames are contiguous: one request.
        assert_eq!(stats.range_requests, 1, "{stats:?}");
        assert_eq!(stats.bytes_reused, 0);
        assert_eq!(names_in(dir.path()), ["out", "packs", "v1"]);
    }

    #[tokio::test]
    async fn a_base_version_gives_all_but_the_changed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = mixed_disk(30);
        let mut v2 = v1.clone();
        v2.splice(4_000_000..4_000_000, random_bytes(32, 100));
        v2[1_000_000..1_000_050].copy_from_slice(&random_bytes(33, 50));
        let p1 = version(dir.path(), "v1", &v1, &[]);
        let p2 = version(dir.path(), "v2", &v2, std::slice::from_ref(&p1.index));
        let mut source = MemSource::default();
        source.add(&p1);
        source.add(&p2);
        let base = write_file(dir.path(), "base", &v1);
        let out = dir.path().join("out");
        let stats = rebuild(&p2.index, &out, Some(&base), &source)
            .await
            .unwrap();
        assert!(std::fs::read(&out).unwrap() == v2);
        assert!(stats.bytes_fetched < 600 * 1024, "{stats:?}");
        assert!(stats.chunks_fetched <= 6, "{stats:?}");
        assert!(stats.bytes_reused > 3 << 20, "{stats:?}");
        assert_eq!(
            stats.chunks_fetched + stats.chunks_reused + stats.zero_chunks,
            p2.index.entries.len()
        );
        assert_eq!(stats.range_requests, source.reads.lock().unwrap().len());

        // In place: the base is the output.
        let stats = rebuild(&p2.index, &base, Some(&base), &source)
            .await
            .unwrap();
        assert!(std::fs::read(&base).unwrap() == v2);
        assert!(stats.chunks_reused > 0);
        assert!(!names_in(dir.path()).iter().any(|n| n.starts_with(".kiln")));
    }

    #[tokio::test]
    async fn a_bad_source_leaves_out_untouched_and_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let data = mixed_disk(40);
        let packed = version(dir.path(), "v1", &data, &[]);
        let out = write_file(dir.path(), "out", b"the previous disk");
        let before = names_in(dir.path());
        let frame = packed.index.entries[3];
        let mut flipped = MemSource {
            flip_at: Some(frame.offset + u64::from(frame.stored) / 2),
            ..MemSource::default()
        };
        flipped.add(&packed);
        let err = rebuild(&packed.index, &out, None, &flipped)
            .await
            .unwrap_err();
        match &err {
            ChunkError::BadChunk {
                chunk,
                pack,
                offset,
                ..
            } => {
                assert_eq!((*chunk, *offset), (3, frame.offset));
                assert_eq!(*pack, packed.index.packs[0].digest);
            }
            e => panic!("{e}"),
        }
        let mut short = MemSource {
            short: true,
            ..MemSource::default()
        };
        short.add(&packed);
        let err = rebuild(&packed.index, &out, None, &short)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Source { .. }), "{err}");
        let err = rebuild(&packed.index, &out, None, &MemSource::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Source { .. }), "{err}");
        let mut good = MemSource::default();
        good.add(&packed);
        let mut lying = packed.index.clone();
        lying.digest = Digest::of(b"another disk");
        let err = rebuild(&lying, &out, None, &good).await.unwrap_err();
        assert!(matches!(err, ChunkError::FileDigest { .. }), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"the previous disk");
        assert_eq!(names_in(dir.path()), before);
    }

    #[tokio::test]
    async fn zeros_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut data = random_bytes(50, 1 << 20);
        data.extend(std::iter::repeat_n(0u8, 30 << 20));
        data.extend(random_bytes(51, 1 << 20));
        let packed = version(dir.path(), "v1", &data, &[]);
        std::fs::remove_file(dir.path().join("v1")).unwrap();
        let mut source = MemSource::default();
        source.add(&packed);
        let out = dir.path().join("out");
        let stats = rebuild(&packed.index, &out, None, &source).await.unwrap();
        assert!(stats.zero_chunks > 200, "{stats:?}");
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), data.len() as u64);
        assert!(meta.blocks() * 512 < 8 << 20, "{} blocks", meta.blocks());
        assert!(std::fs::read(&out).unwrap() == data);
    }

    #[test]
    fn reads_are_coalesced_across_small_gaps_and_capped() {
        // (offset, stored) of frames in one pack, in no particular order.
        let frames = [
            (0u64, 1000u32),
            (1000, 1000),
            (2000 + MAX_GAP, 1000),     // a gap of exactly MAX_GAP: joined
            (3001 + 2 * MAX_GAP, 1000), // one byte more: a new request
            (5_000_000, 4_500_000),
            (9_500_010, 4_500_000), // a gap of 10, but joined would exceed MAX_READ
            (14_000_010, 9_000_000), // longer than MAX_READ on its own
        ];
        let entries: Vec<IndexEntry> = frames
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &(offset, stored))| IndexEntry {
                digest: Digest::of(&i.to_le_bytes()),
                length: 1000,
                pack: 0,
                offset,
                stored,
            })
            .collect();
        let index = ChunkIndex {
            version: crate::FORMAT_VERSION,
            params: Params::DEFAULT,
            size: 7000,
            digest: Digest::of(b""),
            packs: vec![PackRef {
                digest: Digest::of(b"p"),
                size: 23_000_010,
            }],
            entries,
        };
        let (needs, _) = needs_of(&index);
        let ranges: Vec<(u64, u64, usize)> = plan(&index, &needs)
            .iter()
            .map(|f| (f.start, f.end, f.frames.len()))
            .collect();
        assert_eq!(
            ranges,
            [
                (0, 3000 + MAX_GAP, 3),
                (3001 + 2 * MAX_GAP, 4001 + 2 * MAX_GAP, 1),
                (5_000_000, 9_500_000, 1),
                (9_500_010, 14_000_010, 1),
                (14_000_010, 23_000_010, 1),
            ]
        );
    }
}
