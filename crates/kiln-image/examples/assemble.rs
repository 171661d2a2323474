//! Assembles a bootable disk from overlay lower dirs (a development aid):
//! `cargo run -p kiln-image --example assemble -- OUT.qcow2 LAYER...` (bottom layer first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(&args[0]);
    let layers: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
    let (kernel, initrd) = kiln_image::disk::find_kernel(&layers).expect("a kernel in /boot");
    let work = out.with_extension("d");
    std::fs::create_dir_all(&work).unwrap();
    let boot = work.join("bootfiles");
    let uuid = "6f1a6c8e-2b0c-4c7e-9a43-0d4f3b0c1d2e";
    kiln_image::disk::boot_files(&boot, uuid, &kernel, initrd.as_deref()).unwrap();
    let mut lowers: Vec<PathBuf> = vec![boot];
    lowers.extend(layers.iter().rev().cloned());
    let t = std::time::Instant::now();
    let id = kiln_image::disk::FsIdentity {
        uuid: uuid.into(),
        hash_seed: "1b6e0f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
        epoch: 1_700_000_000,
    };
    let size = kiln_image::disk::root_filesystem(
        &lowers,
        &work.join("root.ext4"),
        &id,
        kiln_image::disk::FsSize::Fit { extra: 0 },
    )
    .unwrap();
    println!("root filesystem {size} bytes in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let raw = work.join("disk.raw");
    let guids = kiln_image::disk::DiskGuids {
        disk: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
        bios_boot: "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716".into(),
        root: "3c2b1a09-8f7e-6d5c-4b3a-291807f6e5d4".into(),
    };
    kiln_image::disk::assemble(&work.join("root.ext4"), &raw, &guids).unwrap();
    println!("assembled in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let label = kiln_image::disk::DiskLabel {
        name: "assembled".into(),
        uuid: guids.disk.clone(),
        epoch: id.epoch,
    };
    kiln_image::disk::convert(
        &raw,
        &out,
        kiln_image::disk::DiskFormat::Qcow2,
        kiln_image::disk::DiskCompression::None,
        &label,
    )
    .unwrap();
    println!("qcow2 in {:?}", t.elapsed());
}
