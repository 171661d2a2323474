//! Layers against the real filesystem: determinism, every entry kind, whiteouts and opaque
//! directories both ways, exclusions, tarball input, and malicious layers. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_image::layer::{
    extract_layer, layer_from_tar, write_layer, Compression, LayerError, MEDIA_TYPE_TAR_GZIP,
};

fn no_exclude() -> Vec<PathBuf> {
    Vec::new()
}

#[test]
fn same_tree_same_bytes_whatever_the_times() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    full_tree(&upper);
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let a = write_layer(
            &upper,
            &no_exclude(),
            EPOCH,
            compression,
            &tmp.path().join("a"),
        )
        .unwrap();
        touch_all(&upper, 1_234_567);
        // Reading files changes atimes too; a second run must not care.
        let b = write_layer(
            &upper,
            &no_exclude(),
            EPOCH,
            compression,
            &tmp.path().join("b"),
        )
        .unwrap();
        assert_eq!(a.digest, b.digest, "{compression:?}");
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(fs::read(&a.path).unwrap(), fs::read(&b.path).unwrap());
        assert_eq!(a.media_type, compression.media_type());
    }

    // A copy elsewhere (other inodes, other times) gives the same layer too.
    let copy = tmp.path().join("copy");
    run(Command::new("cp").arg("-a").arg(&upper).arg(&copy));
    touch_all(&copy, 99);
    let a = write_layer(
        &upper,
        &no_exclude(),
        EPOCH,
        Compression::Gzip,
        &tmp.path().join("c"),
    )
    .unwrap();
    let b = write_layer(
        &copy,
        &no_exclude(),
        EPOCH,
        Compression::Gzip,
        &tmp.path().join("c"),
    )
    .unwrap();
    assert_eq!(a.digest, b.digest);

    // And the epoch is part of the content.
    let c = write_layer(
        &upper,
        &no_exclude(),
        EPOCH + 1,
        Compression::Gzip,
        &tmp.path().join("c"),
    )
    .unwrap();
    assert_ne!(a.digest, c.digest);
}

#[test]
fn blob_is_named_by_digest_and_described_right() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    full_tree(&upper);
    let out = tmp.path().join("blobs");
    let blob = write_layer(&upper, &no_exclude(), EPOCH, Compression::Gzip, &out).unwrap();
    let hex = blob.digest.strip_prefix("sha256:").unwrap();
    assert_eq!(blob.path, out.join("sha256").join(hex));
    assert_eq!(
        kiln_image::digest::sha256_file(&blob.path).unwrap(),
        blob.digest
    );
    assert_eq!(fs::metadata(&blob.path).unwrap().len(), blob.size);
    assert_eq!(
        kiln_image::digest::sha256_bytes(&decompress(&blob.path)),
        blob.diff_id
    );
    assert_eq!(blob.media_type, MEDIA_TYPE_TAR_GZIP);
    assert_eq!(fs::metadata(&blob.path).unwrap().mode() & 0o777, 0o644);
    // Only the blob is left: no temporary file.
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("sha256")]);
}

