//! Converting a raw disk into the formats users import (qcow2, VMDK, VHD) with `qemu-img`,
//! deterministically: the same raw disk and label give the same bytes (qemu-img writes a random
//! VMDK content ID, the output's file name into a VMDK, and the time and a random UUID into a
//! VHD footer; kiln writes its own).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use super::{io, need, run, DiskError};

/// Disk formats kiln writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Raw disk.
    Raw,
    /// QEMU copy-on-write.
    Qcow2,
    /// VMware.
    Vmdk,
    /// Hyper-V / Azure (qemu-img's `vpc`).
    Vhd,
}

impl DiskFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vhd",
        }
    }

    /// Parses `raw`, `qcow2`, `vmdk`, `vhd`.
    pub fn parse(s: &str) -> Option<DiskFormat> {
        Some(match s {
            "raw" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            "vmdk" => DiskFormat::Vmdk,
            "vhd" => DiskFormat::Vhd,
            _ => return None,
        })
    }
}

/// Writes a qcow2 disk (with its backing chain) out as one raw disk (through a temporary name).
pub fn flatten(qcow2: &Path, out: &Path) -> Result<(), DiskError> {
    let qemu_img = need("qemu-img", "qemu-utils")?;
    let tmp = out.with_extension("partial");
    let mut cmd = Command::new(qemu_img);
    cmd.args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(qcow2)
        .arg(&tmp);
    run(&mut cmd, "qemu-img")?;
    fs::rename(&tmp, out).map_err(io("writing", out))
}

/// How a qcow2 disk's clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskCompression {
    /// Not compressed.
    #[default]
    None,
    /// zlib (deflate): every qcow2 reader.
    Zlib,
    /// zstd: smaller and faster; QEMU 5.1 (2020) and later read it.
    Zstd,
}

/// What a converted disk says about itself where its format has a place for it (a VMDK's
/// descriptor names its file and content ID; a VHD footer has a UUID and a time): fixed, so
/// that the same raw disk converts to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLabel {
    /// The file name a VMDK's descriptor gives its extent (`NAME.vmdk`).
    pub name: String,
    /// The disk's UUID (a VHD's unique id; the first 8 hex digits are a VMDK's CID).
    pub uuid: String,
    /// The time a VHD footer says it was made.
    pub epoch: i64,
}

/// Converts a raw disk into another format (through a temporary name); the same raw disk and
/// label give the same bytes.
pub fn convert(
    raw: &Path,
    out: &Path,
    format: DiskFormat,
    compression: DiskCompression,
    label: &DiskLabel,
) -> Result<(), DiskError> {
    let tmp = out.with_extension("partial");
    if format == DiskFormat::Raw {
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(raw, &tmp).is_err() {
            let mut cmd = Command::new("cp");
            cmd.args(["--sparse=always"]).arg(raw).arg(&tmp);
            run(&mut cmd, "cp")?;
        }
        return fs::rename(&tmp, out).map_err(io("writing", out));
    }
    let qemu_img = need("qemu-img", "qemu-utils")?;
    // qemu-img writes the output's file name into a VMDK: convert under the label's name, in a
    // folder of its own, then move the file into place.
    let work = out.with_extension("converting");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let file = work.join(format!("{}.{}", label.name, format.extension()));
    let mut cmd = Command::new(qemu_img);
    cmd.args(["convert", "-q", "-f", "raw", "-O"]);
    match format {
        DiskFormat::Qcow2 => {
            cmd.arg("qcow2");
            match compression {
                DiskCompression::None => {}
                DiskCompression::Zlib => {
                    cmd.arg("-c");
                }
                DiskCompression::Zstd => {
                    cmd.args(["-c", "-o", "compression_type=zstd"]);
                }
            }
        }
        DiskFormat::Vmdk => {
            cmd.arg("vmdk");
        }
        // Fixed-size VHDs are what Azure and Hyper-V import.
        DiskFormat::Vhd => {
            cmd.args(["vpc", "-o", "subformat=fixed,force_size=on"]);
        }
        DiskFormat::Raw => {}
    }
    cmd.arg(raw).arg(&file);
    let result = run(&mut cmd, "qemu-img").and_then(|_| match format {
        DiskFormat::Vmdk => stamp_vmdk(&file, label),
        DiskFormat::Vhd => stamp_vhd(&file, label),
        _ => Ok(()),
    });
    let result = result.and_then(|_| fs::rename(&file, out).map_err(io("writing", out)));
    let _ = fs::remove_dir_all(&work);
    result
}

