#!/usr/bin/env bash
# Builds per hour with 1, 2 and 3 `kiln worker run` processes on this machine, over one
# PostgreSQL cluster: BUILDS (default 6) one-component container images started at once through
# the AWS CLI, timed until all are AVAILABLE. Needs `scripts/setup --test` (PostgreSQL, the
# registry, the AWS CLI).
# Usage: bench/workers.sh [BUILDS]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked -p kiln --bench workers -- "${1:-6}"
