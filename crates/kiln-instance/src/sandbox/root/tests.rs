//! The mount plan, confined and not, against a recorder.

#![allow(clippy::unwrap_used)]
use super::super::syscalls::{Call, Recorder};
use super::super::userns::IdRange;
use super::super::{Limits, Network, SandboxSpec};
use super::*;

fn spec(network: Network) -> SandboxSpec {
    SandboxSpec {
        id: "t1".into(),
        lower: vec!["/k/l2".into(), "/k/l1".into()],
        upper: "/k/up".into(),
        work: "/k/work".into(),
        root: "/k/root".into(),
        hostname: "builder".into(),
        network,
        working_dir: "/tmp".into(),
        env: vec![],
        resolv_conf: Some("/etc/resolv.conf".into()),
        cgroups: vec![],
        limits: Limits::default(),
        confinement: Confinement::Unconfined,
        ids: None,
    }
}

fn mounts(calls: &[Call]) -> Vec<(String, Option<String>, MsFlags, Option<String>)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Mount(_, t, fs, f, d) => {
                Some((t.display().to_string(), fs.clone(), *f, d.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_mount_plan() {
    let rec = Recorder {
        existing: vec![
            ("/k/root/proc".into(), PathState::Dir),
            ("/k/root/sys".into(), PathState::Dir),
            ("/k/root/dev".into(), PathState::Dir),
            ("/k/root/etc".into(), PathState::Dir),
            ("/k/root/etc/resolv.conf".into(), PathState::File),
            ("/tmp".into(), PathState::Dir),
        ],
        ..Recorder::default()
    };
    let created = setup_root(&rec, &spec(Network::Host), None)
        .unwrap()
        .created;
    // /run is missing in this image: it is created, and reported so captures skip it.
    assert_eq!(created, vec!["run".to_string()]);
    let calls = rec.calls();
    let m = mounts(&calls);
    assert_eq!(m[0].0, "/");
    assert_eq!(
        m[0].2,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        "private first"
    );
    assert_eq!(m[1].0, "/k/root");
    assert_eq!(
        m[1].3.as_deref(),
        Some("lowerdir=/k/l2:/k/l1,upperdir=/k/up,workdir=/k/work,redirect_dir=off,metacopy=off,index=off")
    );
    let proc_mount = m.iter().find(|x| x.0 == "/k/root/proc").unwrap();
    assert!(proc_mount
        .2
        .contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
    let sys_ro = m.iter().filter(|x| x.0 == "/k/root/sys").nth(1).unwrap();
    assert!(sys_ro.2.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
    for d in DEVICES {
        assert!(m
            .iter()
            .any(|x| x.0 == format!("/k/root/dev/{d}") && x.2 == MsFlags::MS_BIND));
    }
    assert!(m
        .iter()
        .any(|x| x.0 == "/k/root/etc/resolv.conf" && x.2.contains(MsFlags::MS_RDONLY)));
    assert!(
        !calls.contains(&Call::LoopbackUp),
        "host network: loopback untouched"
    );
    // The pivot comes last, then the working directory.
    let n = calls.len();
    assert_eq!(calls[n - 4], Call::Chdir("/k/root".into()));
    assert_eq!(calls[n - 3], Call::PivotRoot(".".into(), ".".into()));
    assert_eq!(calls[n - 2], Call::Umount(".".into()));
    assert_eq!(calls[n - 1], Call::Chdir("/".into()));
    assert!(calls.contains(&Call::Hostname("builder".into())));
}

#[test]
fn no_network_brings_loopback_up_and_skips_resolv_conf() {
    let rec = Recorder::default();
    let created = setup_root(&rec, &spec(Network::None), None)
        .unwrap()
        .created;
    assert!(created.contains(&"proc".to_string()));
    let calls = rec.calls();
    assert!(calls.contains(&Call::LoopbackUp));
    assert!(!mounts(&calls).iter().any(|x| x.0.ends_with("resolv.conf")));
    // The missing working directory is made inside the new root.
    assert_eq!(calls.last(), Some(&Call::Mkdir("/tmp".into())));
}

#[test]
fn refuses_what_overlayfs_cannot_take() {
    let rec = Recorder::default();
    let mut s = spec(Network::Host);
    s.lower.push("/k/with:colon".into());
    assert!(setup_root(&rec, &s, None)
        .unwrap_err()
        .contains("contains `:`"));
    let mut s = spec(Network::Host);
    s.lower = (0..100)
        .map(|i| PathBuf::from(format!("/very/long/path/to/layer/{i:064}")))
        .collect();
    assert!(setup_root(&rec, &s, None)
        .unwrap_err()
        .contains("too many for one overlay mount"));
}

#[test]
fn a_resolv_conf_linked_into_run_gets_the_hosts_file_in_the_sandboxs_run() {
    let rec = Recorder {
        existing: vec![
            ("/k/root/proc".into(), PathState::Dir),
            ("/k/root/sys".into(), PathState::Dir),
            ("/k/root/dev".into(), PathState::Dir),
            ("/k/root/run".into(), PathState::Dir),
            ("/k/root/etc".into(), PathState::Dir),
            ("/k/root/etc/resolv.conf".into(), PathState::Symlink),
        ],
        // Debian's systemd-resolved links it relative to /etc.
        links: vec![(
            "/k/root/etc/resolv.conf".into(),
            "../run/systemd/resolve/stub-resolv.conf".into(),
        )],
        ..Recorder::default()
    };
    setup_root(&rec, &spec(Network::Host), None).unwrap();
    let calls = rec.calls();
    let target = PathBuf::from("/k/root/run/systemd/resolve/stub-resolv.conf");
    assert!(calls.contains(&Call::Touch(target.clone())));
    let m = mounts(&calls);
    assert!(m
        .iter()
        .any(|x| x.0 == target.display().to_string() && x.2.contains(MsFlags::MS_RDONLY)));
    assert!(!m.iter().any(|x| x.0 == "/k/root/etc/resolv.conf"));
}

#[test]
fn link_targets() {
    assert_eq!(
        link_target("/etc", Path::new("../run/a/b")),
        PathBuf::from("/run/a/b")
    );
    assert_eq!(
        link_target("/etc", Path::new("/run/x")),
        PathBuf::from("/run/x")
    );
    assert_eq!(
        link_target("/etc", Path::new("../../../x")),
        PathBuf::from("/x")
    );
    assert_eq!(
        link_target("/etc", Path::new("./y")),
        PathBuf::from("/etc/y")
    );
}

#[test]
fn a_file_where_a_mount_point_belongs_is_an_error() {
    let rec = Recorder {
        existing: vec![("/k/root/proc".into(), PathState::File)],
        ..Recorder::default()
    };
    let e = setup_root(&rec, &spec(Network::Host), None).unwrap_err();
    assert!(e.contains("/proc in the image is not a folder"), "{e}");
}

fn confined() -> SandboxSpec {
    let mut s = spec(Network::Private);
    s.confinement = Confinement::Confined;
    s.ids = Some(IdRange {
        host_base: 0x7000_0000,
        count: 65536,
    });
    s
}

fn confined_image() -> Recorder {
    Recorder {
        existing: vec![
            ("/k/root/proc".into(), PathState::Dir),
            ("/k/root/proc/kcore".into(), PathState::File),
            ("/k/root/proc/acpi".into(), PathState::Dir),
            ("/k/root/proc/sys".into(), PathState::Dir),
            ("/k/root/proc/sysrq-trigger".into(), PathState::File),
            ("/k/root/sys".into(), PathState::Dir),
            ("/k/root/dev".into(), PathState::Dir),
            ("/k/root/run".into(), PathState::Dir),
            ("/tmp".into(), PathState::Dir),
        ],
        ..Recorder::default()
    }
}

#[test]
fn a_confined_root_is_id_mapped_masked_and_read_only() {
    let rec = confined_image();
    let rooted = setup_root(&rec, &confined(), Some(7)).unwrap();
    assert!(rooted.idmapped);
    let calls = rec.calls();
    // Each layer, and the folder of the writable layer, id-mapped on a private tmpfs.
    for (src, at) in [
        ("/k/l2", "/k/root/l0"),
        ("/k/l1", "/k/root/l1"),
        ("/k", "/k/root/u"),
    ] {
        assert!(
            calls.contains(&Call::IdmappedBind(src.into(), at.into())),
            "{src}"
        );
    }
    let m = mounts(&calls);
    let overlay = m
        .iter()
        .find(|x| x.1.as_deref() == Some("overlay"))
        .unwrap();
    assert_eq!(
        overlay.3.as_deref(),
        Some("lowerdir=/k/root/l0:/k/root/l1,upperdir=/k/root/u/up,workdir=/k/root/u/work,redirect_dir=off,metacopy=off,index=off")
    );
    assert!(overlay.2.contains(MsFlags::MS_NODEV));
    // What kiln creates inside belongs to root inside.
    let as_root = calls
        .iter()
        .position(|c| *c == Call::CreateAs("/k/root".into(), Some((0x7000_0000, 0x7000_0000))))
        .unwrap();
    let overlay_at = calls
        .iter()
        .position(|c| matches!(c, Call::Mount(_, _, Some(fs), _, _) if fs == "overlay"))
        .unwrap();
    assert!(as_root > overlay_at);
    // A fresh sysfs, read-only; Docker's masks and read-only files where they exist.
    assert!(m.iter().any(|x| x.0 == "/k/root/sys"
        && x.1.as_deref() == Some("sysfs")
        && x.2.contains(MsFlags::MS_RDONLY)));
    assert!(m
        .iter()
        .any(|x| x.0 == "/k/root/proc/kcore" && x.2 == MsFlags::MS_BIND));
    assert!(m.iter().any(|x| x.0 == "/k/root/proc/acpi"
        && x.1.as_deref() == Some("tmpfs")
        && x.2.contains(MsFlags::MS_RDONLY)));
    for ro in ["/k/root/proc/sys", "/k/root/proc/sysrq-trigger"] {
        assert!(
            m.iter()
                .any(|x| x.0 == ro && x.2.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)),
            "{ro}"
        );
    }
    assert!(
        !m.iter().any(|x| x.0 == "/k/root/proc/keys"),
        "absent files are not masked"
    );
    // /dev and /run belong to root inside; /dev cannot hold usable device nodes.
    let dev = m.iter().find(|x| x.0 == "/k/root/dev").unwrap();
    assert!(dev.2.contains(MsFlags::MS_NODEV));
    assert!(dev
        .3
        .as_deref()
        .unwrap()
        .contains("uid=1879048192,gid=1879048192"));
    let run = m.iter().find(|x| x.0 == "/k/root/run").unwrap();
    assert!(run.3.as_deref().unwrap().contains("uid=1879048192"));
    assert_eq!(calls.last(), Some(&Call::CreateAs("/".into(), None)));
}

#[test]
fn without_id_mapped_mounts_a_confined_root_falls_back_to_plain_layers() {
    let rec = Recorder {
        no_idmap: Some(nix::libc::EINVAL),
        ..confined_image()
    };
    let rooted = setup_root(&rec, &confined(), Some(7)).unwrap();
    assert!(!rooted.idmapped);
    assert!(rooted.idmap_refused.unwrap().contains("id-mapped mounts"));
    let calls = rec.calls();
    assert!(
        calls.contains(&Call::Umount("/k/root".into())),
        "the staging tmpfs goes"
    );
    let m = mounts(&calls);
    let overlay = m
        .iter()
        .find(|x| x.1.as_deref() == Some("overlay"))
        .unwrap();
    assert!(overlay
        .3
        .as_deref()
        .unwrap()
        .starts_with("lowerdir=/k/l2:/k/l1,upperdir=/k/up,"));
    assert!(!calls.iter().any(|c| matches!(c, Call::CreateAs(..))));
    // Still masked, still a fresh read-only sysfs.
    assert!(m.iter().any(|x| x.0 == "/k/root/proc/kcore"));
    assert!(m
        .iter()
        .any(|x| x.0 == "/k/root/sys" && x.1.as_deref() == Some("sysfs")));
}
