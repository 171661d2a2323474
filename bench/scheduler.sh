#!/usr/bin/env bash
# What one scheduler tick of `kiln serve` costs with COUNT daily pipelines (default 1,000): no
# run due, and every run due at once (claimed, planned, handed to a starter that builds nothing).
# Usage: bench/scheduler.sh [COUNT]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked -p kiln-core --bench scheduler -- "${1:-1000}"