#[test]
fn entries_are_sorted_normalised_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    full_tree(&upper);
    let exclude = vec![
        PathBuf::from("etc/resolv.conf"),
        PathBuf::from("/tmp/cache"),
    ];
    let blob = write_layer(
        &upper,
        &exclude,
        EPOCH,
        Compression::Zstd,
        &tmp.path().join("o"),
    )
    .unwrap();
    let entries = list(&blob.path);
    let names = paths(&entries);

    // Sorted bytewise, except that the opaque marker comes first in its directory.
    let expected: Vec<&str> = names
        .iter()
        .copied()
        .filter(|p| !p.ends_with(".wh..wh..opq"))
        .collect();
    let mut sorted = expected.clone();
    sorted.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
    assert_eq!(expected, sorted);
    let app = names.iter().position(|p| *p == "opt/app/").unwrap();
    assert_eq!(names[app + 1], "opt/app/.wh..wh..opq");
    assert_eq!(names[app + 2], "opt/app/-first");

    for e in &entries {
        assert_eq!(e.mtime, EPOCH as u64, "{}", e.path);
        assert!(e.uname.is_empty(), "{}", e.path);
        assert!(
            !e.path.starts_with('/') && !e.path.starts_with("./"),
            "{}",
            e.path
        );
        assert!(
            e.xattrs.iter().all(|(n, _)| !n.starts_with("trusted.")),
            "{}: {:?}",
            e.path,
            e.xattrs
        );
    }
    assert!(!names.contains(&"etc/resolv.conf"));
    assert!(!names.iter().any(|p| p.starts_with("tmp/cache")));
    assert!(names.contains(&"tmp/"));
    assert!(
        !names.contains(&"./") && !names.contains(&""),
        "no root entry: {names:?}"
    );

    assert_eq!(find(&entries, "usr/bin/suid").mode, 0o4755);
    assert_eq!(find(&entries, "tmp/").mode, 0o1777);
    assert_eq!(find(&entries, "tmp/").kind, tar::EntryType::Directory);
    let shadow = find(&entries, "etc/shadow");
    assert_eq!((shadow.mode, shadow.uid, shadow.gid), (0o640, 0, 42));
    let notes = find(&entries, "home/user/notes");
    assert_eq!(
        (notes.uid, notes.gid, notes.content.as_slice()),
        (1234, 1234, &b"mine"[..])
    );
    assert_eq!(
        find(&entries, "usr/bin/ping").xattrs,
        vec![("security.capability".to_string(), CAP_NET_RAW.to_vec())]
    );
    assert_eq!(
        find(&entries, "usr/bin/tagged").xattrs,
        vec![("user.kiln.note".to_string(), b"hello".to_vec())]
    );

    // One content copy for the two links: the first in order carries it.
    let hard = find(&entries, "usr/lib/libx-hard.so");
    assert_eq!(hard.kind, tar::EntryType::Regular);
    assert_eq!(hard.content.len(), 100_000);
    let second = find(&entries, "usr/lib/libx.so.1");
    assert_eq!(second.kind, tar::EntryType::Link);
    assert_eq!(second.link.as_deref(), Some("usr/lib/libx-hard.so"));

    let sym = find(&entries, "usr/lib/libx.so");
    assert_eq!(
        (sym.kind, sym.link.as_deref()),
        (tar::EntryType::Symlink, Some("libx.so.1"))
    );
    assert_eq!(
        find(&entries, "usr/lib/dangling").link.as_deref(),
        Some("/nowhere/absolute")
    );
    let null = find(&entries, "dev/null");
    assert_eq!(
        (null.kind, null.device, null.mode),
        (tar::EntryType::Char, (1, 3), 0o666)
    );
    let lp = find(&entries, "dev/loop9");
    assert_eq!((lp.kind, lp.device), (tar::EntryType::Block, (7, 9)));
    assert_eq!(find(&entries, "dev/fifo").kind, tar::EntryType::Fifo);

    // The whiteout device became a .wh. file; no device 0:0 is left in the layer.
    let wh = find(&entries, "etc/.wh.gone");
    assert_eq!((wh.kind, wh.content.len()), (tar::EntryType::Regular, 0));
    assert!(!names.contains(&"etc/gone"));
    assert_eq!(find(&entries, "empty").content.len(), 0);
}

