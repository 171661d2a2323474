//! SHA-256 digests in the OCI form `sha256:<hex>`.
//!
//! Blobs can be gigabytes, so files are hashed as a stream, and writers hash what passes through
//! them ([`HashingWriter`]) so a blob is hashed while it is written instead of read back.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A file could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot read it to compute its digest: {source}")]
pub struct DigestError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

/// The digest of a file, `sha256:<hex>`, read in chunks (never whole into memory).
pub fn sha256_file(path: &Path) -> Result<String, DigestError> {
    let wrap = |source| DigestError {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(wrap)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(wrap(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The digest of bytes in memory, `sha256:<hex>` (configs and manifests).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Splits a digest into algorithm and encoded part, checking both against the OCI grammar.
///
/// Digests from an `index.json` or a manifest become file names under `blobs/`; the grammar
/// check is what keeps `sha256:../../etc/passwd` from naming a file outside the layout.
pub fn split(digest: &str) -> Option<(&str, &str)> {
    let (algorithm, encoded) = digest.split_once(':')?;
    let alg_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let enc_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
    if !alg_ok || !enc_ok {
        return None;
    }
    if algorithm == "sha256"
        && (encoded.len() != 64
            || !encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return None;
    }
    Some((algorithm, encoded))
}

/// A writer that hashes and counts every byte passed on to `inner`.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the digest (`sha256:<hex>`) and the number of bytes written.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_bytes(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_bytes(b"abc"));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!(
            (inner.as_slice(), d.as_str(), n),
            (&b"abc"[..], sha256_bytes(b"abc").as_str(), 3)
        );
    }

    #[test]
    fn split_checks_grammar() {
        let good = sha256_bytes(b"x");
        assert!(split(&good).is_some());
        assert!(split("sha256:../../etc/passwd").is_none());
        assert!(split("sha256:abc").is_none());
        assert!(split("sha512:/x").is_none());
        assert!(split("nocolon").is_none());
        assert_eq!(split("sha512:AbC="), Some(("sha512", "AbC=")));
    }
}
