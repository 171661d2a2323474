//! Fixing the timestamps of an ext4 filesystem file in place, so that the same tree gives the
//! same bytes.
//!
//! `mkfs.ext4 -d` copies each inode's access, change and modification times from the source
//! tree, and the change time of a file on the host is whenever the host last touched it: it
//! cannot be set, so two filesystems made from identical trees differ in every inode. This pass
//! walks the inode tables and gives every inode in use one time: its modification time, at
//! most `epoch` (for creation, access and change too), then writes the inode's checksum again
//! (`metadata_csum`). Only inode tables are written; sizes, blocks and the layout stay.
//!
//! The on-disk format is the kernel's `Documentation/filesystems/ext4/` (superblock, group
//! descriptors, inode table, inode checksum: CRC32C over inode number, generation and inode
//! with its checksum fields zeroed).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::DiskError;

const SUPERBLOCK: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;

// Inode field offsets.
const I_MODE: usize = 0x00;
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
const I_LINKS: usize = 0x1A;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8C;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;
const GOOD_OLD_INODE_SIZE: usize = 128;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// CRC32C (Castagnoli) as ext4 uses it: reflected, no final inversion.
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The facts of a superblock this pass needs.
#[derive(Debug)]
struct Layout {
    block_size: u64,
    groups: u64,
    inodes_per_group: u64,
    inode_size: usize,
    desc_size: usize,
    gdt_offset: u64,
    /// The CRC32C seed of inode checksums, when the filesystem has them.
    csum_seed: Option<u32>,
    /// `bg_itable_unused` is valid (group descriptors are checksummed).
    itable_unused_valid: bool,
}

fn bad(path: &Path, why: impl Into<String>) -> DiskError {
    DiskError::NotBootable(format!(
        "{} is not an ext4 filesystem kiln can read: {}",
        path.display(),
        why.into()
    ))
}

fn layout(sb: &[u8], path: &Path) -> Result<Layout, DiskError> {
    if le16(sb, 0x38) != EXT4_MAGIC {
        return Err(bad(path, "no ext4 magic number"));
    }
    let log_block = le32(sb, 0x18);
    if log_block > 6 {
        return Err(bad(path, format!("block size 2^{}", 10 + log_block)));
    }
    let block_size = 1024u64 << log_block;
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    let inodes_count = u64::from(le32(sb, 0x00));
    let inodes_per_group = u64::from(le32(sb, 0x28));
    let inode_size = usize::from(le16(sb, 0x58));
    if inodes_per_group == 0 || !(GOOD_OLD_INODE_SIZE..=4096).contains(&inode_size) {
        return Err(bad(path, "impossible inode counts"));
    }
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        usize::from(le16(sb, 0xFE)).max(32)
    } else {
        32
    };
    let first_data_block = u64::from(le32(sb, 0x14));
    let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(sb, 0x270)
        } else {
            crc32c(!0, &sb[0x68..0x78])
        }
    });
    Ok(Layout {
        block_size,
        groups: inodes_count.div_ceil(inodes_per_group),
        inodes_per_group,
        inode_size,
        desc_size,
        gdt_offset: (first_data_block + 1) * block_size,
        csum_seed,
        itable_unused_valid: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
    })
}

/// Seconds of an ext4 time: the signed 32-bit field and, with an extra field, its two epoch
/// bits (times after 2038).
fn seconds(base: u32, extra: Option<u32>) -> i64 {
    i64::from(base as i32) + (i64::from(extra.unwrap_or(0) & 3) << 32)
}

/// The 32-bit field and the epoch bits of an extra field for `secs` (nanoseconds zero).
fn encode(secs: i64) -> (u32, u32) {
    let base = secs as u32;
    let bits = ((secs - i64::from(base as i32)) >> 32) as u32 & 3;
    (base, bits)
}

/// Gives one inode a single time (see the module) and its checksum again. Returns whether the
/// inode is in use.
fn fix_inode(raw: &mut [u8], inum: u32, epoch: i64, csum_seed: Option<u32>) -> bool {
    if le16(raw, I_MODE) == 0 && le16(raw, I_LINKS) == 0 {
        return false;
    }
    let size = raw.len();
    let extra_isize = if size > GOOD_OLD_INODE_SIZE {
        usize::from(le16(raw, I_EXTRA_ISIZE))
    } else {
        0
    };
    let fits = |field: usize, len: usize| {
        size > GOOD_OLD_INODE_SIZE && field + len <= GOOD_OLD_INODE_SIZE + extra_isize
    };
    let mtime_extra = fits(I_MTIME_EXTRA, 4).then(|| le32(raw, I_MTIME_EXTRA));
    let mtime = seconds(le32(raw, I_MTIME), mtime_extra);
    let (base, extra) = if mtime > epoch {
        let (b, bits) = encode(epoch);
        (b, bits)
    } else {
        (le32(raw, I_MTIME), mtime_extra.unwrap_or(0))
    };
    for field in [I_ATIME, I_CTIME, I_MTIME] {
        put32(raw, field, base);
    }
    for field in [I_CTIME_EXTRA, I_MTIME_EXTRA, I_ATIME_EXTRA, I_CRTIME_EXTRA] {
        if fits(field, 4) {
            put32(raw, field, extra);
        }
    }
    if fits(I_CRTIME, 4) {
        put32(raw, I_CRTIME, base);
    }
    if let Some(seed) = csum_seed {
        let has_hi = fits(I_CHECKSUM_HI, 2);
        put16(raw, I_CHECKSUM_LO, 0);
        if has_hi {
            put16(raw, I_CHECKSUM_HI, 0);
        }
        let mut c = crc32c(seed, &inum.to_le_bytes());
        c = crc32c(c, &raw[I_GENERATION..I_GENERATION + 4]);
        c = crc32c(c, raw);
        put16(raw, I_CHECKSUM_LO, c as u16);
        if has_hi {
            put16(raw, I_CHECKSUM_HI, (c >> 16) as u16);
        }
    }
    true
}

