//! The chunk index: which chunks, in order, make a disk, and where each one's compressed bytes
//! are in which pack.
//!
//! Encoded (see [`ChunkIndex::encode`]) as the 8 bytes `KILNCIDX`, the format version as one
//! byte, then one zstd frame (level 3, with a content checksum) of the body:
//!
//! ```text
//! varint min, avg, max            chunking parameters
//! varint size                     the disk's size
//! [32]   digest                   the disk's sha256
//! varint pack count, then per pack:     [32] digest, varint size
//! varint entry count, then per entry:   [32] digest, varint length, varint pack,
//!                                       varint offset in pack, varint stored length
//! ```
//!
//! Varints are unsigned LEB128. An entry is 32 bytes of digest and 6 to 12 bytes of numbers
//! (about 44 for a chunk at 100 MiB into a pack): a run of one all-zero chunk repeats one
//! 40-odd-byte row, which zstd reduces to almost nothing.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::{ChunkError, Digest, Params};

/// The format version [`ChunkIndex::encode`] writes and [`ChunkIndex::decode`] reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"KILNCIDX";
/// The zstd level of indexes and packs: fixed, so that the same input encodes the same bytes.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// No real index comes near this (a 4 GiB disk of 8 KiB chunks is about 23 MiB): a bigger
/// body is refused before it is held in memory.
const MAX_BODY: u64 = 256 << 20;

/// A pack blob an index's entries use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// The sha256 of the pack blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// One chunk of the disk, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The sha256 of the chunk's (uncompressed) bytes.
    pub digest: Digest,
    /// Its uncompressed length.
    pub length: u32,
    /// The position in [`ChunkIndex::packs`] of the pack holding it.
    pub pack: u32,
    /// Where its zstd frame starts in that pack.
    pub offset: u64,
    /// The length of its zstd frame.
    pub stored: u32,
}

/// The chunks, in order, that make a disk, and where each is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The parameters the disk was chunked with: a reader chunks its base file with them.
    pub params: Params,
    /// The disk's size in bytes.
    pub size: u64,
    /// The sha256 of the whole disk.
    pub digest: Digest,
    /// Exactly the packs the entries use, so that the version can be served by them alone.
    pub packs: Vec<PackRef>,
    /// The disk's chunks in file order.
    pub entries: Vec<IndexEntry>,
}