#[test]
fn round_trip_gives_overlay_form_and_the_same_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    full_tree(&upper);
    let blob = write_layer(
        &upper,
        &no_exclude(),
        EPOCH,
        Compression::Gzip,
        &tmp.path().join("o"),
    )
    .unwrap();
    let dest = tmp.path().join("lower");
    let stats = extract_layer(&blob.path, &dest).unwrap();
    assert_eq!(stats.entries as usize, list(&blob.path).len());
    assert_eq!(
        stats.bytes,
        100_000 + 5 + 20 + 15 + 10 + 1 + 5 + 4 + 3 + 23 + 14
    );

    // Whiteout and opaque directory in overlay form.
    let gone = fs::symlink_metadata(dest.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(!dest.join("etc/.wh.gone").exists());
    assert_eq!(
        xattr_of(&dest.join("opt/app"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.join("opt/app/.wh..wh..opq").exists());

    // Metadata restored.
    let m = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(m("usr/bin/suid").mode() & 0o7777, 0o4755);
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        (m("home/user").uid(), m("home/user").mode() & 0o777),
        (1234, 0o700)
    );
    assert_eq!(m("etc/shadow").gid(), 42);
    assert_eq!(m("usr/bin/suid").mtime(), EPOCH);
    assert_eq!(
        m("usr/lib").mtime(),
        EPOCH,
        "directory mtimes are set after their content"
    );
    assert_eq!(m("usr/lib/libx.so").mtime(), EPOCH);
    assert_eq!(
        fs::read_link(dest.join("usr/lib/libx.so")).unwrap(),
        Path::new("libx.so.1")
    );
    assert_eq!(
        m("usr/lib/libx.so.1").ino(),
        m("usr/lib/libx-hard.so").ino()
    );
    assert_eq!(
        fs::read(dest.join("usr/lib/libx.so.1")).unwrap(),
        vec![7u8; 100_000]
    );
    assert!(m("dev/fifo").file_type().is_fifo());
    assert_eq!(m("dev/null").rdev(), nix::sys::stat::makedev(1, 3));
    assert!(m("dev/loop9").file_type().is_block_device());
    assert_eq!(
        xattr_of(&dest.join("usr/bin/ping"), "security.capability").as_deref(),
        Some(&CAP_NET_RAW[..])
    );
    assert_eq!(
        xattr_of(&dest.join("usr/bin/tagged"), "user.kiln.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        xattr_of(&dest.join("usr/bin/tagged"), "trusted.overlay.origin"),
        None
    );
    assert_eq!(m("").mode() & 0o7777, 0o755);

    // The extracted tree is an upper dir again: writing it gives the very same layer.
    let again = write_layer(
        &dest,
        &no_exclude(),
        EPOCH,
        Compression::Gzip,
        &tmp.path().join("o2"),
    )
    .unwrap();
    assert_eq!(again.digest, blob.digest);

    // No temporary directory is left beside the destination.
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-extract-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn extract_refuses_a_non_empty_destination_but_takes_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    write(&upper.join("f"), b"x", 0o644);
    let blob = write_layer(
        &upper,
        &no_exclude(),
        EPOCH,
        Compression::None,
        &tmp.path().join("o"),
    )
    .unwrap();
    let full = tmp.path().join("full");
    write(&full.join("keep"), b"k", 0o644);
    let err = extract_layer(&blob.path, &full).unwrap_err();
    assert!(matches!(err, LayerError::DestExists(_)), "{err}");
    assert!(
        err.to_string()
            .contains("remove it or extract somewhere else"),
        "{err}"
    );
    assert!(full.join("keep").exists());
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    extract_layer(&blob.path, &empty).unwrap();
    assert_eq!(fs::read(empty.join("f")).unwrap(), b"x");
}

#[test]
fn bad_inputs_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    write(&upper.join("f"), b"x", 0o644);
    let out = tmp.path().join("o");

    let err = write_layer(
        &upper,
        &[PathBuf::from("../etc")],
        EPOCH,
        Compression::Gzip,
        &out,
    )
    .unwrap_err();
    assert!(matches!(err, LayerError::Exclude(_)), "{err}");
    let err = write_layer(&upper, &no_exclude(), -1, Compression::Gzip, &out).unwrap_err();
    assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{err}");
    let err = write_layer(
        &tmp.path().join("missing"),
        &no_exclude(),
        EPOCH,
        Compression::Gzip,
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    // An overlay mounted with metacopy leaves data-less files in the upper dir.
    write(&upper.join("meta"), b"", 0o644);
    xattr::set(upper.join("meta"), "trusted.overlay.metacopy", b"").unwrap();
    let err = write_layer(&upper, &no_exclude(), EPOCH, Compression::Gzip, &out).unwrap_err();
    assert!(err.to_string().contains("metacopy=off"), "{err}");
    fs::remove_file(upper.join("meta")).unwrap();

    // A real file named like a whiteout would read as a deletion everywhere.
    write(&upper.join(".wh.x"), b"", 0o644);
    let err = write_layer(&upper, &no_exclude(), EPOCH, Compression::Gzip, &out).unwrap_err();
    assert!(err.to_string().contains("reserve for whiteouts"), "{err}");
    fs::remove_file(upper.join(".wh.x")).unwrap();

    // xz is refused with a hint.
    let xz = tmp.path().join("l.tar.xz");
    fs::write(&xz, b"\xfd7zXZ\x00rest").unwrap();
    let err = layer_from_tar(&xz, EPOCH, Compression::Gzip, &out).unwrap_err();
    assert!(err.to_string().contains("xz"), "{err}");
    let err = extract_layer(&xz, &tmp.path().join("d")).unwrap_err();
    assert!(err.to_string().contains("xz"), "{err}");
    assert!(!tmp.path().join("d").exists());
}

#[test]
fn tarball_is_rewritten_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    full_tree(&src);
    fs::remove_file(src.join("etc/gone")).unwrap();
    xattr::remove(src.join("opt/app"), "trusted.overlay.opaque").unwrap();
    let future = EPOCH + 1000;
    touch_all(&src, future);
    let old = nix::sys::time::TimeSpec::new(1000, 0);
    nix::sys::stat::utimensat(
        None,
        &src.join("etc/hostname"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();

    // GNU tar, unsorted, with ./ prefixes and xattrs, compressed three ways.
    let plain = tmp.path().join("root.tar");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cpf"])
        .arg(&plain)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let bytes = fs::read(&plain).unwrap();
    let gz = tmp.path().join("root.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &bytes).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let zst = tmp.path().join("root.tar.zst");
    fs::write(&zst, zstd::stream::encode_all(&bytes[..], 19).unwrap()).unwrap();

    let out = tmp.path().join("o");
    let a = layer_from_tar(&plain, EPOCH, Compression::Gzip, &out).unwrap();
    let b = layer_from_tar(&gz, EPOCH, Compression::Gzip, &out).unwrap();
    let c = layer_from_tar(&zst, EPOCH, Compression::Gzip, &out).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest, c.digest);
    // The spooled decompressed copies are gone.
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("sha256")]);

    let entries = list(&a.path);
    let names = paths(&entries);
    let mut sorted = names.clone();
    sorted.sort_by(|x, y| x.trim_end_matches('/').cmp(y.trim_end_matches('/')));
    assert_eq!(names, sorted);
    assert!(!names.iter().any(|n| n.starts_with("./") || n.is_empty()));
    // Clamped: later times come down to the epoch, earlier ones stay.
    assert_eq!(find(&entries, "etc/hostname").mtime, 1000);
    assert_eq!(find(&entries, "usr/bin/suid").mtime, EPOCH as u64);
    assert_eq!(find(&entries, "usr/bin/suid").mode, 0o4755);
    assert_eq!(find(&entries, "home/user/notes").uid, 1234);
    assert_eq!(
        find(&entries, "usr/bin/ping").xattrs,
        vec![("security.capability".to_string(), CAP_NET_RAW.to_vec())]
    );
    assert_eq!(find(&entries, "dev/null").device, (1, 3));
    assert!(entries.iter().all(|e| e.uname.is_empty()));
    // Whatever GNU tar chose, the first link in the new order carries the content.
    assert_eq!(
        find(&entries, "usr/lib/libx-hard.so").kind,
        tar::EntryType::Regular
    );
    assert_eq!(
        find(&entries, "usr/lib/libx.so.1").link.as_deref(),
        Some("usr/lib/libx-hard.so")
    );

    // The same content as a directory gives the same layer (at an epoch that clamps nothing
    // differently: every time in the tree is now the epoch or older).
    touch_all(&src, EPOCH);
    let plain2 = tmp.path().join("root2.tar");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cpf"])
        .arg(&plain2)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let from_tar = layer_from_tar(&plain2, EPOCH, Compression::Zstd, &out).unwrap();
    let from_dir = write_layer(&src, &no_exclude(), EPOCH, Compression::Zstd, &out).unwrap();
    assert_eq!(from_tar.digest, from_dir.digest);
}

#[test]
fn tarball_order_duplicates_and_link_direction_do_not_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    // `z` is the file and `a` links to it; `b` is written twice, the second wins.
    let one = raw_tar(&[
        Raw::dir("d/"),
        Raw::file("z", b"content"),
        Raw::hardlink("a", "z"),
        Raw::file("b", b"old"),
        Raw::file("./d/x", b"x"),
        Raw::file("b", b"new"),
    ]);
    let two = raw_tar(&[
        Raw::file("b", b"new"),
        Raw::file("d/x", b"x"),
        Raw::file("z", b"content"),
        Raw::dir("./d"),
        Raw::hardlink("a", "./z"),
    ]);
    fs::write(tmp.path().join("one.tar"), one).unwrap();
    fs::write(tmp.path().join("two.tar"), two).unwrap();
    let a = layer_from_tar(&tmp.path().join("one.tar"), EPOCH, Compression::None, &out).unwrap();
    let b = layer_from_tar(&tmp.path().join("two.tar"), EPOCH, Compression::None, &out).unwrap();
    assert_eq!(a.digest, b.digest);
    let entries = list(&a.path);
    assert_eq!(paths(&entries), vec!["a", "b", "d/", "d/x", "z"]);
    assert_eq!(find(&entries, "a").content, b"content");
    assert_eq!(find(&entries, "z").kind, tar::EntryType::Link);
    assert_eq!(find(&entries, "z").link.as_deref(), Some("a"));
    assert_eq!(find(&entries, "b").content, b"new");

    let dangling = raw_tar(&[Raw::hardlink("a", "missing")]);
    fs::write(tmp.path().join("bad.tar"), dangling).unwrap();
    let err =
        layer_from_tar(&tmp.path().join("bad.tar"), EPOCH, Compression::None, &out).unwrap_err();
    assert!(err.to_string().contains("not in the archive"), "{err}");
    let dotdot = raw_tar(&[Raw::file("../x", b"")]);
    fs::write(tmp.path().join("dotdot.tar"), dotdot).unwrap();
    let err = layer_from_tar(
        &tmp.path().join("dotdot.tar"),
        EPOCH,
        Compression::None,
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
}

/// Extracts a raw archive into `<tmp>/dest`; returns the result and the path.
fn extract_raw(
    tmp: &Path,
    name: &str,
    entries: &[Raw<'_>],
) -> (Result<kiln_image::ExtractStats, LayerError>, PathBuf) {
    let blob = tmp.join(format!("{name}.tar"));
    fs::write(&blob, raw_tar(entries)).unwrap();
    let dest = tmp.join(format!("{name}-dest"));
    (extract_layer(&blob, &dest), dest)
}

fn assert_refused(result: Result<kiln_image::ExtractStats, LayerError>, dest: &Path, says: &str) {
    let err = result.unwrap_err();
    assert!(matches!(err, LayerError::Unsafe { .. }), "{err}");
    assert!(err.to_string().contains(says), "{err}");
    assert!(!dest.exists(), "nothing extracted on refusal");
    let parent = dest.parent().unwrap();
    for e in fs::read_dir(parent).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".kiln-extract-"),
            "temporary directory left: {name}"
        );
    }
}

