#!/usr/bin/env bash
# What the build queue costs on SQLite and on PostgreSQL: COUNT jobs queued (default 1,000),
# then 1, 4 and 16 claimers on handles of their own taking them all, each claim and heartbeat
# timed (p50, p99, max, claims per second).
# Usage: bench/queue.sh [COUNT]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked -p kiln-store --bench queue -- "${1:-1000}"
