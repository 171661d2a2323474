//! What can go wrong chunking, packing and rebuilding a disk.

use std::path::PathBuf;

use crate::Digest;

/// An error of kiln-chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading or writing a local file failed.
    #[error("{doing} {}: {source}", path.display())]
    Io {
        /// What kiln was doing, e.g. "reading the disk".
        doing: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The error of the system.
        #[source]
        source: std::io::Error,
    },
    /// Chunking parameters that FastCDC cannot use.
    #[error("chunking parameters {min}/{avg}/{max}: {why}")]
    BadParams {
        /// The minimum chunk size asked for.
        min: u32,
        /// The average chunk size asked for.
        avg: u32,
        /// The maximum chunk size asked for.
        max: u32,
        /// What is wrong with them.
        why: &'static str,
    },
    /// An encoded or deserialized chunk index that is not a valid one.
    #[error("corrupt chunk index: {0}")]
    CorruptIndex(String),
    /// A file changed between being chunked and being packed.
    #[error("{} changed since it was chunked: {what}", path.display())]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// A chunk read from a pack is not the chunk the index names.
    #[error("chunk {chunk} ({digest}) from pack {pack} at offset {offset}: {why}")]
    BadChunk {
        /// The chunk's position in the index's entries.
        chunk: usize,
        /// The digest the index gives it.
        digest: Digest,
        /// The pack it was read from.
        pack: Digest,
        /// Its offset in that pack.
        offset: u64,
        /// What is wrong: another digest, another length, not zstd.
        why: String,
    },
    /// The rebuilt file's sha256 is not the index's.
    #[error("rebuilt disk has digest {actual}, the index says {expected}")]
    FileDigest {
        /// The digest the index gives.
        expected: Digest,
        /// The digest of what was rebuilt.
        actual: Digest,
    },
    /// The pack source could not give a range of a pack.
    #[error("reading {length} bytes at offset {offset} of pack {pack}: {source}")]
    Source {
        /// The pack.
        pack: Digest,
        /// The offset of the range.
        offset: u64,
        /// The length of the range.
        length: u64,
        /// What the source said.
        #[source]
        source: std::io::Error,
    },
    /// zstd failed to compress (it does only when out of memory or misused).
    #[error("{doing}: zstd: {source}")]
    Zstd {
        /// What was being compressed.
        doing: &'static str,
        /// zstd's error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task of a rebuild did not finish (it panicked or the runtime is stopping).
    #[error("{doing}: the task did not finish: {why}")]
    Task {
        /// What the task was doing.
        doing: &'static str,
        /// The runtime's reason.
        why: String,
    },
    /// A frame could not be sealed (an encrypted disk).
    #[error("{doing}: {why}")]
    Seal {
        /// What kiln was doing.
        doing: &'static str,
        /// Why.
        why: String,
    },
}

impl ChunkError {
    /// A [`ChunkError::Io`] builder for `map_err` (what was being done, and where).
    pub fn io(
        doing: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ChunkError {
        let path = path.into();
        move |source| ChunkError::Io {
            doing,
            path,
            source,
        }
    }
}
