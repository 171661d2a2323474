//! What ordinary builds do must keep working in a confined sandbox (issue 15's benign half):
//! dpkg installs a package with root-owned, user-owned, set-user-ID and sticky files; apt
//! installs a real package from Debian's mirror through the private network; a service binds
//! port 80 without systemd; useradd and chown work; a raw ICMP socket works. And the layer a
//! confined build leaves holds the ids an image expects: root's files are uid 0 on disk and in
//! the captured tar, not the sandbox's host ids (0x70000000 and up), and modes survive.
//!
//! Each check is a script that prints `BENIGN-OK ...` when what it did worked. Needs root,
//! pasta and nftables; the apt check needs Debian's mirror (deb.debian.org).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{dirs, Dirs};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_image::{write_layer, Compression};
use kiln_instance::sandbox::{Sandbox, SandboxSpec};
use kiln_instance::{Discard, ExecRequest, Instance};

/// The first host id of the sandboxes' ranges: nothing on disk may carry one.
const SANDBOX_IDS: u64 = 0x7000_0000;

/// One thing a build does.
struct Check {
    name: &'static str,
    script: &'static str,
    env: Vec<(String, String)>,
}

impl Check {
    fn new(name: &'static str, script: &'static str) -> Check {
        Check {
            name,
            script,
            env: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<String>) -> Check {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

const DPKG_LIST: &str = r#"
n=$(dpkg -l | grep -cE '^ii +(bash|dpkg|coreutils)[ :]')
echo "dpkg -l lists $(dpkg -l | grep -c '^ii') installed packages"
[ "$n" -eq 3 ] && echo "BENIGN-OK dpkg -l shows bash, dpkg and coreutils installed"
"#;

const DPKG_INSTALL: &str = r#"
set -e
dpkg -i /run/kiln/kiln-benign.deb
dpkg -s kiln-benign | grep -q '^Status: install ok installed'
got=$(stat -c '%n %u:%g %a' /opt/kiln-benign/root-file /opt/kiln-benign/user-file /opt/kiln-benign/bin/kiln-suid /opt/kiln-benign/shared /var/lib/kiln-benign/made-by-postinst)
echo "$got"
want="/opt/kiln-benign/root-file 0:0 644
/opt/kiln-benign/user-file 1000:1000 640
/opt/kiln-benign/bin/kiln-suid 0:0 4755
/opt/kiln-benign/shared 0:0 1777
/var/lib/kiln-benign/made-by-postinst 0:0 644"
[ "$got" = "$want" ] && echo "BENIGN-OK dpkg -i installed kiln-benign with its owners and modes"
"#;

const USERS: &str = r#"
set -e
useradd -u 2345 -U -m -s /bin/sh kiln-benign-user
echo owned > /srv/kiln-benign-owned
chown kiln-benign-user:kiln-benign-user /srv/kiln-benign-owned
su -s /bin/sh kiln-benign-user -c 'id -u; echo made-by-user > ~/made-by-user'
got=$(stat -c '%U:%G %u:%g' /srv/kiln-benign-owned /home/kiln-benign-user/made-by-user)
echo "$got"
[ "$got" = "kiln-benign-user:kiln-benign-user 2345:2345
kiln-benign-user:kiln-benign-user 2345:2345" ] && echo "BENIGN-OK useradd, chown and su to the new user"
echo made-by-root > /etc/kiln-benign-root-made
"#;

const SERVICE: &str = r#"
python3 -m http.server 80 --bind 127.0.0.1 --directory /opt/kiln-benign > /run/kiln/http.log 2>&1 &
server=$!
for i in $(seq 100); do
  body=$(curl -sf http://127.0.0.1:80/root-file) && break
  sleep 0.1
done
kill $server
echo "served: $body"
[ "$body" = "root's file" ] && echo "BENIGN-OK a service on port 80 answered curl"
"#;

const RAW_PING: &str = r#"
if command -v ping >/dev/null; then
  ping -c1 -W3 127.0.0.1 && echo "BENIGN-OK ping -c1 127.0.0.1"
fi
python3 - <<'PY'
import os, socket, struct
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
ident, payload = os.getpid() & 0xFFFF, b"kiln-benign-ping"
head = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
packet = struct.pack("!BBHHH", 8, 0, checksum(head + payload), ident, 1) + payload
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)  # needs CAP_NET_RAW
s.settimeout(3)
s.sendto(packet, ("127.0.0.1", 0))
while True:
    data, addr = s.recvfrom(1024)
    kind, _, _, rid, _ = struct.unpack("!BBHHH", data[20:28])
    if kind == 0 and rid == ident:
        print("BENIGN-OK an ICMP echo reply through a raw socket from", addr[0])
        break
PY
"#;

const STRACE: &str = r#"
# ptrace of its own processes stays allowed, as in Docker (debuggers, strace in a build).
if ! command -v strace >/dev/null; then echo "BENIGN-OK strace is not installed on this host: nothing to check"; exit 0; fi
out=$(strace -f -e trace=execve true 2>&1)
echo "$out"
echo "$out" | grep -q 'execve("/usr/bin/true"' && echo "BENIGN-OK strace traced its own child"
"#;

const APT: &str = r#"
set -e
export DEBIAN_FRONTEND=noninteractive
# man-db's trigger re-indexes every manual page; builds switch it off the same way.
rm -f /var/lib/man-db/auto-update
apt-get update
apt-get install -y --no-install-recommends "$PACKAGE"
dpkg -s "$PACKAGE" | grep -q '^Status: install ok installed'
echo "installed: $(dpkg-query -W -f='${Package} ${Version}' "$PACKAGE")"
stat -c '%n %u:%g' /var/lib/apt/lists/partial
echo "BENIGN-OK apt-get update and apt-get install $PACKAGE from the network"
"#;

// ---------------------------------------------------------------------------------------------

async fn start(d: &Dirs, id: &str) -> Sandbox {
    let spec = SandboxSpec::new(
        id,
        vec![PathBuf::from("/")],
        d.base.join("upper"),
        d.base.join("work"),
        d.base.join("root"),
    );
    common::start(spec).await
}

/// Runs the checks in order; panics naming each one that did not print `BENIGN-OK`.
async fn check(sb: &Sandbox, checks: &[Check]) {
    let mut failures = Vec::new();
    for c in checks {
        let req = ExecRequest {
            program: "bash".into(),
            args: vec!["-c".into(), c.script.into()],
            env: c.env.clone(),
            timeout: Some(Duration::from_secs(300)),
            ..ExecRequest::default()
        };
        let out = sb.exec(&req, &mut Discard).await.unwrap();
        let ok = out.status.success() && out.stdout.lines().any(|l| l.starts_with("BENIGN-OK"));
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("BENIGN-OK"))
            .unwrap_or("");
        println!(
            "check {}: {}  {line}",
            c.name,
            if ok { "OK" } else { "FAILED" }
        );
        if !ok {
            failures.push(format!(
                "check `{}` failed in the confined sandbox: {:?}\nstdout:\n{}\nstderr:\n{}",
                c.name, out.status, out.stdout, out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A package with a root-owned file, a file owned by 1000:1000, a set-user-ID program, a
/// sticky world-writable folder, and a postinst that makes a file as root.
fn build_deb(dir: &Path) -> PathBuf {
    let pkg = dir.join("pkg");
    let opt = pkg.join("opt/kiln-benign");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(opt.join("bin")).unwrap();
    std::fs::create_dir_all(opt.join("shared")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: kiln-benign\nVersion: 1.0\nArchitecture: all\nMaintainer: kiln tests <kiln@localhost>\nDescription: files of every kind of owner and mode\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("DEBIAN/postinst"),
        "#!/bin/sh\nset -e\nmkdir -p /var/lib/kiln-benign\necho postinst > /var/lib/kiln-benign/made-by-postinst\nchmod 644 /var/lib/kiln-benign/made-by-postinst\n",
    )
    .unwrap();
    std::fs::write(opt.join("root-file"), "root's file").unwrap();
    std::fs::write(opt.join("user-file"), "a user's file").unwrap();
    std::fs::copy("/usr/bin/true", opt.join("bin/kiln-suid")).unwrap();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    for d in [
        pkg.as_path(),
        &pkg.join("opt"),
        &opt,
        &opt.join("bin"),
        &pkg.join("DEBIAN"),
    ] {
        mode(d, 0o755);
    }
    mode(&pkg.join("DEBIAN/postinst"), 0o755);
    mode(&opt.join("root-file"), 0o644);
    mode(&opt.join("user-file"), 0o640);
    std::os::unix::fs::chown(opt.join("user-file"), Some(1000), Some(1000)).unwrap();
    // chown clears set-user-ID bits: set the mode after the owner.
    std::os::unix::fs::chown(opt.join("bin/kiln-suid"), Some(0), Some(0)).unwrap();
    mode(&opt.join("bin/kiln-suid"), 0o4755);
    mode(&opt.join("shared"), 0o1777);
    let deb = dir.join("kiln-benign.deb");
    run(Command::new("dpkg-deb")
        .args(["--build", "-Zgzip"])
        .arg(&pkg)
        .arg(&deb));
    deb
}

/// (uid, gid, mode) of every entry below `root`, by path relative to it.
fn walk(root: &Path) -> BTreeMap<String, (u64, u64, u32)> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u64, u32)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, (u64::from(m.uid()), u64::from(m.gid()), m.mode()));
            if m.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Entries owned by a sandbox's host ids.
fn host_ids(entries: &BTreeMap<String, (u64, u64, u32)>) -> Vec<String> {
    entries
        .iter()
        .filter(|(_, (u, g, _))| *u >= SANDBOX_IDS || *g >= SANDBOX_IDS)
        .map(|(p, (u, g, _))| format!("{p} {u}:{g}"))
        .collect()
}

/// (uid, gid, mode) of every entry of an uncompressed layer tar, by path; ids too large for
/// the header come from the entry's PAX records.
fn tar_entries(tar: &Path) -> BTreeMap<String, (u64, u64, u32)> {
    let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let (mut uid, mut gid) = (e.header().uid().unwrap(), e.header().gid().unwrap());
        if let Some(records) = e.pax_extensions().unwrap() {
            for r in records {
                let r = r.unwrap();
                let value = || r.value().unwrap().parse::<u64>().unwrap();
                match r.key().unwrap() {
                    "uid" => uid = value(),
                    "gid" => gid = value(),
                    _ => {}
                }
            }
        }
        let mode = e.header().mode().unwrap();
        let path = e.path().unwrap().display().to_string();
        out.insert(path.trim_end_matches('/').to_string(), (uid, gid, mode));
    }
    out
}

/// The files the dpkg and user checks made, with the owner and mode each must keep:
/// (path, uid, gid, permission bits).
const EXPECTED: [(&str, u64, u64, u32); 9] = [
    ("opt/kiln-benign/root-file", 0, 0, 0o644),
    ("opt/kiln-benign/user-file", 1000, 1000, 0o640),
    ("opt/kiln-benign/bin/kiln-suid", 0, 0, 0o4755),
    ("opt/kiln-benign/shared", 0, 0, 0o1777),
    ("var/lib/kiln-benign/made-by-postinst", 0, 0, 0o644),
    ("srv/kiln-benign-owned", 2345, 2345, 0o644),
    ("home/kiln-benign-user/made-by-user", 2345, 2345, 0o644),
    ("etc/kiln-benign-root-made", 0, 0, 0o644),
    ("var/lib/dpkg/status", 0, 0, 0o644),
];

fn compare(what: &str, entries: &BTreeMap<String, (u64, u64, u32)>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (path, uid, gid, mode) in EXPECTED {
        match entries.get(path) {
            None => wrong.push(format!("{what}: {path} is missing")),
            Some((u, g, m)) if (*u, *g, m & 0o7777) != (uid, gid, mode) => wrong.push(format!(
                "{what}: {path} is {u}:{g} {:o}, not {uid}:{gid} {mode:o}",
                m & 0o7777
            )),
            Some(_) => {}
        }
    }
    for bad in host_ids(entries) {
        wrong.push(format!("{what}: {bad} has a sandbox's host id"));
    }
    wrong
}

#[tokio::test]
async fn packages_users_and_services_work_and_the_layer_keeps_image_ids() {
    let d = dirs();
    let deb = build_deb(&d.base);
    let sb = start(&d, "benign").await;
    sb.put_file(&deb, "/run/kiln/kiln-benign.deb", 0o644)
        .await
        .unwrap();
    check(
        &sb,
        &[
            Check::new("dpkg -l", DPKG_LIST),
            Check::new("dpkg -i", DPKG_INSTALL),
            Check::new("useradd/chown", USERS),
            Check::new("service on port 80", SERVICE),
            Check::new("raw ICMP (ping)", RAW_PING),
            Check::new("strace of its own child", STRACE),
        ],
    )
    .await;
    sb.stop().await.unwrap();

    // On disk, the writable layer holds the ids the image means.
    let upper = d.base.join("upper");
    let on_disk = walk(&upper);
    let mut wrong = compare("on disk", &on_disk);
    // And so does the layer kiln captures from it.
    let blob = write_layer(&upper, &[], 0, Compression::None, &d.base.join("blobs")).unwrap();
    let in_tar = tar_entries(&blob.path);
    wrong.extend(compare("in the layer", &in_tar));
    println!(
        "layer: {} entries on disk, {} in the tar; checked {} files and every id",
        on_disk.len(),
        in_tar.len(),
        EXPECTED.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A small package the host does not have, so that apt must fetch it.
fn package_to_install() -> &'static str {
    ["hello", "sl", "figlet", "cowsay"]
        .into_iter()
        .find(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .unwrap();
            !String::from_utf8_lossy(&out.stdout).contains("install ok installed")
        })
        .expect("the host has every candidate package installed already")
}

#[tokio::test]
async fn apt_installs_from_the_network() {
    let d = dirs();
    let package = package_to_install();
    let sb = start(&d, "apt").await;
    check(
        &sb,
        &[Check::new("apt-get install", APT).with("PACKAGE", package)],
    )
    .await;
    sb.stop().await.unwrap();
    let on_disk = walk(&d.base.join("upper"));
    let mut wrong: Vec<String> = host_ids(&on_disk)
        .into_iter()
        .map(|b| format!("{b} has a sandbox's host id"))
        .collect();
    // The package's files are root's; apt's download folder is _apt's, as on any Debian.
    let apt_uid = std::fs::metadata("/var/lib/apt/lists/partial")
        .map(|m| u64::from(m.uid()))
        .unwrap_or(42);
    let dpkg_files = std::fs::read_to_string(
        d.base
            .join(format!("upper/var/lib/dpkg/info/{package}.list")),
    )
    .unwrap();
    let mut seen = 0;
    for f in dpkg_files.lines() {
        if let Some((u, g, _)) = on_disk.get(f.trim_start_matches('/')) {
            seen += 1;
            if (*u, *g) != (0, 0) {
                wrong.push(format!("{f} of {package} is {u}:{g}, not 0:0"));
            }
        }
    }
    match on_disk.get("var/lib/apt/lists/partial") {
        Some((u, _, _)) if *u == apt_uid => {}
        other => wrong.push(format!(
            "var/lib/apt/lists/partial is {other:?}, not owned by _apt ({apt_uid})"
        )),
    }
    println!("apt: {seen} files of {package} in the layer, all 0:0");
    assert!(seen > 0, "none of {package}'s files are in the layer");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
