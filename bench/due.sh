#!/usr/bin/env bash
# 1,000 pipelines due at the same minute (COUNT, default 1,000): the scheduler tick that queues
# every build (checked, numbered PENDING, its job queued) on SQLite and on PostgreSQL.
# Usage: bench/due.sh [COUNT]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked -p kiln-core --bench due -- "${1:-1000}"
