//! Disks as content-defined chunks.
#![deny(missing_docs)]

mod chunker;
mod digest;
mod error;
pub mod index;
mod pack;
mod rebuild;
#[cfg(test)]
mod test_util;

pub use chunker::{chunk_file, Chunk, Chunked, Params};
pub use digest::{BadDigest, Digest};
pub use error::ChunkError;
pub use index::{ChunkIndex, IndexEntry, PackRef, FORMAT_VERSION};
pub use pack::{pack, PackFile, PackStats, Packed};
pub use rebuild::{rebuild, PackSource, RebuildStats, MAX_GAP, MAX_READ};