#[test]
fn malicious_layers_are_refused_or_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("target"), b"precious").unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let target_s = format!("{outside_s}/target");

    // `..` escapes.
    let (r, d) = extract_raw(t, "dotdot", &[Raw::file("../evil", b"x")]);
    assert_refused(r, &d, "`..`");
    assert!(!t.join("evil").exists());
    let (r, d) = extract_raw(
        t,
        "dotdot2",
        &[Raw::dir("a/"), Raw::file("a/../../evil2", b"x")],
    );
    assert_refused(r, &d, "`..`");
    assert!(!t.join("evil2").exists());

    // An absolute path lands inside the destination.
    let abs = format!("{outside_s}/abs-evil");
    let (r, d) = extract_raw(t, "abs", &[Raw::file(&abs, b"x")]);
    r.unwrap();
    assert!(!outside.join("abs-evil").exists());
    assert_eq!(fs::read(d.join(abs.trim_start_matches('/'))).unwrap(), b"x");

    // Writing through a symlink that points outside, absolute or relative.
    let (r, d) = extract_raw(
        t,
        "symabs",
        &[
            Raw::symlink("link", &outside_s),
            Raw::file("link/pwned", b"x"),
        ],
    );
    assert_refused(r, &d, "through the symlink `link`");
    assert!(!outside.join("pwned").exists());
    let (r, d) = extract_raw(
        t,
        "symrel",
        &[
            Raw::symlink("up", "../outside"),
            Raw::file("up/pwned", b"x"),
        ],
    );
    assert_refused(r, &d, "through the symlink `up`");
    assert!(!outside.join("pwned").exists());
    let (r, d) = extract_raw(
        t,
        "symdir",
        &[
            Raw::dir("etc/"),
            Raw::symlink("etc/sub", &outside_s),
            Raw::dir("etc/sub/deeper/"),
        ],
    );
    assert_refused(r, &d, "through the symlink `etc/sub`");
    assert!(!outside.join("deeper").exists());

    // A file over a symlink replaces the symlink; the symlink's target is untouched.
    let (r, d) = extract_raw(
        t,
        "over",
        &[Raw::symlink("f", &target_s), Raw::file("f", b"overwritten")],
    );
    r.unwrap();
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
    assert_eq!(fs::read(d.join("f")).unwrap(), b"overwritten");
    assert!(!fs::symlink_metadata(d.join("f"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Hardlinks: to a file outside (absolute, relative), to nothing, to a symlink's target.
    let (r, d) = extract_raw(t, "hlabs", &[Raw::hardlink("h", &target_s)]);
    assert_refused(r, &d, "not a file written earlier in this layer");
    let (r, d) = extract_raw(t, "hlrel", &[Raw::hardlink("h", "../outside/target")]);
    assert_refused(r, &d, "outside the layer");
    let (r, d) = extract_raw(
        t,
        "hlsym",
        &[
            Raw::symlink("s", &outside_s),
            Raw::hardlink("h", "s/target"),
        ],
    );
    assert_refused(r, &d, "through the symlink `s`");
    // A hardlink to a symlink links the symlink itself; writing the name again replaces it.
    let (r, d) = extract_raw(
        t,
        "hlsym2",
        &[
            Raw::symlink("s", &target_s),
            Raw::hardlink("h", "s"),
            Raw::file("h", b"mine"),
        ],
    );
    r.unwrap();
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
    assert_eq!(fs::read(d.join("h")).unwrap(), b"mine");

    // Forged overlay xattrs never reach the lower dir.
    let mut forged = tempfile::NamedTempFile::new_in(t).unwrap();
    {
        let mut b = tar::Builder::new(&mut forged);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..])])
            .unwrap();
        b.append_data(&mut h, "dir", &b""[..]).unwrap();
        b.finish().unwrap();
    }
    let dest = t.join("forged-dest");
    extract_layer(forged.path(), &dest).unwrap();
    assert_eq!(
        xattr_of(&dest.join("dir"), "trusted.overlay.redirect"),
        None
    );
}

#[test]
fn whiteouts_in_the_same_layer_follow_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A whiteout then a directory of the same name: the directory replaces the lower one.
    let (r, d) = extract_raw(
        t,
        "replace",
        &[
            Raw::file(".wh.data", b""),
            Raw::dir("data/"),
            Raw::file("data/new", b"n"),
        ],
    );
    r.unwrap();
    assert!(fs::symlink_metadata(d.join("data")).unwrap().is_dir());
    assert_eq!(
        xattr_of(&d.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // A whiteout of something this layer wrote leaves it (whiteouts hide lower layers only).
    let (r, d) = extract_raw(
        t,
        "own",
        &[Raw::file("keep", b"k"), Raw::file(".wh.keep", b"")],
    );
    r.unwrap();
    assert_eq!(fs::read(d.join("keep")).unwrap(), b"k");
    // Whiteouts and opaque markers in directories the layer does not list.
    let (r, d) = extract_raw(
        t,
        "implicit",
        &[
            Raw::file("a/b/.wh.c", b""),
            Raw::file("x/.wh..wh..opq", b""),
        ],
    );
    r.unwrap();
    assert!(fs::symlink_metadata(d.join("a/b/c"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr_of(&d.join("x"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}
