#!/usr/bin/env bash
# Bytes sent per region when an image with a disk is updated: golden-nginx (a container image
# and a disk, whose registry regions get the disk as an OCI 1.1 artifact of content-defined
# chunks) pushed as 1.0.0, then updated by one setting (1.0.1) and by one package (1.0.2), to
#   one registry   three regions in one registry (namespaces east, west, north): blobs the
#                  first region has are mounted by the others
#   separate       three regions in three registries (each gets everything once)
# against shipping the whole disk: the raw disk compressed with `zstd -3`, and its qcow2 (as
# kiln writes it, and compressed by `qemu-img convert -c`) once per version per region, which
# is what shipping a VM image whole (Tart, KubeVirt containerDisks) costs. `kiln disk pull` of
# each update over the previous version's raw file says what a consumer fetches.
#
# The two scenarios are two image names (golden-nginx-one, golden-nginx-sep) in one KILN_HOME:
# they share the step cache (so the second builds fast and both have the same layers and disk)
# but not the chunk index, which is kept per image name: neither scenario's pushes help the
# other's. The boot test is off (imageTestsEnabled: false): it does not change what is sent.
# The registries (docker-registry, no auth) run on free 127.0.0.1 ports for the run only.
#
# Usage: bench/distribution.sh [--no-package]
#   --no-package  skip the one-package update (it needs Debian's mirror, as the build does)
#   KILN_BENCH_DIR  work folder (default /tmp/kiln-bench-dist; its home and registries are
#                   made anew every run)
# Needs docker-registry, zstd, qemu-img, python3, curl (scripts/setup --test).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
package=true
for arg in "$@"; do
  case "$arg" in
    --no-package) package=false ;;
    *) echo "usage: bench/distribution.sh [--no-package]" >&2; exit 2 ;;
  esac
done
for tool in docker-registry zstd qemu-img python3 curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup --test" >&2; exit 1; }
done
cargo build --release --locked -p kiln >&2
kiln="${CARGO_TARGET_DIR:-$repo/target}/release/kiln"
work="${KILN_BENCH_DIR:-/tmp/kiln-bench-dist}"
report="$repo/bench/distribution/report.py"
home="$work/home"
data="$work/results"
rm -rf "$home" "$work/registries" "$work/src" "$work/pull" "$data"
mkdir -p "$home" "$work/registries" "$work/pull" "$data"
log="$work/bench.log"
: > "$log"
say() { echo "== $*" >&2; echo "== $*" >> "$log"; }

# Four registries: one for the three regions of the first scenario, one per region of the second.
pids=()
stop_registries() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_registries EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A port
for r in one sep1 sep2 sep3; do
  d="$work/registries/$r"; mkdir -p "$d/data"
  port[$r]=$(free_port)
  cat > "$d/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port[$r]}
  secret: kiln-bench
EOF
  docker-registry serve "$d/config.yml" > "$d/log" 2>&1 &
  pids+=($!)
done
for r in one sep1 sep2 sep3; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:${port[$r]}/v2/" >/dev/null && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:${port[$r]}/v2/" >/dev/null || { cat "$work/registries/$r/log" >&2; exit 1; }
done
cat > "$home/config.yaml" <<EOF
regions:
  east:  {registry: "127.0.0.1:${port[one]}", namespace: east}
  west:  {registry: "127.0.0.1:${port[one]}", namespace: west}
  north: {registry: "127.0.0.1:${port[one]}", namespace: north}
  sep-east:  {registry: "127.0.0.1:${port[sep1]}", namespace: golden}
  sep-west:  {registry: "127.0.0.1:${port[sep2]}", namespace: golden}
  sep-north: {registry: "127.0.0.1:${port[sep3]}", namespace: golden}
EOF
export KILN_HOME="$home"
unset KILN_CONFIG

# The recipes: golden-nginx, no boot test, a qcow2 disk (kiln's default format) and the OCI
# image, one name per scenario.
src="$work/src"
cp -r examples/golden-nginx "$src"
python3 - "$src" <<'EOF'
import re, sys
src = sys.argv[1]
base = open(f"{src}/recipe.yml").read()
base = base.replace("imageTestsEnabled: true", "imageTestsEnabled: false")
base = re.sub(r"(?ms)^distributions:.*", "", base).rstrip() + "\ndisk:\n  formats: [qcow2]\n"
for name, regions in [("one", ["east", "west", "north"]),
                      ("sep", ["sep-east", "sep-west", "sep-north"])]:
    text = re.sub(r"(?m)^name: golden-nginx$", f"name: golden-nginx-{name}", base)
    text += "distributions:\n" + "".join(f"  - region: {r}\n" for r in regions)
    open(f"{src}/recipe-{name}.yml", "w").write(text)
EOF
grep -q "MaxAuthTries 3" "$src/components/hardening.yaml"