fn open_rw(path: &Path) -> Result<File, DiskError> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening", path))
}

/// The hex digits of a UUID, without hyphens.
fn uuid_hex(uuid: &str) -> String {
    uuid.chars().filter(char::is_ascii_hexdigit).collect()
}

/// Sets a VMDK descriptor's random content ID (`CID=xxxxxxxx`) from the label.
fn stamp_vmdk(path: &Path, label: &DiskLabel) -> Result<(), DiskError> {
    let mut f = open_rw(path)?;
    let mut header = [0u8; 512];
    f.read_exact(&mut header).map_err(io("reading", path))?;
    let sectors = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (offset, size) = (sectors(28), sectors(36));
    if &header[..4] != b"KDMV" || offset == 0 || size == 0 || size > 1024 {
        return Err(DiskError::NotBootable(format!(
            "{}: qemu-img wrote a VMDK without an embedded descriptor",
            path.display()
        )));
    }
    let mut descriptor = vec![0u8; (size * 512) as usize];
    f.seek(SeekFrom::Start(offset * 512))
        .and_then(|_| f.read_exact(&mut descriptor))
        .map_err(io("reading", path))?;
    let cid = uuid_hex(&label.uuid);
    let cid = cid.get(..8).unwrap_or("00000000");
    let descriptor = with_cid(&descriptor, cid).ok_or_else(|| {
        DiskError::NotBootable(format!(
            "{}: qemu-img wrote a VMDK descriptor without a CID line",
            path.display()
        ))
    })?;
    f.seek(SeekFrom::Start(offset * 512))
        .and_then(|_| f.write_all(&descriptor))
        .map_err(io("writing", path))
}

/// The descriptor `text` (NUL-padded to its reserved size) with its `CID=` line set to `cid`,
/// the same size again. The line is rewritten whole: qemu-img prints a random CID without
/// leading zeros, so writing over it in place would eat the next line when it is short.
fn with_cid(text: &[u8], cid: &str) -> Option<Vec<u8>> {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let mut out = Vec::with_capacity(text.len());
    let mut found = false;
    for line in text[..end].split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"CID=") && !found {
            found = true;
            out.extend_from_slice(format!("CID={cid}\n").as_bytes());
        } else {
            out.extend_from_slice(line);
        }
    }
    if !found || out.len() > text.len() {
        return None;
    }
    out.resize(text.len(), 0);
    Some(out)
}

/// Seconds from 1970 to 2000-01-01, where VHD times start.
const VHD_EPOCH: i64 = 946_684_800;

/// Sets a fixed VHD footer's time and unique id from the label, with its checksum.
fn stamp_vhd(path: &Path, label: &DiskLabel) -> Result<(), DiskError> {
    let mut f = open_rw(path)?;
    let len = f.metadata().map_err(io("reading", path))?.len();
    if len < 512 {
        return Err(DiskError::NotBootable(format!(
            "{} is too short for a VHD",
            path.display()
        )));
    }
    let mut footer = [0u8; 512];
    f.seek(SeekFrom::Start(len - 512))
        .and_then(|_| f.read_exact(&mut footer))
        .map_err(io("reading", path))?;
    if &footer[..8] != b"conectix" {
        return Err(DiskError::NotBootable(format!(
            "{}: qemu-img wrote a VHD without a footer",
            path.display()
        )));
    }
    stamp_vhd_footer(&mut footer, label);
    f.seek(SeekFrom::Start(len - 512))
        .and_then(|_| f.write_all(&footer))
        .map_err(io("writing", path))
}

