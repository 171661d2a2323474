#!/usr/bin/env bash
# The API server under load: a fresh kiln home with COUNT realistic image records (default
# 10,000) of one account, `kiln serve` with the rate limit off, and a Rust load generator that
# signs every request with aws-sigv4 (crates/kiln-api/examples/api_load.rs): GetImage and
# ListImages at 1, 8 and 32 concurrent clients, each on its own keep-alive connection; p50, p90,
# p99, max and requests per second. The load generator runs on the same machine as the server.
# Usage: bench/api.sh [COUNT]   (SECONDS per measurement: API_BENCH_SECONDS, default 10;
#                                results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000}"
seconds="${API_BENCH_SECONDS:-10}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p kiln >&2
cargo build --release --locked -p kiln-api --example seed_images --example api_load >&2
kiln="$target/release/kiln"
examples="$target/release/examples"

home="$(mktemp -d /tmp/kiln-bench-api.XXXXXX)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$home"
}
trap cleanup EXIT
export KILN_HOME="$home"
# The benchmark measures the server, not its per-account rate limit (50/s by default).
printf 'serve:\n  requestsPerSecond: 0\n' > "$home/config.yaml"

"$kiln" account create bench -o json > "$home/bench-account.json"
account="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accountId"])' "$home/bench-account.json")"
"$examples/seed_images" "$home" "$account" "$count" >&2

"$kiln" serve --listen 127.0.0.1:0 > "$home/serve.out" 2> "$home/serve.err" &
server=$!
for _ in $(seq 1 100); do
  grep -q '^listening on http://' "$home/serve.out" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$home/serve.err" >&2; exit 1; }
  sleep 0.1
done
endpoint="$(sed -n 's/^listening on //p' "$home/serve.out" | head -1)"
[ -n "$endpoint" ] || { echo "kiln serve did not say where it listens" >&2; cat "$home/serve.err" >&2; exit 1; }
echo "kiln serve on $endpoint; $count images of account $account; ${seconds}s per row after 2s of warm-up" >&2

"$examples/api_load" --endpoint "$endpoint" --account-json "$home/bench-account.json" \
  --images "$count" --ops get,list,list25 --clients 1,8,32 --seconds "$seconds" --warmup 2 \
  ${API_BENCH_JSON:+--json "$API_BENCH_JSON"}

kill -TERM "$server"
wait "$server" || { echo "kiln serve exited with status $?" >&2; cat "$home/serve.err" >&2; exit 1; }
server=""
