//! Disks as content-defined chunks, so that a new version of a disk ships only what changed.
//!
//! A raw disk (1-4 GiB, mostly zeros and an ext4 filesystem) is sent as a chunk *index* (which
//! chunks, in order, make the disk, and where each one's compressed bytes are) and *pack*
//! blobs (one zstd frame a chunk, concatenated). A new version sends its index and one new
//! pack of only the chunks that no earlier pack the destination has contains; a package update
//! changes a few percent of the chunks.
//!
//! - [`chunk_file`] cuts a file with FastCDC (2020) by [`Params`] (4/16/64 KiB by default),
//!   streamed: [`Chunked`] is the size, the sha256 and the [`Chunk`]s.
//! - [`pack`] writes the new pack (or none, when nothing is new) against the indexes the
//!   destination already has, and gives the version's [`ChunkIndex`]: its `packs` are exactly
//!   the packs its entries use, so the version can be served by them alone. The same disk and
//!   indexes give the same pack, byte for byte.
//! - [`ChunkIndex::encode`] / [`ChunkIndex::decode`] are the index's compact form ([`index`]
//!   has the layout); the index is also serde-able (digests as `sha256:HEX`).
//! - [`rebuild`] writes a version at a path from its index, copying the chunks a local earlier
//!   version (the base) has and fetching the rest through a [`PackSource`] in coalesced ranged
//!   reads. Every chunk and the whole file are checked, and the file replaces its path only
//!   once it is right.
//!
//! Published, the index is a blob of [`INDEX_MEDIA_TYPE`] and the packs blobs of
//! [`PACK_MEDIA_TYPE`], in an artifact of [`ARTIFACT_TYPE`].
//!
//! # How big an index is
//!
//! An entry is a 32-byte digest and four varints, about 43 bytes before compression (`index`
//! module docs); random digests do not compress, so a data chunk costs that. With the default
//! parameters a GiB of data is 52,000-64,000 chunks (chunks average 16-20 KiB), so its entries
//! are about **2.2-2.8 MiB per GiB of data**. A GiB of zeros is 16,384 entries of one 64 KiB
//! zero chunk, which zstd reduces to about 0.35 bytes each: **about 6 KiB per GiB of zeros**.
//! A 2 GiB disk holding 600 MiB of data has an index of about 1.6 MiB. (The test
//! `disk_versions` measures 39 bytes a chunk on a 64 MiB disk, 3/4 data.)
//!
//! # What changing the chunker would cost
//!
//! A boundary moved by another FastCDC version or other parameters costs reuse, never
//! correctness: every chunk is found and checked by its sha256.
#![deny(missing_docs)]

mod chunker;
mod digest;
mod error;
pub mod index;
mod pack;
mod rebuild;
mod seal;
#[cfg(test)]
mod test_util;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use chunker::{chunk_file, Chunk, Chunked, Params};
pub use digest::{BadDigest, Digest};
pub use error::ChunkError;
pub use index::{ChunkIndex, IndexEntry, PackRef, FORMAT_VERSION};
pub use pack::{pack, pack_sealed, PackFile, PackStats, Packed};
pub use rebuild::{rebuild, rebuild_sealed, PackSource, RebuildStats, MAX_GAP, MAX_READ};
pub use seal::FrameSeal;

/// The media type of an encoded [`ChunkIndex`] blob.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.kiln.disk.index.v1+zstd";
/// The media type of a pack blob: zstd frames, one a chunk, concatenated.
pub const PACK_MEDIA_TYPE: &str = "application/vnd.kiln.disk.pack.v1";
/// The artifact type of a disk shipped as an index and packs.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.disk.v1";
