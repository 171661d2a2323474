//! Encrypted packs: a [`FrameSeal`] turns each compressed frame into the bytes the pack holds
//! and back. kiln's is kiln-kms's disk data key (AES-256-GCM with a nonce derived from the
//! frame), deterministic so that the same chunk is the same sealed frame in every version and
//! reuse between versions survives. The index's offsets and lengths are the sealed frames'.

/// Seals and opens pack frames.
pub trait FrameSeal: Send + Sync {
    /// The stored form of a frame; the same frame must give the same bytes.
    fn seal(&self, frame: &[u8]) -> Result<Vec<u8>, String>;
    /// The frame of a stored form; an error when it does not open (wrong key, changed bytes).
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
}
