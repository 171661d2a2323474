//! What kiln-dist's registry tests build their artifacts from.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;

use kiln_dist::pieces;
use kiln_dist::{Artifact, BuildId, OciImage};
use kiln_image::{Compression, ImageSettings};

/// Build `build` of web 1.0.0: an image with one layer holding `content`.
pub fn artifact(scratch: &Path, build: u32, content: &str) -> Artifact {
    let tree = scratch.join(format!("tree-{build}-{content}"));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), content).unwrap();
    let blob =
        kiln_image::write_layer(&tree, &[], 0, Compression::Gzip, &scratch.join("blobs")).unwrap();
    let mut a = Artifact {
        build: BuildId {
            name: "web".into(),
            version: "1.0.0".into(),
            build,
        },
        image: Some(OciImage {
            blobs: vec![blob],
            settings: ImageSettings::default(),
        }),
        disk: None,
        previous: (build > 1).then_some(build - 1),
        scratch: scratch.join(format!("scratch-{build}-{content}")),
        pieces: Vec::new(),
    };
    a.pieces = pieces::image(&a).unwrap().into_iter().collect();
    a
}

/// A disk-like file: random 4 KiB blocks (seeded) with a long run of zeros, `change` bytes
/// rewritten at 3 MiB.
pub fn disk(path: &Path, change: &[u8]) {
    let mut bytes = Vec::with_capacity(12 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..(8 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    bytes[3 << 20..(3 << 20) + change.len()].copy_from_slice(change);
    std::fs::write(path, bytes).unwrap();
}
