#!/usr/bin/env bash
# How `kiln image list` and `kiln image get` scale with many stored images: fills a state store
# with COUNT realistic image records (default 10,000), then times the store calls each command
# makes and the whole commands of the release binary (medians and 95th percentiles).
# Usage: bench/images.sh [COUNT]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kiln >&2
KILN_BIN="$PWD/target/release/kiln" exec cargo bench --locked -p kiln-core --bench images -- "${1:-10000}"
