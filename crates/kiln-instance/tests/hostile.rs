//! Hostile components against the confined sandbox (issue 15): each probe is a real attempt at
//! the host (a kernel setting, a device, a capability, the host's network, a process of the
//! host or of kiln, a process left behind) that must fail in a confined sandbox. So that every
//! probe can fail, each one is first shown to succeed against a control where nothing stops
//! it: an unconfined sandbox on the host's network (the sandbox as it was before it was
//! confined) or, where even that one stopped the attack (its PID namespace), the host itself.
//! Probes that succeed in a control leave the host as they found it: a setting is written with
//! its current value, a cgroup made is removed, a device is only read, a tracee is let go.
//!
//! A probe prints `PROBE-OK ...` when the attack worked, `PROBE-REFUSED ...` when it did not
//! (which also shows it ran to its end), and `PROBE-ABSENT ...` when the host's kernel has no
//! such target at all (a kernel without magic SysRq has no `/proc/sysrq-trigger`).
//! Needs root, pasta and nftables. `KILN_PROBE_VERBOSE=1` (with `--nocapture`) prints every
//! probe's whole output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{dirs, Dirs};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_instance::host::HostInstance;
use kiln_instance::sandbox::{Confinement, Network, Sandbox, SandboxSpec};
use kiln_instance::{Discard, ExecRequest, Instance};

/// Where a probe is shown to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// An unconfined sandbox on the host's network: the sandbox before it was confined.
    Unconfined,
    /// The host itself, for what even the old sandbox stopped.
    Host,
}

/// One hostile component.
struct Probe {
    name: &'static str,
    control: Control,
    /// A bash script; its parameters come in the environment.
    script: &'static str,
    env: Vec<(String, String)>,
}

