//! A tar writer whose every byte is decided by the entry, never by the machine or the clock.
//!
//! Headers are ustar; what ustar cannot hold (long paths and link targets, large ids and sizes,
//! extended attributes) goes into a PAX extended header before the entry, with records in a
//! fixed order. `tar::Header` is used only as the 512-byte record it is.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal header field (7 digits).
const MAX_OCTAL_7: u64 = 0o7777777;
/// Largest value of the 12-byte size field (11 digits).
const MAX_OCTAL_11: u64 = 0o777_7777_7777;

/// What an entry is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    HardLink(&'a [u8]),
    Char(u64, u64),
    Block(u64, u64),
    Fifo,
}

/// One entry's header: path relative to the root, no leading `./`, no trailing `/`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head<'a> {
    pub path: &'a [u8],
    pub kind: Kind<'a>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Content length; must be 0 for anything but `Kind::File`.
    pub size: u64,
    /// Sorted by name, names already filtered.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Why an entry could not be appended.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Writing the archive failed.
    Write(io::Error),
    /// Reading the content failed.
    Read(io::Error),
    /// The content ended before `size` bytes.
    Short,
    /// The header cannot say this (a device number too large for ustar).
    Unrepresentable(String),
}

pub(crate) struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            buf: vec![0; 1 << 16],
        }
    }

    /// Appends one entry; `data` gives its content (at least `head.size` bytes).
    pub(crate) fn append(
        &mut self,
        head: &Head<'_>,
        data: Option<&mut dyn Read>,
    ) -> Result<(), AppendError> {
        let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut header = tar::Header::new_ustar();

        let mut name = head.path.to_vec();
        if matches!(head.kind, Kind::Dir) {
            name.push(b'/');
        }
        if !set_ustar_name(&mut header, &name) {
            pax.insert(b"path".to_vec(), name.clone());
            let cut = name.len().min(100);
            header.as_old_mut().name[..cut].copy_from_slice(&name[..cut]);
        }

        let (flag, link) = match head.kind {
            Kind::File => (tar::EntryType::Regular, None),
            Kind::Dir => (tar::EntryType::Directory, None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, Some(t)),
            Kind::HardLink(t) => (tar::EntryType::Link, Some(t)),
            Kind::Char(..) => (tar::EntryType::Char, None),
            Kind::Block(..) => (tar::EntryType::Block, None),
            Kind::Fifo => (tar::EntryType::Fifo, None),
        };
        header.set_entry_type(flag);
        if let Some(target) = link {
            let field = &mut header.as_old_mut().linkname;
            if target.len() <= field.len() {
                field[..target.len()].copy_from_slice(target);
            } else {
                pax.insert(b"linkpath".to_vec(), target.to_vec());
                field.copy_from_slice(&target[..100]);
            }
        }
        // Written as octal zeros for every entry, as GNU tar and Go do: some readers refuse
        // empty numeric fields.
        let (major, minor) = match head.kind {
            Kind::Char(major, minor) | Kind::Block(major, minor) => (major, minor),
            _ => (0, 0),
        };
        if major > MAX_OCTAL_7 || minor > MAX_OCTAL_7 {
            return Err(AppendError::Unrepresentable(format!(
                "device number {major}:{minor} does not fit a tar header"
            )));
        }
        // Both fit 7 octal digits, so both fit u32.
        set_device(&mut header, major as u32, minor as u32)?;

        header.set_mode(head.mode & 0o7777);
        for (key, value, set) in [
            (
                &b"uid"[..],
                head.uid,
                tar::Header::set_uid as fn(&mut tar::Header, u64),
            ),
            (&b"gid"[..], head.gid, tar::Header::set_gid),
        ] {
            if value > MAX_OCTAL_7 {
                pax.insert(key.to_vec(), value.to_string().into_bytes());
            } else {
                set(&mut header, value);
            }
        }
        if head.size > MAX_OCTAL_11 {
            pax.insert(b"size".to_vec(), head.size.to_string().into_bytes());
        } else {
            header.set_size(head.size);
        }
        header.set_mtime(head.mtime);
        for (xname, value) in head.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(xname);
            pax.insert(key, value.clone());
        }
        header.set_cksum();

        if !pax.is_empty() {
            self.write_pax(head, &pax)?;
        }
        self.out
            .write_all(header.as_bytes())
            .map_err(AppendError::Write)?;
        if head.size > 0 {
            let Some(data) = data else {
                return Err(AppendError::Short);
            };
            self.copy_exact(data, head.size)?;
            self.pad(head.size)?;
        }
        Ok(())
    }

    fn write_pax(
        &mut self,
        head: &Head<'_>,
        records: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), AppendError> {
        let mut body = Vec::new();
        for (key, value) in records {
            pax_record(&mut body, key, value);
        }
        let mut header = tar::Header::new_ustar();
        // Named like Go's archive/tar does, after the entry, so listings stay readable.
        let mut name = b"PaxHeaders.0/".to_vec();
        name.extend_from_slice(super::base_name(head.path));
        name.truncate(100);
        header.as_old_mut().name[..name.len()].copy_from_slice(&name);
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        set_device(&mut header, 0, 0)?;
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(head.mtime);
        header.set_size(body.len() as u64);
        header.set_cksum();
        self.out
            .write_all(header.as_bytes())
            .map_err(AppendError::Write)?;
        self.out.write_all(&body).map_err(AppendError::Write)?;
        self.pad(body.len() as u64)
    }

    fn copy_exact(&mut self, data: &mut dyn Read, size: u64) -> Result<(), AppendError> {
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => return Err(AppendError::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AppendError::Read(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(AppendError::Write)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<(), AppendError> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out
                .write_all(&[0u8; BLOCK][..BLOCK - rem])
                .map_err(AppendError::Write)?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and hands back the stream.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn set_device(header: &mut tar::Header, major: u32, minor: u32) -> Result<(), AppendError> {
    header.set_device_major(major).map_err(AppendError::Write)?;
    header.set_device_minor(minor).map_err(AppendError::Write)
}

/// Puts `name` into the ustar name field, or split at a `/` over prefix and name; false when
/// it fits neither way (a PAX `path` record is needed).
fn set_ustar_name(header: &mut tar::Header, name: &[u8]) -> bool {
    let Some(ustar) = header.as_ustar_mut() else {
        return false;
    };
    if name.len() <= ustar.name.len() {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // The longest prefix that fits, so the split is the same every time.
    let limit = name.len().min(ustar.prefix.len() + 1);
    for i in (1..limit).rev() {
        if name[i] != b'/' {
            continue;
        }
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if rest.is_empty() || rest.len() > ustar.name.len() {
            continue;
        }
        if prefix.len() <= ustar.prefix.len() {
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    false
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself
/// included.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    loop {
        let next = base + len.to_string().len();
        if next == len {
            break;
        }
        len = next;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path, link target, uid and xattrs of each entry.
    type Listed = (Vec<u8>, Option<Vec<u8>>, u64, Vec<(String, Vec<u8>)>);

    fn read_back(bytes: &[u8]) -> Vec<Listed> {
        let mut ar = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path_bytes().into_owned();
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let uid = e.header().uid().unwrap();
            let mut xattrs = Vec::new();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    if let Some(n) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((n.to_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
            out.push((path, link, uid, xattrs));
        }
        out
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"x");
        assert_eq!(out, b"9 path=x\n");
        let mut out = Vec::new();
        let v = vec![b'a'; 93];
        pax_record(&mut out, b"path", &v);
        // 4 + 93 + 3 = 100 bytes without the length; with "103" it is 103.
        assert!(out.starts_with(b"103 path="));
        assert_eq!(out.len(), 103);
    }

    #[test]
    fn long_names_links_ids_and_xattrs_round_trip() {
        let long_dir = "d".repeat(120);
        let long = format!("{long_dir}/{}", "f".repeat(90));
        let longer = format!("{}/{}", "x".repeat(200), "y".repeat(150));
        let target = "t".repeat(150);
        let xattrs = vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])];
        let mut w = TarWriter::new(Vec::new());
        let base = Head {
            path: b"",
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            size: 0,
            xattrs: &[],
        };
        w.append(
            &Head {
                path: long.as_bytes(),
                ..base
            },
            None,
        )
        .unwrap();
        w.append(
            &Head {
                path: longer.as_bytes(),
                uid: 5_000_000,
                ..base
            },
            None,
        )
        .unwrap();
        w.append(
            &Head {
                path: b"l",
                kind: Kind::Symlink(target.as_bytes()),
                xattrs: &xattrs,
                ..base
            },
            None,
        )
        .unwrap();
        let bytes = w.finish().unwrap();
        let entries = read_back(&bytes);
        assert_eq!(entries[0].0, long.as_bytes());
        assert_eq!(entries[1].0, longer.as_bytes());
        assert_eq!(entries[1].2, 5_000_000);
        assert_eq!(entries[2].1.as_deref(), Some(target.as_bytes()));
        assert_eq!(
            entries[2].3,
            vec![("security.capability".to_string(), vec![1, 0, 0, 2])]
        );
    }

    #[test]
    fn short_content_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let head = Head {
            path: b"f",
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 10,
            xattrs: &[],
        };
        let mut data: &[u8] = b"abc";
        assert!(matches!(
            w.append(&head, Some(&mut data)),
            Err(AppendError::Short)
        ));
    }
}