version=1.0.0
# bytes sent per region of a build, and the registry's blob store (sum of blob sizes).
record() {
  local scenario=$1 v=$2 what=$3
  "$kiln" image get "golden-nginx-$scenario/$v/1" -o json > "$data/$scenario-$v.json"
  local regs=(one); [ "$scenario" = sep ] && regs=(sep1 sep2 sep3)
  for r in "${regs[@]}"; do
    echo "$scenario $v $r $(find "$work/registries/$r/data" -path '*/blobs/*' -name data -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
  done >> "$data/stores.txt"
  echo "$v $what" >> "$data/versions.txt"
}
build() {
  local scenario=$1 v=$2
  say "building golden-nginx-$scenario $v"
  sed -i "s/^semanticVersion: .*/semanticVersion: $v/" "$src/recipe-$scenario.yml"
  local s; s=$(date +%s)
  "$kiln" build "$src/recipe-$scenario.yml" -q >> "$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
  echo "   $(( $(date +%s) - s )) s" >&2
}
# `kiln disk pull` of a version over the previous one's raw file: bytes fetched (kiln's count,
# and what the registry's access log says it wrote for the pull's GETs).
pull() {
  local scenario=$1 v=$2 base=${3:-}
  local r ref out="$work/pull/$scenario-$v.raw"
  case $scenario in one) r=one ref="127.0.0.1:${port[one]}/east/golden-nginx-one/disk:$v" ;;
                    sep) r=sep1 ref="127.0.0.1:${port[sep1]}/golden/golden-nginx-sep/disk:$v" ;; esac
  local rlog="$work/registries/$r/log" before
  before=$(wc -l < "$rlog")
  say "kiln disk pull $ref${base:+ --base $base}"
  "$kiln" disk pull "docker://$ref" "$out" ${base:+--base "$work/pull/$scenario-$base.raw"} \
    > "$data/pull-$scenario-$v.digest" 2> "$data/pull-$scenario-$v.err" || { cat "$data/pull-$scenario-$v.err" >&2; exit 1; }
  cat "$data/pull-$scenario-$v.err" >&2
  local wrote
  wrote=$(tail -n +"$((before + 1))" "$rlog" | grep -o 'http.response.written=[0-9]*' | awk -F= '{s+=$2} END {print s+0}')
  echo "$scenario $v ${base:--} $wrote $(tail -1 "$data/pull-$scenario-$v.err")" >> "$data/pulls.txt"
}
# The whole disk of a version: raw (apparent and allocated), zstd -3, qcow2 as kiln made it,
# qcow2 compressed by qemu-img.
whole_disk() {
  local v=$1 q
  local raw="$work/pull/one-$v.raw"
  # kiln's qcow2 of the build: the disk cache entry whose raw disk is the record's.
  q=$(python3 - "$data/one-$v.json" "$home" <<'EOF'
import glob, json, os, sys
digest = json.load(open(sys.argv[1]))["disk"]["digest"]
for path in glob.glob(os.path.join(sys.argv[2], "disks", "*", "entry.json")):
    e = json.load(open(path))
    for f in e.get("formats", []):
        if e["raw"]["digest"] == digest and f["format"] == "qcow2" and f.get("compression", "none") == "none":
            print(os.path.join(os.path.dirname(path), f["file"]))
            sys.exit()
EOF
)
  local zs qc qz
  zs=$(zstd -3 -q -c "$raw" | wc -c)
  qc=$( [ -n "$q" ] && stat -c %s "$q" || echo 0)
  qemu-img convert -c -O qcow2 -f raw "$raw" "$work/pull/compressed-$v.qcow2"
  qz=$(stat -c %s "$work/pull/compressed-$v.qcow2")
  rm -f "$work/pull/compressed-$v.qcow2"
  echo "$v $(stat -c %s "$raw") $(( $(stat -c %b "$raw") * $(stat -c %B "$raw") )) $zs $qc $qz" >> "$data/disks.txt"
}

say "first push: 1.0.0"
build one 1.0.0; record one 1.0.0 "first push"
build sep 1.0.0; record sep 1.0.0 "first push"
pull one 1.0.0; pull sep 1.0.0
whole_disk 1.0.0

say "one-setting update: 1.0.1 (sshd MaxAuthTries 3 -> 4 in the hardening component)"
sed -i "s/MaxAuthTries 3/MaxAuthTries 4/" "$src/components/hardening.yaml"
build one 1.0.1; record one 1.0.1 "one setting (sshd_config.d MaxAuthTries 3 -> 4, hardening component)"
build sep 1.0.1; record sep 1.0.1 "one setting (sshd_config.d MaxAuthTries 3 -> 4, hardening component)"
pull one 1.0.1 1.0.0; pull sep 1.0.1 1.0.0
whole_disk 1.0.1
rm -f "$work/pull/one-1.0.0.raw" "$work/pull/sep-1.0.0.raw"

if $package && curl -fsI --max-time 20 http://deb.debian.org/debian/dists/bookworm/Release >/dev/null; then
  say "one-package update: 1.0.2 (jq installed by a new last component)"
  cat > "$src/components/jq.yaml" <<'EOF'
name: jq
description: jq from Debian.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Install
        action: ExecuteBash
        inputs:
          commands:
            - set -e
            - export DEBIAN_FRONTEND=noninteractive
            - apt-get update -qq
            - apt-get install -y -qq --no-install-recommends jq > /dev/null
            - apt-get clean && rm -rf /var/lib/apt/lists/*
EOF
  for s in one sep; do
    sed -i 's|^  - path: components/aws-hello-world.yaml$|&\n  - path: components/jq.yaml|' "$src/recipe-$s.yml"
  done
  build one 1.0.2; record one 1.0.2 "one package (apt-get install jq, a new last component)"
  build sep 1.0.2; record sep 1.0.2 "one package (apt-get install jq, a new last component)"
  pull one 1.0.2 1.0.1; pull sep 1.0.2 1.0.1
  whole_disk 1.0.2
elif $package; then
  say "Debian's mirror is out of reach: no one-package update"
fi
rm -f "$work/pull"/*.raw

python3 "$report" "$data" "$(date -u +%Y-%m-%d)" "$(nproc) cores, $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME")"