impl Probe {
    fn new(name: &'static str, control: Control, script: &'static str) -> Probe {
        Probe {
            name,
            control,
            script,
            env: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<String>) -> Probe {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

/// Shell helpers every probe starts with.
const PRELUDE: &str = r#"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Writes the current value of the file $1 back into it.
write_back() {
  local v err
  if ! v=$(cat "$1" 2>&1); then echo "PROBE-REFUSED reading $1: $v"; return; fi
  if err=$( { printf '%s\n' "$v" > "$1"; } 2>&1 ); then
    echo "PROBE-OK wrote the current value '$v' back to $1"
  else
    echo "PROBE-REFUSED writing $1: $err"
  fi
}
"#;

/// Python helpers for raw system calls.
const PY_SYSCALLS: &str = r#"
import ctypes, errno, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
ARCH = os.uname().machine
NR = {
    "x86_64": {"ptrace": 101, "init_module": 175, "finit_module": 313, "clone": 56, "clone3": 435},
    "aarch64": {"ptrace": 117, "init_module": 105, "finit_module": 273, "clone": 220, "clone3": 435},
}[ARCH]
def call(name, *args):
    """(return value, errno name) of a raw system call."""
    ctypes.set_errno(0)
    rc = libc.syscall(NR[name], *args)
    e = ctypes.get_errno() if rc == -1 else 0
    return rc, errno.errorcode.get(e, str(e)) if e else "no error"
"#;

const SYSCTL: &str = r#"write_back /proc/sys/kernel/printk_ratelimit"#;

const CORE_PATTERN: &str = r#"write_back /proc/sys/kernel/core_pattern"#;

const SYSRQ_TRIGGER: &str = r#"
f=/proc/sysrq-trigger
if [ ! -e "$f" ]; then echo "PROBE-ABSENT $f: this kernel has no magic SysRq"; exit 0; fi
if test -w "$f"; then echo "test -w $f: writable"; else echo "test -w $f: not writable"; fi
python3 - "$f" <<'PY'
import os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY)  # opened for writing, never written
    os.close(fd)
    print("PROBE-OK opened", sys.argv[1], "for writing (nothing written)")
except OSError as e:
    print("PROBE-REFUSED opening", sys.argv[1], "for writing:", e)
PY
"#;

const RELEASE_AGENT: &str = r#"
found=
for f in /sys/fs/cgroup/release_agent /sys/fs/cgroup/*/release_agent; do
  [ -e "$f" ] || continue
  found=1
  write_back "$f"
done
if [ -z "$found" ]; then
  echo "no release_agent under /sys/fs/cgroup ($(ls /sys/fs/cgroup | tr '\n' ' ')); mounting the memory hierarchy"
  mkdir -p /run/kiln/probe-cg
  if err=$(mount -t cgroup -o memory cgroup /run/kiln/probe-cg 2>&1); then
    write_back /run/kiln/probe-cg/release_agent
    umount /run/kiln/probe-cg
  else
    echo "PROBE-REFUSED mount -t cgroup -o memory: $err"
  fi
fi
"#;

const HOST_CGROUP: &str = r#"
name=kt-probe-$PROBE_ID
made=
while read -r mnt; do
  if err=$(mkdir "$mnt/$name" 2>&1); then
    if [ -e "$mnt/$name/cgroup.procs" ]; then echo "PROBE-OK created the cgroup $mnt/$name"; made=1; fi
    rmdir "$mnt/$name"
  else
    echo "$err"
  fi
done < <(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^cgroup2?$/) print $5; break } }' /proc/self/mountinfo)
if [ -z "$made" ]; then
  mkdir -p /run/kiln/probe-cg2
  if err=$(mount -t cgroup2 none /run/kiln/probe-cg2 2>&1); then
    if mkdir "/run/kiln/probe-cg2/$name" 2>/dev/null; then
      echo "PROBE-OK created the cgroup $name in a cgroup2 mount of its own"
      rmdir "/run/kiln/probe-cg2/$name"
    else
      echo "PROBE-REFUSED mkdir in a cgroup2 mount of its own"
    fi
    umount /run/kiln/probe-cg2
  else
    echo "PROBE-REFUSED no cgroup hierarchy mounted, and mount -t cgroup2: $err"
  fi
fi
"#;

const KERNEL_MODULE: &str = r#"
python3 - <<'PY'
__SYSCALLS__
# An image that is no module: a kernel that lets the call through answers ENOEXEC (or EINVAL,
# EFAULT; ENOSYS when it has no module loader at all); only EPERM is a refusal.
image = ctypes.create_string_buffer(b"\x7fELF not a kernel module" + b"\0" * 64)
junk = "/run/kiln/not-a-module.ko"
with open(junk, "wb") as f:
    f.write(image.raw)
fd = os.open(junk, os.O_RDONLY)
results = [
    ("init_module", call("init_module", image, ctypes.c_ulong(len(image.raw)), ctypes.c_char_p(b""))),
    ("finit_module", call("finit_module", fd, ctypes.c_char_p(b""), 0)),
]
os.close(fd)
os.unlink(junk)
for name, (rc, err) in results:
    if err == "EPERM":
        print("PROBE-REFUSED", name, "EPERM")
    else:
        why = " (the kernel has no module loader, but nothing refused the call)" if err == "ENOSYS" else ""
        print("PROBE-OK", name, "was not refused:", err + why)
PY
"#;

const BLOCK_DEVICE: &str = r#"
python3 - <<'PY'
__SYSCALLS__
marker = os.environ["PROBE_LOOP_MARKER"].encode()
targets = []
if os.environ.get("PROBE_DISK"):
    name, dev = os.environ["PROBE_DISK"].split()
    targets.append((name, dev, "the host's root disk", None))
name, dev = os.environ["PROBE_LOOP"].split()
targets.append((name, dev, "a loop device of the host", marker))

def read_sector(path, what, expect):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        print("open", path, e)
        return False
    try:
        data = os.pread(fd, 512, 0)
    except OSError as e:
        print("read", path, e)
        return False
    finally:
        os.close(fd)
    if len(data) == 512 and (expect is None or data.startswith(expect)):
        print("PROBE-OK read the first sector of", what, "through", path)
        return True
    print("read", len(data), "bytes of", path, "but not the expected sector")
    return False

done = False
for name, dev, what, expect in targets:
    done |= read_sector("/dev/" + name, what, expect)
    major, minor = map(int, dev.split(":"))
    for d in ["/tmp", "/dev", "/dev/shm", "/run/kiln"]:
        node = "%s/kt-probe-%s" % (d, name)
        try:
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        except OSError as e:
            print("mknod", node, "b", major, minor, e)
            continue
        try:
            done |= read_sector(node, what, expect)
        finally:
            os.unlink(node)
if not done:
    print("PROBE-REFUSED no block device of the host could be read")
PY
"#;

/// Opens a character device by its path and by a node made for its number, and reads it.
const CHAR_DEVICE: &str = r#"
python3 - <<'PY'
__SYSCALLS__
path, dev = os.environ["PROBE_DEV_PATH"], os.environ["PROBE_DEV_NUM"]
major, minor = map(int, dev.split(":"))

def attempt(p):
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            print("PROBE-OK opening", p, "got past every permission check: the driver answered ENXIO (this kernel has no such device)")
            return True
        print("open", p, e)
        return False
    try:
        data = os.read(fd, 4096)
    except OSError as e:
        print("read", p, e)
        return False
    finally:
        os.close(fd)
    if data:
        print("PROBE-OK read", len(data), "bytes of", p, ":", repr(data[:60]))
        return True
    print(p, "gave nothing")
    return False

done = attempt(path)
for d in ["/tmp", "/dev", "/dev/shm", "/run/kiln"]:
    node = "%s/kt-probe-c%d-%d" % (d, major, minor)
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    except OSError as e:
        print("mknod", node, "c", major, minor, e)
        continue
    try:
        done |= attempt(node)
    finally:
        os.unlink(node)
if not done:
    print("PROBE-REFUSED", path, "(%s) could not be read" % dev)
PY
"#;

const MASKED_PROC: &str = r#"
for f in /proc/kcore /proc/keys /proc/timer_list /proc/interrupts /proc/sched_debug /proc/latency_stats; do
  if [ ! -e "$f" ]; then echo "$f: not on this kernel"; continue; fi
  n=$(head -c 4096 "$f" 2>/dev/null | wc -c)
  if [ "$n" -gt 0 ]; then echo "PROBE-OK read $n bytes of $f"; else echo "$f: nothing to read ($(stat -c '%F %t:%T' "$f"))"; fi
done | tee /run/kiln/masked.out
grep -q PROBE-OK /run/kiln/masked.out || echo "PROBE-REFUSED every masked /proc file is empty"
"#;

const CAPABILITIES: &str = r#"
python3 - <<'PY'
import re
DOCKER = 0xA80425FB
NAMES = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
status = open("/proc/self/status").read()
extra = []
for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"]:
    v = int(re.search(key + r":\s*([0-9a-f]+)", status).group(1), 16)
    print(key, "%016x" % v)
    beyond = v & ~DOCKER
    if beyond:
        caps = [NAMES[b] if b < len(NAMES) else str(b) for b in range(64) if beyond >> b & 1]
        extra.append("%s holds %s" % (key, ",".join(caps)))
if extra:
    print("PROBE-OK beyond Docker's set (a80425fb):", "; ".join(extra))
else:
    print("PROBE-REFUSED every capability set is within Docker's a80425fb")
PY
"#;

const HOST_ROOT: &str = r#"
echo "uid_map: $(cat /proc/self/uid_map | tr -s ' ')"
echo "gid_map: $(cat /proc/self/gid_map | tr -s ' ')"
own=$(readlink /proc/self/ns/user)
echo "user namespace: $own (the host's: $PROBE_HOST_USERNS)"
hit=
for m in uid_map gid_map; do
  if awk '$1 <= 0 && 0 < $1 + $3 && $2 - $1 == 0 { f = 1 } END { exit !f }' /proc/self/$m; then
    echo "PROBE-OK root inside is the host's id 0 ($m)"; hit=1
  fi
done
if [ "$own" = "$PROBE_HOST_USERNS" ]; then
  echo "PROBE-OK the capabilities held are the host's: same user namespace"; hit=1
fi
[ -n "$hit" ] || echo "PROBE-REFUSED root inside is $(awk '$1 == 0 { print $2 }' /proc/self/uid_map) outside, in a user namespace of its own"
"#;

const MOUNT: &str = r#"
mkdir -p /run/kiln/probe-mnt
if err=$(mount -t tmpfs probe /run/kiln/probe-mnt 2>&1); then
  echo "PROBE-OK mounted a tmpfs"
  umount /run/kiln/probe-mnt
else
  echo "PROBE-REFUSED mount -t tmpfs: $err"
fi
"#;

const NAMESPACES: &str = r#"
hit=
for flags in "-U" "-U -r" "-m" "-n" "-i" "-u" "-C" "-p -f"; do
  if err=$(unshare $flags true 2>&1); then echo "PROBE-OK unshare $flags"; hit=1; else echo "unshare $flags: $err"; fi
done
python3 - <<'PY' | tee /run/kiln/clone.out
__SYSCALLS__
import struct
SIGCHLD = 17
for name, flag in [("CLONE_NEWUSER", 0x10000000), ("CLONE_NEWNS", 0x00020000), ("CLONE_NEWNET", 0x40000000)]:
    rc, err = call("clone", ctypes.c_ulong(flag | SIGCHLD), 0, 0, 0, 0)
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
        print("PROBE-OK clone(%s)" % name)
    else:
        print("clone(%s): %s" % (name, err))
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls
    args = ctypes.create_string_buffer(struct.pack("8Q", flag, 0, 0, 0, SIGCHLD, 0, 0, 0))
    rc, err = call("clone3", args, ctypes.c_size_t(64))
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
        print("PROBE-OK clone3(%s)" % name)
    else:
        print("clone3(%s): %s" % (name, err))
PY
grep -q PROBE-OK /run/kiln/clone.out && hit=1
[ -n "$hit" ] || echo "PROBE-REFUSED no new namespace"
"#;

const HOST_INTERFACE: &str = r#"
hit=
if [ -e "/sys/class/net/$PROBE_IFACE" ]; then echo "PROBE-OK /sys/class/net/$PROBE_IFACE is there"; hit=1; fi
if ip -o link show 2>&1 | grep -q ": $PROBE_IFACE[:@]"; then echo "PROBE-OK ip link shows $PROBE_IFACE"; hit=1; fi
if grep -q "^ *$PROBE_IFACE:" /proc/net/dev; then echo "PROBE-OK /proc/net/dev shows $PROBE_IFACE"; hit=1; fi
[ -n "$hit" ] || echo "PROBE-REFUSED $PROBE_IFACE is not visible; interfaces: $(ls /sys/class/net | tr '\n' ' ')"
"#;

const CONNECT: &str = r#"
python3 - <<'PY'
import os, socket
host, port, token = os.environ["PROBE_ADDR"], int(os.environ["PROBE_PORT"]), os.environ["PROBE_TOKEN"]
try:
    s = socket.create_connection((host, port), timeout=3)
    s.settimeout(3)
    data = s.recv(200).decode(errors="replace")
    if token in data:
        print("PROBE-OK connected to the host's listener on", host, port)
    else:
        print("PROBE-REFUSED connected to", host, port, "but no token:", repr(data))
except OSError as e:
    print("PROBE-REFUSED", host, port, e)
PY
"#;

const PTRACE_HOST: &str = r#"
python3 - <<'PY'
__SYSCALLS__
PTRACE_SEIZE = 0x4206
marker = os.environ["PROBE_MARKER"].encode()

def argv0(pid):
    try:
        return open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[0]
    except OSError:
        return None

found = [int(p) for p in os.listdir("/proc") if p.isdigit() and argv0(int(p)) == marker]
if found:
    pid = found[0]
    print("the host's sleep is visible as pid", pid)
else:
    pid = int(os.environ["PROBE_PID"])
    print("no process", marker.decode(), "is visible; trying the host's pid", pid)
rc, err = call("ptrace", PTRACE_SEIZE, pid, 0, 0)
if rc == 0 and argv0(pid) == marker:
    print("PROBE-OK attached (PTRACE_SEIZE) to the host's sleep, pid", pid)
elif rc == 0:
    print("PROBE-REFUSED pid", pid, "here is another process:", argv0(pid))
else:
    print("PROBE-REFUSED PTRACE_SEIZE", pid, err)
# Exiting lets a tracee go.
PY
"#;

const PTRACE_KILN: &str = r#"
python3 - <<'PY'
__SYSCALLS__
PTRACE_SEIZE = 0x4206
hit = False
for pid in (1, 2):
    try:
        cmd = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[0].decode()
    except OSError as e:
        cmd = str(e)
    rc, err = call("ptrace", PTRACE_SEIZE, pid, 0, 0)
    if rc == 0:
        print("PROBE-OK attached (PTRACE_SEIZE) to pid", pid, cmd)
        hit = True
    else:
        print("PTRACE_SEIZE", pid, cmd, err)
if not hit:
    print("PROBE-REFUSED neither pid 1 nor pid 2 of the sandbox can be traced")
# Exiting lets a tracee go.
PY
"#;

const LEAVE_RUNNING: &str = r#"
(setsid nohup bash -c "exec -a $PROBE_MARKER sleep 1000" >/dev/null 2>&1 &)
sleep 0.3
echo "started a daemon named $PROBE_MARKER"
"#;

// ---------------------------------------------------------------------------------------------

async fn start(d: &Dirs, id: &str, confinement: Confinement) -> Sandbox {
    let b = d.base.join(id);
    let mut spec = SandboxSpec::new(
        id,
        vec![PathBuf::from("/")],
        b.join("upper"),
        b.join("work"),
        b.join("root"),
    );
    if confinement == Confinement::Unconfined {
        spec.confinement = Confinement::Unconfined;
        spec.network = Network::Host;
    }
    common::start(spec).await
}

/// A confined sandbox and the controls.
struct Lab {
    confined: Sandbox,
    unconfined: Sandbox,
    host: HostInstance,
    _dirs: Dirs,
}

impl Lab {
    async fn new(id: &str) -> Lab {
        let d = dirs();
        let (c, u) = (format!("{id}-c"), format!("{id}-u"));
        let (confined, unconfined) = tokio::join!(
            start(&d, &c, Confinement::Confined),
            start(&d, &u, Confinement::Unconfined)
        );
        let host = HostInstance::new(d.base.clone());
        Lab {
            confined,
            unconfined,
            host,
            _dirs: d,
        }
    }

    async fn stop(self) {
        self.confined.stop().await.unwrap();
        self.unconfined.stop().await.unwrap();
    }

    /// Runs each probe in its control and in the confined sandbox; panics naming every probe
    /// that did not work in its control or was not refused when confined.
    async fn check(&self, probes: &[Probe]) {
        let mut failures = Vec::new();
        for p in probes {
            let control: &dyn Instance = match p.control {
                Control::Unconfined => &self.unconfined,
                Control::Host => &self.host,
            };
            let c = run(control, p).await;
            let s = run(&self.confined, p).await;
            let c_verdict = verdict(&c);
            let s_verdict = verdict(&s);
            println!(
                "probe {}: control ({:?}) {c_verdict}, confined {s_verdict}\n  control:  {}\n  confined: {}",
                p.name,
                p.control,
                first(&c, "PROBE-"),
                first(&s, "PROBE-")
            );
            if std::env::var_os("KILN_PROBE_VERBOSE").is_some() {
                println!(
                    "--- {} in its control:\n{c}\n--- {} confined:\n{s}",
                    p.name, p.name
                );
            }
            let control_ok = c_verdict == "OK" || c_verdict == "ABSENT";
            let confined_ok =
                s_verdict == "REFUSED" || (s_verdict == "ABSENT" && c_verdict == "ABSENT");
            if !control_ok {
                failures.push(format!(
                    "probe `{}` did not work in its control ({:?}), so it proves nothing:\n{c}",
                    p.name, p.control
                ));
            }
            if !confined_ok {
                failures.push(format!(
                    "probe `{}` was not refused in the confined sandbox:\n{s}",
                    p.name
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}

/// The first line of `out` that starts with `prefix`.
fn first<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(prefix))
        .unwrap_or("")
}

/// The script of a probe, its helpers included.
fn script(p: &Probe) -> String {
    format!(
        "{PRELUDE}\n{}",
        p.script.replace("__SYSCALLS__", PY_SYSCALLS)
    )
}

/// Runs a probe; its whole output (status, stdout, stderr).
async fn run(instance: &dyn Instance, p: &Probe) -> String {
    let req = ExecRequest {
        program: "bash".into(),
        args: vec!["-c".into(), script(p)],
        env: p.env.clone(),
        timeout: Some(Duration::from_secs(60)),
        ..ExecRequest::default()
    };
    match instance.exec(&req, &mut Discard).await {
        Ok(out) => format!(
            "  status: {:?}\n  stdout:\n{}\n  stderr:\n{}",
            out.status,
            indent(&out.stdout),
            indent(&out.stderr)
        ),
        Err(e) => format!("  could not run: {e}"),
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// OK when the attack worked, REFUSED when it ran and was refused, ABSENT when the kernel has
/// no such target, NONE when the probe did not get to say.
fn verdict(out: &str) -> &'static str {
    let has = |m: &str| out.lines().any(|l| l.trim_start().starts_with(m));
    if has("PROBE-OK") {
        "OK"
    } else if has("PROBE-REFUSED") {
        "REFUSED"
    } else if has("PROBE-ABSENT") {
        "ABSENT"
    } else {
        "NONE"
    }
}

/// A name no other run shares.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(cmd: &str) -> String {
    let out = Command::new("bash").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kernel_settings_cannot_be_changed() {
    let lab = Lab::new("hk").await;
    let mut probes = vec![
        Probe::new("sysctl", Control::Unconfined, SYSCTL),
        Probe::new("core_pattern", Control::Unconfined, CORE_PATTERN),
        Probe::new("sysrq-trigger", Control::Unconfined, SYSRQ_TRIGGER),
        Probe::new("host-cgroup", Control::Unconfined, HOST_CGROUP).with("PROBE_ID", unique("")),
        Probe::new("kernel-module", Control::Unconfined, KERNEL_MODULE),
    ];
    // release_agent is cgroup v1's; a host without a v1 hierarchy has none to write.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mounts.lines().any(|l| l.contains(" - cgroup ")) {
        probes.push(Probe::new(
            "release_agent",
            Control::Unconfined,
            RELEASE_AGENT,
        ));
    } else {
        println!("probe release_agent: skipped, the host has no cgroup v1 hierarchy");
    }
    lab.check(&probes).await;
    lab.stop().await;
}

/// A loop device over a file that starts with a marker (detached when dropped).
struct Loop {
    dev: String,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The host's root block device, as `name major:minor`, when `/` is on one.
fn root_disk() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == "/")?
        .get(2)?
        .to_string();
    let link = std::fs::read_link(format!("/sys/dev/block/{dev}")).ok()?;
    let name = link.file_name()?.to_str()?.to_string();
    Some(format!("{name} {dev}"))
}

#[tokio::test]
async fn devices_and_kernel_memory_are_out_of_reach() {
    let lab = Lab::new("hd").await;
    // A block device of the host with known contents: on some hosts (VMs whose root disk
    // refuses even root) the root disk cannot be read at all, and a probe must be able to
    // succeed in its control.
    let marker = unique("KILN-LOOP-MARKER-");
    let img = lab._dirs.base.join("loop.img");
    {
        let mut f = std::fs::File::create(&img).unwrap();
        f.write_all(marker.as_bytes()).unwrap();
        f.set_len(1 << 20).unwrap();
    }
    let dev = sh(&format!("losetup -f --show {}", img.display()));
    let lo = Loop { dev: dev.clone() };
    let name = Path::new(&dev).file_name().unwrap().to_str().unwrap();
    let num = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    let disk = root_disk().unwrap_or_default();
    println!(
        "host's root disk: {disk:?}; loop device {name} {}",
        num.trim()
    );

    let probes = vec![
        Probe::new("block-device", Control::Unconfined, BLOCK_DEVICE)
            .with("PROBE_DISK", disk)
            .with("PROBE_LOOP", format!("{name} {}", num.trim()))
            .with("PROBE_LOOP_MARKER", marker),
        Probe::new("dev-mem", Control::Unconfined, CHAR_DEVICE)
            .with("PROBE_DEV_PATH", "/dev/mem")
            .with("PROBE_DEV_NUM", "1:1"),
        Probe::new("dev-kmsg", Control::Unconfined, CHAR_DEVICE)
            .with("PROBE_DEV_PATH", "/dev/kmsg")
            .with("PROBE_DEV_NUM", "1:11"),
        Probe::new("masked-proc", Control::Unconfined, MASKED_PROC),
    ];
    lab.check(&probes).await;
    lab.stop().await;
    drop(lo);
}

#[tokio::test]
async fn no_privilege_beyond_dockers() {
    let lab = Lab::new("hp").await;
    let host_userns = std::fs::read_link("/proc/self/ns/user")
        .unwrap()
        .display()
        .to_string();
    let probes = vec![
        Probe::new("capabilities", Control::Unconfined, CAPABILITIES),
        Probe::new("host-root", Control::Unconfined, HOST_ROOT)
            .with("PROBE_HOST_USERNS", host_userns),
        Probe::new("mount", Control::Unconfined, MOUNT),
        Probe::new("namespaces", Control::Unconfined, NAMESPACES),
    ];
    lab.check(&probes).await;
    lab.stop().await;
}

/// A veth pair on the host (deleted when dropped).
struct Veth {
    name: String,
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// A listener on `addr` that writes `token` to whoever connects, for the life of the test.
fn listen(addr: SocketAddr, token: &str) -> Option<SocketAddr> {
    let l = TcpListener::bind(addr).ok()?;
    let local = l.local_addr().ok()?;
    let token = token.to_string();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(token.as_bytes());
        }
    });
    Some(local)
}

/// The host's own address on the interface of its default route.
fn primary_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("8.8.8.8:53").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn the_hosts_network_is_out_of_reach() {
    let lab = Lab::new("hn").await;
    let pid = std::process::id();
    let iface = format!("kt{}a", pid % 100_000);
    let peer = format!("kt{}b", pid % 100_000);
    let ip = Ipv4Addr::new(10, 213, ((pid >> 8) & 0xff) as u8, ((pid & 0xfe) | 1) as u8);
    // A pair a killed run left behind goes first.
    let _ = Command::new("ip").args(["link", "del", &iface]).output();
    sh(&format!(
        "ip link add {iface} type veth peer name {peer} && ip addr add {ip}/32 dev {iface} && ip link set {iface} up && ip link set {peer} up"
    ));
    let veth = Veth {
        name: iface.clone(),
    };
    let token = unique("KILN-HOST-TOKEN-");
    let mut targets = vec![
        ("host-loopback", SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        ("host-veth-address", SocketAddr::from((ip, 0))),
        (
            "host-loopback-v6",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        ),
    ];
    match primary_address() {
        Some(a) => targets.push(("host-primary-address", SocketAddr::new(a, 0))),
        None => println!("probe host-primary-address: skipped, no default route"),
    }
    let mut probes = vec![
        Probe::new("host-interface", Control::Unconfined, HOST_INTERFACE)
            .with("PROBE_IFACE", iface.clone()),
    ];
    for (name, addr) in targets {
        let Some(bound) = listen(addr, &token) else {
            println!("probe {name}: skipped, cannot listen on {addr}");
            continue;
        };
        probes.push(
            Probe::new(name, Control::Unconfined, CONNECT)
                .with("PROBE_ADDR", bound.ip().to_string())
                .with("PROBE_PORT", bound.port().to_string())
                .with("PROBE_TOKEN", token.clone()),
        );
    }
    lab.check(&probes).await;
    lab.stop().await;
    drop(veth);
}

/// A process of the host (killed when dropped).
struct HostProcess(std::process::Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn no_process_of_the_host_or_of_kiln_can_be_traced() {
    use std::os::unix::process::CommandExt;
    let lab = Lab::new("ht").await;
    let marker = unique("kiln-probe-sleep-");
    let sleep = HostProcess(
        Command::new("sleep")
            .arg0(&marker)
            .arg("1000")
            .spawn()
            .unwrap(),
    );
    let probes = vec![
        Probe::new("ptrace-host-process", Control::Host, PTRACE_HOST)
            .with("PROBE_MARKER", marker)
            .with("PROBE_PID", sleep.0.id().to_string()),
        Probe::new("ptrace-kiln-pid-1-2", Control::Unconfined, PTRACE_KILN),
    ];
    lab.check(&probes).await;
    lab.stop().await;
    drop(sleep);
}

/// Host processes whose `argv[0]` is `marker`.
fn named(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).next() == Some(marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Starts a daemon (double fork, new session) in `instance`, stops it, and says whether the
/// daemon outlived it.
async fn daemon_outlives(instance: &dyn Instance, marker: &str) -> Result<bool, String> {
    let p = Probe::new("process-left-running", Control::Host, LEAVE_RUNNING)
        .with("PROBE_MARKER", marker);
    let out = run(instance, &p).await;
    let before = named(marker);
    if before.is_empty() {
        return Err(format!(
            "the daemon {marker} never ran, so this proves nothing:\n{out}"
        ));
    }
    instance.stop().await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<i32> = named(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !kiln_instance::process::parse_stat(&s).is_some_and(|p| p.zombie))
                .unwrap_or(false)
        })
        .collect();
    for pid in &after {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(!after.is_empty())
}

#[tokio::test]
async fn no_process_outlives_the_sandbox() {
    let d = dirs();
    let host = HostInstance::new(d.base.clone());
    let marker = unique("kiln-probe-daemon-");
    let control = daemon_outlives(&host, &format!("{marker}-host")).await;
    let sb = start(&d, "hl", Confinement::Confined).await;
    let confined = daemon_outlives(&sb, &format!("{marker}-sandbox")).await;
    let say = |r: &Result<bool, String>, outlived: &str, ended: &str| match r {
        Ok(true) => format!("OK, {outlived}"),
        Ok(false) => format!("REFUSED, {ended}"),
        Err(e) => format!("NONE, {e}"),
    };
    println!(
        "probe process-left-running: control (Host) {}; confined {}",
        say(
            &control,
            "the daemon outlived the exec",
            "the daemon died with the exec"
        ),
        say(
            &confined,
            "the daemon outlived the sandbox",
            "the daemon ended with the sandbox"
        )
    );
    assert_eq!(
        control,
        Ok(true),
        "probe `process-left-running`: the daemon must outlive its control (the host), or the probe proves nothing"
    );
    assert_eq!(
        confined,
        Ok(false),
        "probe `process-left-running`: a daemon outlived the confined sandbox"
    );
}
