#!/usr/bin/env bash
# Time to a golden-nginx disk image: kiln (sandboxed build, then a boot test in QEMU) against
# Packer's QEMU builder (bench/packer: the same steps over SSH), from the same parent disk, both
# under TCG, in one run on this machine.
#   cold                  kiln: empty step cache (the parent image present); Packer: always cold
#   last component change kiln only: the last component changed; "before boot" is everything up
#                         to the test VM starting (build, capture, disk assembly)
#   test VM boot          the last-changed build's boot and its phases (tests.bootBreakdown)
# Usage: bench/golden-nginx-disk.sh [RUNS]   (default 1: every run boots VMs under TCG)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1}"
scripts/setup --bench >&2
cargo build --release --locked -p kiln >&2
kiln="$PWD/target/release/kiln"
work="${KILN_BENCH_DIR:-/tmp/kiln-bench-disk}"
mkdir -p "$work"

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{float(\"$2\") - float(\"$1\"):.1f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
# The median of the runs that measured it ("-" is a run whose guest did not tell).
median_known() { python3 -c "import statistics,sys; v=[float(a) for a in sys.argv[1:] if a != '-']; print(f'{statistics.median(v):.1f}' if v else '-')" "$@"; }
# The test VM's boot phases of a build (tests.bootBreakdown, seconds; "-" when not measured):
# firmware+bootloader, kernel, initramfs, init to guest agent, guest agent answer, kiln's agent.
boot_phases() {
  KILN_HOME="$1" "$kiln" image get "$2" -o json | python3 -c '
import json, sys
b = json.load(sys.stdin)["tests"].get("bootBreakdown", {})
keys = ["firmwareMs", "kernelMs", "initrdMs", "userspaceMs", "agentMs", "kilnAgentMs"]
print(" ".join("%.1f" % (b[k] / 1000) if k in b else "-" for k in keys))'
}
# Seconds from a build's start to its TESTING state (everything before the boot test).
before_boot() {
  KILN_HOME="$1" "$kiln" image get "$2" -o json | python3 -c '
import json, sys
from datetime import datetime
r = json.load(sys.stdin)
t = lambda s: datetime.fromisoformat(s[:26].rstrip("Z"))
start = t(r["created"])
at = [h["at"] for h in r["history"] if h["state"] == "TESTING"][0]
print("%.1f" % (t(at) - start).total_seconds())'
}

# The shared parent: Debian bookworm with a kernel, systemd, the guest agent and an SSH server
# that lets root in with a password (Packer needs that; kiln does not), built once by kiln with
# a disk output. kiln starts from its layers, Packer from its qcow2.
base_home="$work/base-home"
parent_qcow2="$base_home/regions/local/disks/bench-vm-base-1.0.0.qcow2"
if [ ! -f "$parent_qcow2" ]; then
  echo "building the shared parent (bench-vm-base)" >&2
  rm -rf "$base_home" "$work/base-src" && mkdir -p "$work/base-src"
  cat > "$work/base-src/ssh-root.yaml" <<'EOF'
name: bench-ssh-root
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: RootPassword
        action: ExecuteBash
        inputs:
          commands:
            - echo 'root:kiln-bench' | chpasswd
      - name: SshLogin
        action: CreateFile
        inputs:
          # 99-: sshd takes the first value it reads, so golden-nginx's 90-kiln-hardening wins.
          - path: /etc/ssh/sshd_config.d/99-bench.conf
            content: "PermitRootLogin yes\nPasswordAuthentication yes\n"
EOF
  cat > "$work/base-src/recipe.yml" <<'EOF'
name: bench-vm-base
semanticVersion: 1.0.0
parentImage: bootstrap:debian/bookworm
bootstrap:
  packages: [ca-certificates, openssh-server]
components:
  - path: ssh-root.yaml
outputs: [oci, disk]
disk:
  formats: [qcow2]
imageTestsConfiguration:
  imageTestsEnabled: false
EOF
  KILN_HOME="$base_home" "$kiln" build "$work/base-src/recipe.yml" -q >&2
fi

# kiln's recipe: golden-nginx from that parent, a qcow2 disk as its output (as Packer's).
rm -rf "$work/kiln-src" && cp -r examples/golden-nginx "$work/kiln-src"
sed -i "s|^parentImage: .*|parentImage: kiln:bench-vm-base/1.0.0|; /^bootstrap:/,/^  packages:/d" "$work/kiln-src/recipe.yml"
sed -i "s|^outputs: .*|outputs: [disk]|" "$work/kiln-src/recipe.yml"

declare -A t
for i in $(seq 1 "$runs"); do
  echo "== run $i of $runs" >&2
  # kiln cold: a data directory holding only the parent (layers hard-linked, not copied).
  home="$work/kiln-home"; rm -rf "$home"; cp -al "$base_home" "$home"
  rm -rf "$home/regions" "$home/images/bench-vm-base/1.0.0/1/logs"
  rm -f "$home"/cache/tests-*.json
  s=$(now); KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >&2; e=$(now)
  t[kiln_cold]+=" $(elapsed "$s" "$e")"
  t[kiln_cold_before]+=" $(before_boot "$home" golden-nginx/1.0.0/1)"
  # kiln, the last component changed.
  last="$work/kiln-src/components/aws-hello-world.yaml"
  printf '# changed %s\n' "$(now)" >> "$last"
  s=$(now); KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >&2; e=$(now)
  t[kiln_last]+=" $(elapsed "$s" "$e")"
  t[kiln_last_before]+=" $(before_boot "$home" golden-nginx/1.0.0/2)"
  t[boot]+=" $(KILN_HOME="$home" "$kiln" image get golden-nginx/1.0.0/2 -o json | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["tests"]["bootMs"] / 1000))')"
  read -r b_fw b_kernel b_initrd b_init b_agent b_kiln <<< "$(boot_phases "$home" golden-nginx/1.0.0/2)"
  t[boot_fw]+=" $b_fw"; t[boot_kernel]+=" $b_kernel"; t[boot_initrd]+=" $b_initrd"
  t[boot_init]+=" $b_init"; t[boot_agent]+=" $b_agent"; t[boot_kiln]+=" $b_kiln"
  # Packer, cold (it has no cache).
  out=$(bench/packer/run.sh "$parent_qcow2" "$work/packer-out" | tail -1)
  t[packer_cold]+=" ${out#packer_seconds=}"
done

kc=$(median ${t[kiln_cold]}); pc=$(median ${t[packer_cold]})
cat <<EOF
| golden-nginx, qcow2 disk, TCG ($runs run(s), median) | kiln | Packer (QEMU builder) |
|---|---|---|
| cold: parent to finished disk | ${kc} s (boot-tested) | ${pc} s (not tested) |
| cold: everything before the boot test | $(median ${t[kiln_cold_before]}) s | - |
| last component changed: total | $(median ${t[kiln_last]}) s | ${pc} s (no cache) |
| last component changed: everything before the boot test | $(median ${t[kiln_last_before]}) s | - |
| test VM boot (firmware to guest agent) | $(median ${t[boot]}) s | - |
| - firmware + bootloader (QEMU start to the kernel's clock) | $(median_known ${t[boot_fw]}) s | - |
| - kernel (to the initramfs's /init) | $(median_known ${t[boot_kernel]}) s | - |
| - initramfs (to systemd on the real root) | $(median_known ${t[boot_initrd]}) s | - |
| - init to the guest agent's service | $(median_known ${t[boot_init]}) s | - |
| - guest agent's first answer | $(median_known ${t[boot_agent]}) s | - |
| after the boot: kiln's agent brought in | $(median_known ${t[boot_kiln]}) s | - |

kiln is $(python3 -c "print(f'{$pc / $kc:.2f}')")x faster than Packer cold.
EOF
echo
echo "raw runs (s): kiln cold:${t[kiln_cold]}; before boot:${t[kiln_cold_before]}; last changed:${t[kiln_last]}; before boot:${t[kiln_last_before]}; boot:${t[boot]}; packer:${t[packer_cold]}"
echo "boot phases (s): firmware:${t[boot_fw]}; kernel:${t[boot_kernel]}; initramfs:${t[boot_initrd]}; init to agent:${t[boot_init]}; agent:${t[boot_agent]}; kiln's agent:${t[boot_kiln]}"