fn stamp_vhd_footer(footer: &mut [u8; 512], label: &DiskLabel) {
    let time = u32::try_from((label.epoch - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    footer[24..28].copy_from_slice(&time.to_be_bytes());
    let hex = uuid_hex(&label.uuid);
    for (i, slot) in footer[68..84].iter_mut().enumerate() {
        *slot = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    footer[64..68].copy_from_slice(&[0; 4]);
    let sum: u32 = footer.iter().map(|&b| u32::from(b)).sum();
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(p: &Path) -> String {
        crate::digest::sha256_file(p).unwrap()
    }

    #[test]
    fn conversions_are_the_same_bytes_every_time() {
        if need("qemu-img", "qemu-utils").is_err() {
            eprintln!("skipped: needs qemu-img");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.raw");
        {
            let mut f = File::create(&raw).unwrap();
            f.set_len(64 << 20).unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(&[7u8; 70_000]).unwrap();
        }
        let label = DiskLabel {
            name: "web".into(),
            uuid: "0b8e3f5c-1d2a-4c6e-9f00-112233445566".into(),
            epoch: 1_700_000_000,
        };
        for (format, compression) in [
            (DiskFormat::Qcow2, DiskCompression::None),
            (DiskFormat::Qcow2, DiskCompression::Zstd),
            (DiskFormat::Vmdk, DiskCompression::None),
            (DiskFormat::Vhd, DiskCompression::None),
        ] {
            let a = d.path().join(format!("a.{}", format.extension()));
            let b = d.path().join(format!("b.{}", format.extension()));
            convert(&raw, &a, format, compression, &label).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            convert(&raw, &b, format, compression, &label).unwrap();
            assert_eq!(sha(&a), sha(&b), "{format:?} {compression:?}");
            // qemu-img still reads it, and it holds the raw disk.
            let fmt = match format {
                DiskFormat::Vhd => "vpc",
                f => f.extension(),
            };
            let cmp = Command::new("qemu-img")
                .args(["compare", "-q", "-f", "raw", "-F", fmt])
                .arg(&raw)
                .arg(&a)
                .status()
                .unwrap();
            assert!(cmp.success(), "{format:?} does not hold the raw disk");
        }
    }

    #[test]
    fn every_vmdk_gets_the_same_whole_descriptor() {
        if need("qemu-img", "qemu-utils").is_err() {
            eprintln!("skipped: needs qemu-img");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.raw");
        File::create(&raw).unwrap().set_len(1 << 20).unwrap();
        let label = DiskLabel {
            name: "web".into(),
            uuid: "0b8e3f5c-1d2a-4c6e-9f00-112233445566".into(),
            epoch: 0,
        };
        // One random CID in 16 is short: 48 conversions meet one 95 times in 100.
        let first = d.path().join("first.vmdk");
        convert(
            &raw,
            &first,
            DiskFormat::Vmdk,
            DiskCompression::None,
            &label,
        )
        .unwrap();
        let bytes = fs::read(&first).unwrap();
        let text = String::from_utf8_lossy(&bytes[512..1024]);
        assert!(
            text.contains("\nCID=0b8e3f5c\nparentCID=ffffffff\n"),
            "{text}"
        );
        for _ in 0..47 {
            let again = d.path().join("again.vmdk");
            convert(
                &raw,
                &again,
                DiskFormat::Vmdk,
                DiskCompression::None,
                &label,
            )
            .unwrap();
            assert_eq!(fs::read(&again).unwrap(), bytes);
        }
    }

    #[test]
    fn a_short_random_cid_is_replaced_whole() {
        // qemu-img prints the random CID with `%x`: 7 digits one time in 16.
        let mut text =
            b"# Disk DescriptorFile\nversion=1\nCID=abcdef1\nparentCID=ffffffff\n".to_vec();
        text.resize(1024, 0);
        let out = with_cid(&text, "0b8e3f5c").unwrap();
        assert_eq!(out.len(), 1024);
        let end = out.iter().position(|&b| b == 0).unwrap();
        assert_eq!(
            &out[..end],
            b"# Disk DescriptorFile\nversion=1\nCID=0b8e3f5c\nparentCID=ffffffff\n"
        );
        let mut long = b"CID=ffffffff\n".to_vec();
        long.resize(16, 0);
        assert_eq!(
            &with_cid(&long, "0b8e3f5c").unwrap()[..13],
            b"CID=0b8e3f5c\n"
        );
        assert!(with_cid(b"version=1\n\0\0", "0b8e3f5c").is_none());
    }

    #[test]
    fn a_vhd_footer_checksum_covers_the_stamp() {
        let mut footer = [0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        let label = DiskLabel {
            name: "x".into(),
            uuid: "00112233-4455-6677-8899-aabbccddeeff".into(),
            epoch: VHD_EPOCH + 10,
        };
        stamp_vhd_footer(&mut footer, &label);
        assert_eq!(&footer[24..28], &10u32.to_be_bytes());
        assert_eq!(footer[68], 0x00);
        assert_eq!(footer[83], 0xff);
        let stored = u32::from_be_bytes([footer[64], footer[65], footer[66], footer[67]]);
        footer[64..68].copy_from_slice(&[0; 4]);
        let sum: u32 = footer.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(stored, !sum);
    }
}