impl ChunkIndex {
    /// The compact encoding (module docs): the same index always gives the same bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ChunkError> {
        let mut body = Vec::with_capacity(64 + self.packs.len() * 40 + self.entries.len() * 44);
        for v in [self.params.min, self.params.avg, self.params.max] {
            put_varint(&mut body, v.into());
        }
        put_varint(&mut body, self.size);
        body.extend_from_slice(&self.digest.0);
        put_varint(&mut body, self.packs.len() as u64);
        for pack in &self.packs {
            body.extend_from_slice(&pack.digest.0);
            put_varint(&mut body, pack.size);
        }
        put_varint(&mut body, self.entries.len() as u64);
        for e in &self.entries {
            body.extend_from_slice(&e.digest.0);
            put_varint(&mut body, e.length.into());
            put_varint(&mut body, e.pack.into());
            put_varint(&mut body, e.offset);
            put_varint(&mut body, e.stored.into());
        }
        let zstd_err = |source| ChunkError::Zstd {
            doing: "compressing the chunk index",
            source,
        };
        let mut out = Vec::with_capacity(body.len() / 2 + 16);
        out.extend_from_slice(MAGIC);
        // The version is one byte: 255 formats are plenty.
        out.push(FORMAT_VERSION as u8);
        let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(zstd_err)?;
        encoder.include_checksum(true).map_err(zstd_err)?;
        encoder
            .set_pledged_src_size(Some(body.len() as u64))
            .map_err(zstd_err)?;
        encoder.write_all(&body).map_err(zstd_err)?;
        encoder.finish().map_err(zstd_err)
    }

    /// Reads an index [`ChunkIndex::encode`] wrote, refusing anything else with
    /// [`ChunkError::CorruptIndex`], and checks it ([`ChunkIndex::check`]).
    pub fn decode(bytes: &[u8]) -> Result<ChunkIndex, ChunkError> {
        let corrupt = |what: String| ChunkError::CorruptIndex(what);
        if bytes.len() < MAGIC.len() + 1 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(
                "not a kiln chunk index (no KILNCIDX header)".into(),
            ));
        }
        let version = u32::from(bytes[MAGIC.len()]);
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this kiln reads {FORMAT_VERSION}"
            )));
        }
        let mut body = Vec::new();
        zstd::stream::read::Decoder::new(&bytes[MAGIC.len() + 1..])
            .and_then(|d| d.take(MAX_BODY + 1).read_to_end(&mut body))
            .map_err(|e| corrupt(format!("its zstd body does not decompress: {e}")))?;
        if body.len() as u64 > MAX_BODY {
            return Err(corrupt(format!("body larger than {MAX_BODY} bytes")));
        }
        let index = Body { buf: &body, at: 0 }.index()?;
        index.check()?;
        Ok(index)
    }

    /// Checks what decoding cannot: the parameters, that the entries add up to the size, that
    /// every entry's frame lies in a listed pack and every listed pack is used.
    pub fn check(&self) -> Result<(), ChunkError> {
        let corrupt = |what: String| Err(ChunkError::CorruptIndex(what));
        if self.version != FORMAT_VERSION {
            return corrupt(format!("format version {}", self.version));
        }
        if let Err(e) = self.params.check() {
            return corrupt(e.to_string());
        }
        let mut used = vec![false; self.packs.len()];
        let mut total = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            if e.length == 0 || e.length > self.params.max {
                return corrupt(format!("chunk {i} has length {}", e.length));
            }
            let Some(pack) = self.packs.get(e.pack as usize) else {
                return corrupt(format!(
                    "chunk {i} is in pack {}, of {}",
                    e.pack,
                    self.packs.len()
                ));
            };
            let end = e.offset.checked_add(e.stored.into());
            if e.stored == 0 || end.is_none_or(|end| end > pack.size) {
                return corrupt(format!(
                    "chunk {i} is stored at {}+{} in a pack of {} bytes",
                    e.offset, e.stored, pack.size
                ));
            }
            used[e.pack as usize] = true;
            total = total.saturating_add(e.length.into());
        }
        if total != self.size {
            return corrupt(format!("chunks add up to {total} bytes, not {}", self.size));
        }
        if let Some(unused) = used.iter().position(|u| !u) {
            return corrupt(format!(
                "pack {} is used by no chunk",
                self.packs[unused].digest
            ));
        }
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a decompressed body; every read says what it was reading when it fails.
struct Body<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Body<'_> {
    fn index(mut self) -> Result<ChunkIndex, ChunkError> {
        let params = Params {
            min: self.u32("min chunk size")?,
            avg: self.u32("average chunk size")?,
            max: self.u32("max chunk size")?,
        };
        let size = self.varint("disk size")?;
        let digest = self.digest("disk digest")?;
        let pack_count = self.count("pack count", 33)?;
        let mut packs = Vec::with_capacity(pack_count);
        for _ in 0..pack_count {
            packs.push(PackRef {
                digest: self.digest("pack digest")?,
                size: self.varint("pack size")?,
            });
        }
        let entry_count = self.count("chunk count", 36)?;
        let mut entries = Vec::with_capacity(entry_count);
        for _ in 0..entry_count {
            entries.push(IndexEntry {
                digest: self.digest("chunk digest")?,
                length: self.u32("chunk length")?,
                pack: self.u32("chunk pack")?,
                offset: self.varint("chunk offset")?,
                stored: self.u32("chunk stored length")?,
            });
        }
        if self.at != self.buf.len() {
            return Err(ChunkError::CorruptIndex(format!(
                "{} bytes after the last chunk",
                self.buf.len() - self.at
            )));
        }
        Ok(ChunkIndex {
            version: FORMAT_VERSION,
            params,
            size,
            digest,
            packs,
            entries,
        })
    }

    fn varint(&mut self, what: &str) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                return Err(ChunkError::CorruptIndex(format!("ends in the {what}")));
            };
            self.at += 1;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError::CorruptIndex(format!(
            "{what} overflows 64 bits"
        )))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ChunkError> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| ChunkError::CorruptIndex(format!("{what} {v} is too large")))
    }

    /// A count of items of at least `min_item` bytes each: no more than the rest can hold, so
    /// that a corrupt count cannot make decode reserve gigabytes.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, ChunkError> {
        let v = self.varint(what)?;
        let room = (self.buf.len() - self.at) / min_item;
        match usize::try_from(v) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(ChunkError::CorruptIndex(format!(
                "{what} {v}, but only room for {room}"
            ))),
        }
    }

    fn digest(&mut self, what: &str) -> Result<Digest, ChunkError> {
        let end = self.at + 32;
        let bytes: [u8; 32] = self
            .buf
            .get(self.at..end)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ChunkError::CorruptIndex(format!("ends in the {what}")))?;
        self.at = end;
        Ok(Digest(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index like a disk's: unique chunks in one pack, a run of one zero chunk, a chunk of an
    /// older pack.
    pub(crate) fn sample(unique: usize, zeros: usize) -> ChunkIndex {
        let mut entries = Vec::new();
        let mut offset = 0u64;
        for i in 0..unique {
            let stored = 20_000 + (i as u32 * 7919) % 10_000;
            entries.push(IndexEntry {
                digest: Digest::of(&i.to_le_bytes()),
                length: 32_768 + (i as u32 * 104_729) % 60_000,
                pack: 0,
                offset,
                stored,
            });
            offset += u64::from(stored);
        }
        let zero = IndexEntry {
            digest: Digest::of(&[0u8; 131_072]),
            length: 131_072,
            pack: 1,
            offset: 5,
            stored: 20,
        };
        entries.extend(std::iter::repeat_n(zero, zeros));
        ChunkIndex {
            version: FORMAT_VERSION,
            // Chunk lengths up to 128 KiB, as 8/32/128 KiB parameters make (any parameters an
            // index names are read back).
            params: Params {
                min: 8 * 1024,
                avg: 32 * 1024,
                max: 128 * 1024,
            },
            size: entries.iter().map(|e| u64::from(e.length)).sum(),
            digest: Digest::of(b"disk"),
            packs: vec![
                PackRef {
                    digest: Digest::of(b"new"),
                    size: offset,
                },
                PackRef {
                    digest: Digest::of(b"old"),
                    size: 1000,
                },
            ],
            entries,
        }
    }

    #[test]
    fn roundtrip_deterministic_and_small() {
        let index = sample(2000, 4000);
        let bytes = index.encode().unwrap();
        assert_eq!(bytes, index.encode().unwrap());
        assert_eq!(ChunkIndex::decode(&bytes).unwrap(), index);
        // Unique chunks cost their digest and some varints; a zero run under half a byte each.
        let unique_only = sample(2000, 0).encode().unwrap().len();
        assert!(
            unique_only <= 2000 * 46,
            "{unique_only} bytes for 2000 chunks"
        );
        assert!(
            bytes.len() < unique_only + 2000,
            "{} vs {unique_only}",
            bytes.len()
        );
        let json = serde_json::to_string(&index).unwrap();
        assert_eq!(serde_json::from_str::<ChunkIndex>(&json).unwrap(), index);
    }

    #[test]
    fn truncated_or_corrupted_bytes_are_refused() {
        let index = sample(40, 30);
        let bytes = index.encode().unwrap();
        for len in 0..bytes.len() {
            let err = ChunkIndex::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, ChunkError::CorruptIndex(_)), "{len}: {err}");
        }
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                // The frame's checksum catches a changed body; a changed header either fails or
                // (for bits zstd ignores) decodes the very same index.
                match ChunkIndex::decode(&bad) {
                    Ok(decoded) => assert_eq!(decoded, index, "flip {flip:#x} at {at}"),
                    Err(ChunkError::CorruptIndex(_)) => {}
                    Err(e) => panic!("flip at {at}: {e}"),
                }
            }
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"garbage");
        assert!(ChunkIndex::decode(&longer).is_err());
        assert!(ChunkIndex::decode(b"").is_err());
        assert!(ChunkIndex::decode(&[0u8; 4096]).is_err());
    }

    #[test]
    fn inconsistent_indexes_are_refused() {
        let good = sample(10, 3);
        type Spoil = fn(&mut ChunkIndex);
        let cases: [(&str, Spoil); 6] = [
            ("add up", |i| i.size += 1),
            ("pack 7", |i| i.entries[0].pack = 7),
            ("stored at", |i| i.entries[0].offset = u64::MAX),
            ("used by no chunk", |i| {
                i.packs.push(PackRef {
                    digest: Digest::of(b"x"),
                    size: 1,
                })
            }),
            ("length 0", |i| i.entries[0].length = 0),
            ("odd", |i| i.params.min = 8191),
        ];
        for (want, spoil) in cases {
            let mut bad = good.clone();
            spoil(&mut bad);
            let err = ChunkIndex::decode(&bad.encode().unwrap()).unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        let mut body = Vec::new();
        put_varint(&mut body, u64::MAX);
        assert_eq!(Body { buf: &body, at: 0 }.varint("x").unwrap(), u64::MAX);
        let overlong = [0xffu8; 11];
        assert!(Body {
            buf: &overlong,
            at: 0
        }
        .varint("x")
        .is_err());
    }
}