/// Gives every inode of the ext4 filesystem file `path` one time, at most `epoch` (see the
/// module). Returns the number of inodes in use.
pub fn fix_times(path: &Path, epoch: i64) -> Result<u64, DiskError> {
    let io = |what: &str| {
        let what = what.to_string();
        let path = path.to_path_buf();
        move |source| DiskError::Io { what, path, source }
    };
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening"))?;
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(SUPERBLOCK))
        .and_then(|_| f.read_exact(&mut sb))
        .map_err(io("reading the superblock of"))?;
    let l = layout(&sb, path)?;
    let mut gdt = vec![0u8; l.groups as usize * l.desc_size];
    f.seek(SeekFrom::Start(l.gdt_offset))
        .and_then(|_| f.read_exact(&mut gdt))
        .map_err(io("reading the group descriptors of"))?;
    let mut used = 0u64;
    let mut table = Vec::new();
    for g in 0..l.groups as usize {
        let d = &gdt[g * l.desc_size..(g + 1) * l.desc_size];
        if l.itable_unused_valid && le16(d, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let mut start = u64::from(le32(d, 0x08));
        let mut unused = u64::from(le16(d, 0x1C));
        if l.desc_size >= 64 {
            start |= u64::from(le32(d, 0x28)) << 32;
            unused |= u64::from(le16(d, 0x32)) << 16;
        }
        let count = if l.itable_unused_valid {
            l.inodes_per_group.saturating_sub(unused)
        } else {
            l.inodes_per_group
        };
        if count == 0 {
            continue;
        }
        table.resize(count as usize * l.inode_size, 0);
        let at = start * l.block_size;
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut table))
            .map_err(io("reading an inode table of"))?;
        for (i, raw) in table.chunks_mut(l.inode_size).enumerate() {
            let inum = (g as u64 * l.inodes_per_group + i as u64 + 1) as u32;
            if fix_inode(raw, inum, epoch, l.csum_seed) {
                used += 1;
            }
        }
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(&table))
            .map_err(io("writing an inode table of"))?;
    }
    f.sync_all().map_err(io("writing"))?;
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C of "123456789" is 0xE3069283 (with the usual inversions).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn times_after_2038_keep_their_epoch_bits() {
        for secs in [0, 1_700_000_000, 2_200_000_000, -5] {
            let (base, bits) = encode(secs);
            assert_eq!(seconds(base, Some(bits)), secs, "{secs}");
        }
    }

    #[test]
    fn an_inode_gets_one_time_and_a_valid_checksum() {
        let mut raw = vec![0u8; 256];
        put16(&mut raw, I_MODE, 0o100644);
        put16(&mut raw, I_LINKS, 1);
        put16(&mut raw, I_EXTRA_ISIZE, 32);
        put32(&mut raw, I_ATIME, 1_800_000_000);
        put32(&mut raw, I_CTIME, 1_800_000_001);
        put32(&mut raw, I_MTIME, 1_600_000_000);
        put32(&mut raw, I_CRTIME, 1_800_000_002);
        assert!(fix_inode(&mut raw, 12, 1_700_000_000, Some(7)));
        for f in [I_ATIME, I_CTIME, I_MTIME, I_CRTIME] {
            assert_eq!(le32(&raw, f), 1_600_000_000);
        }
        // Later than the epoch: clamped.
        put32(&mut raw, I_MTIME, 1_750_000_000);
        fix_inode(&mut raw, 12, 1_700_000_000, Some(7));
        assert_eq!(le32(&raw, I_CTIME), 1_700_000_000);
        let stored =
            u32::from(le16(&raw, I_CHECKSUM_LO)) | (u32::from(le16(&raw, I_CHECKSUM_HI)) << 16);
        let mut zeroed = raw.clone();
        put16(&mut zeroed, I_CHECKSUM_LO, 0);
        put16(&mut zeroed, I_CHECKSUM_HI, 0);
        let mut c = crc32c(7, &12u32.to_le_bytes());
        c = crc32c(c, &zeroed[I_GENERATION..I_GENERATION + 4]);
        assert_eq!(crc32c(c, &zeroed), stored);
        // A free inode is left alone.
        let mut free = vec![0u8; 256];
        assert!(!fix_inode(&mut free, 13, 0, Some(7)));
        assert!(free.iter().all(|&b| b == 0));
    }
}
