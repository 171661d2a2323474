//! Content-defined chunking of a file with FastCDC (2020), streamed.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use fastcdc::v2020::{self, StreamCDC};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ChunkError, Digest};

/// FastCDC's chunk sizes, in bytes. A reader chunks its base file with the parameters the index
/// records: other parameters cut elsewhere and find (almost) nothing to reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// No chunk but a file's last is shorter.
    pub min: u32,
    /// The size chunks are normalised towards.
    pub avg: u32,
    /// No chunk is longer: a run of zeros is cut into chunks of this size.
    pub max: u32,
}

impl Params {
    /// 4 KiB / 16 KiB / 64 KiB: about 65,536 chunks per GiB. Smaller chunks find more to reuse
    /// after a package update but make a bigger index and more range reads. Measured on
    /// golden-nginx's disk (bench/distribution.sh): a one-package update sent 9.1 MiB of disk
    /// with these, 13.7 MiB with 8/32/128 KiB (a new file renumbers the inodes after it, and
    /// smaller chunks carry less of each scattered change), for a first push 1.6 % bigger.
    pub const DEFAULT: Params = Params {
        min: 4 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };

    /// Whether FastCDC (v2020) can use these sizes. Its own checks are debug assertions only,
    /// so parameters from an index are checked here before they reach it.
    pub fn check(&self) -> Result<(), ChunkError> {
        let bad = |why| ChunkError::BadParams {
            min: self.min,
            avg: self.avg,
            max: self.max,
            why,
        };
        let in_range = |v: u32, lo: usize, hi: usize| (lo..=hi).contains(&(v as usize));
        if !in_range(self.min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX)
            || !in_range(self.avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX)
            || !in_range(self.max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX)
        {
            return Err(bad(
                "outside FastCDC's ranges (min 64 B-1 MiB, avg 256 B-4 MiB, max 1 KiB-16 MiB)",
            ));
        }
        if self.min > self.avg || self.avg > self.max {
            return Err(bad("not min <= avg <= max"));
        }
        // The 2020 scan tests cut points two bytes at a time from size/2: odd sizes shift them.
        if self.min % 2 != 0 || self.avg % 2 != 0 || self.max % 2 != 0 {
            return Err(bad("odd sizes"));
        }
        Ok(())
    }
}

impl Default for Params {
    fn default() -> Params {
        Params::DEFAULT
    }
}

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u32,
    /// The sha256 of its bytes.
    pub digest: Digest,
}

/// A file cut into chunks, with the sha256 of the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// The file's size in bytes.
    pub size: u64,
    /// The sha256 of the whole file.
    pub digest: Digest,
    /// The chunks in file order; their lengths add up to `size`.
    pub chunks: Vec<Chunk>,
    /// The parameters it was cut with.
    pub params: Params,
}

/// Cuts the file at `path` into chunks, reading it once in pieces of at most `params.max`
/// bytes (a 4 GiB disk is never in memory; the list of chunks is about 48 bytes a chunk).
pub fn chunk_file(path: &Path, params: &Params) -> Result<Chunked, ChunkError> {
    let file = File::open(path).map_err(ChunkError::io("opening the disk to chunk", path))?;
    let mut chunks = Vec::new();
    let (size, digest) = stream_chunks(file, path, params, |chunk, _| {
        chunks.push(*chunk);
        Ok(())
    })?;
    Ok(Chunked {
        size,
        digest,
        chunks,
        params: *params,
    })
}

/// Cuts what `reader` gives into chunks, calling `each` with every chunk and its bytes in
/// order, and returns the size and sha256 of the whole. `path` is for errors only.
pub(crate) fn stream_chunks<R: Read>(
    reader: R,
    path: &Path,
    params: &Params,
    mut each: impl FnMut(&Chunk, &[u8]) -> Result<(), ChunkError>,
) -> Result<(u64, Digest), ChunkError> {
    params.check()?;
    let cdc = StreamCDC::new(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    let mut whole = Sha256::new();
    let mut size = 0u64;
    for data in cdc {
        let data = data.map_err(|e| ChunkError::Io {
            doing: "reading the disk to chunk",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        whole.update(&data.data);
        let chunk = Chunk {
            offset: data.offset,
            // A chunk is at most params.max (<= 16 MiB) long.
            length: u32::try_from(data.length).unwrap_or(u32::MAX),
            digest: Digest::of(&data.data),
        };
        size = data.offset + data.length as u64;
        each(&chunk, &data.data)?;
    }
    Ok((size, Digest(whole.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{random_bytes, write_file};

    #[test]
    fn deterministic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let data = random_bytes(1, 3 << 20);
        let path = write_file(dir.path(), "disk", &data);
        let a = chunk_file(&path, &Params::DEFAULT).unwrap();
        let b = chunk_file(&path, &Params::DEFAULT).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.size, data.len() as u64);
        assert_eq!(a.digest, Digest::of(&data));
        let mut at = 0u64;
        for c in &a.chunks {
            assert_eq!(c.offset, at);
            let bytes = &data[at as usize..at as usize + c.length as usize];
            assert_eq!(c.digest, Digest::of(bytes));
            assert!(c.length <= Params::DEFAULT.max);
            at += c.length as u64;
        }
        assert_eq!(at, a.size);
        // Content-defined: not cut every max bytes.
        assert!(
            a.chunks.len() > 3 * 1024 / 128 * 2,
            "{} chunks",
            a.chunks.len()
        );
    }

    #[test]
    fn insertion_keeps_later_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let data = random_bytes(2, 5 << 20);
        let mut changed = data.clone();
        let insert = random_bytes(3, 100);
        changed.splice(10_000..10_000, insert);
        let a = chunk_file(&write_file(dir.path(), "a", &data), &Params::DEFAULT).unwrap();
        let b = chunk_file(&write_file(dir.path(), "b", &changed), &Params::DEFAULT).unwrap();
        let before: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.digest).collect();
        let kept = b
            .chunks
            .iter()
            .filter(|c| before.contains(&c.digest))
            .count();
        // Only the chunk or two around the insertion differ.
        assert!(
            kept + 3 >= b.chunks.len(),
            "{kept} of {} kept",
            b.chunks.len()
        );
        assert!(b.chunks.len() > 50);
    }

    #[test]
    fn empty_file_and_bad_params() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "empty", b"");
        let c = chunk_file(&path, &Params::DEFAULT).unwrap();
        assert_eq!((c.size, c.chunks.len()), (0, 0));
        assert_eq!(c.digest, Digest::of(b""));
        for p in [
            Params {
                min: 8,
                avg: 32,
                max: 128,
            },
            Params {
                min: 8193,
                ..Params::DEFAULT
            },
            Params {
                min: 65536,
                avg: 32768,
                max: 131072,
            },
        ] {
            assert!(matches!(
                chunk_file(&path, &p),
                Err(ChunkError::BadParams { .. })
            ));
        }
        let missing = chunk_file(&dir.path().join("nope"), &Params::DEFAULT).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
