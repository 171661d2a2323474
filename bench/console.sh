#!/usr/bin/env bash
# How long a build step's output line takes to appear in an open console page: the console's
# browser test (crates/kiln/tests/console.rs) run RUNS times (default 3); each run stamps 8
# lines with the step's clock (`date +%s%3N`) and the browser notes when each is added to the
# page (Date.now(), the same host's clock). Prints each run's median and worst, in ms.
# Usage: bench/console.sh [RUNS]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "${1:-3}"); do
  KILN_BENCH_OUT="$out" cargo test --locked -q -p kiln --test console >/dev/null
done
cat "$out"
