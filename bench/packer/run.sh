#!/bin/sh
# The Packer side of the golden-nginx benchmark: builds OUT_DIR/golden-nginx.qcow2 from a parent
# qcow2 with Packer's QEMU builder (TCG) and the same steps as kiln's golden-nginx components.
#   bench/packer/run.sh PARENT_QCOW2 OUT_DIR
# Last stdout line on success: packer_seconds=N.NN (wall time of `packer build` alone).
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 PARENT_QCOW2 OUT_DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
parent=$(realpath -e "$1")
out=$(realpath -m "$2")
work=$(dirname "$out")

command -v packer >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq packer >/dev/null
command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)" >&2; exit 1; }

# Packer refuses an existing output directory; its cache and temp files stay out of the repo.
rm -rf "$out" "$out.console.log"
export PACKER_CACHE_DIR="$out.packer-cache" TMPDIR="$out.packer-tmp"
rm -rf "$PACKER_CACHE_DIR" "$TMPDIR"
mkdir -p "$work" "$PACKER_CACHE_DIR" "$TMPDIR"
unset PACKER_LOG
export CHECKPOINT_DISABLE=1 # no version check over the network

start=$(date +%s.%N)
rc=0
packer build -color=false \
    -var "parent=$parent" \
    -var "out=$out" \
    -var "console_log=$out.console.log" \
    "$here/golden-nginx.json" || rc=$?
end=$(date +%s.%N)
rm -rf "$TMPDIR" "$PACKER_CACHE_DIR"
if [ "$rc" -ne 0 ]; then
    echo "packer build failed (exit $rc); guest console: $out.console.log" >&2
    exit "$rc"
fi
if [ ! -s "$out/golden-nginx.qcow2" ]; then
    echo "packer build succeeded but $out/golden-nginx.qcow2 is missing" >&2
    exit 1
fi
awk -v s="$start" -v e="$end" 'BEGIN { printf "packer_seconds=%.2f\n", e - s }'
