#!/usr/bin/env bash
# kiln vs `buildah bud --layers` on examples/golden-nginx, on this machine, in one run:
#   cold build            (build caches empty; the Debian base image already local to both)
#   no-change rebuild     (nothing changed)
#   last-component change (the last component / the last RUN changed)
# plus, for kiln, a build from nothing (bootstrapping Debian with mmdebstrap, no caches at all).
# Usage: bench/golden-nginx.sh [RUNS]   (default 3; medians are reported; KILN_BENCH_SCRATCH=0
# leaves out the build from nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
scripts/setup --bench >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null 2>&1 || true
cargo build --release --locked -p kiln >&2
kiln="$PWD/target/release/kiln"
work="${KILN_BENCH_DIR:-/tmp/kiln-bench}"
mkdir -p "$work"

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{float(\"$2\") - float(\"$1\"):.2f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
bb() { buildah --root "$1/root" --runroot "$1/runroot" "${@:2}"; }
# Removes a buildah storage, unmounting what a failed run may have left mounted in it.
drop_store() {
  if [ -d "$1" ]; then
    bb "$1" rm --all >/dev/null 2>&1 || true
    grep -F " $1/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
    rm -rf "$1"
  fi
}

# The shared base: Debian bookworm minbase + ca-certificates, as a tarball, then as an OCI layout
# both tools read (buildah pulls it into its storage, kiln imports it into its store).
if [ ! -f "$work/base.tar" ]; then
  echo "bootstrapping the shared Debian base" >&2
  mmdebstrap --variant=minbase --mode=root --format=tar --include=ca-certificates bookworm "$work/base.tar.part" >&2
  mv "$work/base.tar.part" "$work/base.tar"
fi
if [ ! -f "$work/base-layout/index.json" ]; then
  drop_store "$work/prep" && mkdir -p "$work/prep/ctx"
  cp "$work/base.tar" "$work/prep/ctx/base.tar"
  printf 'FROM scratch\nADD base.tar /\nCMD ["/bin/bash"]\n' > "$work/prep/ctx/Containerfile"
  bb "$work/prep" bud --runtime runc -t kiln-bench-debian:bookworm "$work/prep/ctx" >&2
  bb "$work/prep" push kiln-bench-debian:bookworm "oci:$work/base-layout:bookworm" >&2
fi

# kiln's recipe: golden-nginx with the same base image.
rm -rf "$work/kiln-src" && cp -r examples/golden-nginx "$work/kiln-src"
sed -i "s|^parentImage: .*|parentImage: oci:$work/base-layout:bookworm|; /^bootstrap:/,/^  packages:/d" "$work/kiln-src/recipe.yml"
# The container image only, as buildah makes (the disk output has its own benchmark).
sed -i "s|^outputs: .*|outputs: [oci]|" "$work/kiln-src/recipe.yml"
rm -rf "$work/buildah-src" && cp -r bench/golden-nginx "$work/buildah-src"

declare -A t
for i in $(seq 1 "$runs"); do
  echo "== run $i of $runs" >&2
  # kiln: a fresh data directory that already holds the base image (like buildah's storage).
  home="$work/kiln-home"; rm -rf "$home"
  KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >/dev/null 2>&1 || true
  rm -rf "$home/cache" "$home/images" "$home/regions"
  for l in "$home"/layers/*/; do
    grep -q "oci:$work/base-layout" "$l/layer.json" 2>/dev/null || rm -rf "$l"
  done
  cp "examples/golden-nginx/components/aws-hello-world.yaml" "$work/kiln-src/components/aws-hello-world.yaml"
  s=$(now); KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >/dev/null 2>"$work/kiln-cold.log"; e=$(now)
  t[kiln_cold]+=" $(elapsed "$s" "$e")"
  s=$(now); KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >/dev/null 2>&1; e=$(now)
  t[kiln_nochange]+=" $(elapsed "$s" "$e")"
  echo "# changed $i $(date +%s%N)" >> "$work/kiln-src/components/aws-hello-world.yaml"
  s=$(now); KILN_HOME="$home" "$kiln" build "$work/kiln-src/recipe.yml" -q >/dev/null 2>&1; e=$(now)
  t[kiln_last]+=" $(elapsed "$s" "$e")"

  # buildah: a fresh storage that holds only the base image.
  st="$work/buildah-store"; drop_store "$st"
  bb "$st" pull "oci:$work/base-layout:bookworm" >/dev/null 2>&1
  bb "$st" tag "$(bb "$st" images -q | head -n1)" localhost/kiln-bench-debian:bookworm
  cp bench/golden-nginx/Containerfile "$work/buildah-src/Containerfile"
  s=$(now); bb "$st" bud --runtime runc --layers -t golden-nginx:1.0.0 "$work/buildah-src" >/dev/null 2>"$work/buildah-cold.log"; e=$(now)
  t[buildah_cold]+=" $(elapsed "$s" "$e")"
  s=$(now); bb "$st" bud --runtime runc --layers -t golden-nginx:1.0.0 "$work/buildah-src" >/dev/null 2>&1; e=$(now)
  t[buildah_nochange]+=" $(elapsed "$s" "$e")"
  sed -i "s|echo 'Hello world echo file created'|echo 'Hello world echo file created $i'|" "$work/buildah-src/Containerfile"
  s=$(now); bb "$st" bud --runtime runc --layers -t golden-nginx:1.0.0 "$work/buildah-src" >/dev/null 2>&1; e=$(now)
  t[buildah_last]+=" $(elapsed "$s" "$e")"
done

# kiln from nothing: no base image, no caches: bootstrap included (KILN_BENCH_SCRATCH=0 skips it).
scratch=-
if [ "${KILN_BENCH_SCRATCH:-1}" != 0 ]; then
  home="$work/kiln-home-scratch"; rm -rf "$home"
  s=$(now); KILN_HOME="$home" "$kiln" build examples/golden-nginx/recipe.yml -q >/dev/null 2>&1; e=$(now)
  scratch=$(elapsed "$s" "$e")
fi

drop_store "$work/buildah-store"
echo
echo "| scenario | kiln (s) | buildah bud --layers (s) | runs |"
echo "| --- | ---: | ---: | ---: |"
echo "| cold build (base image local, caches empty) | $(median ${t[kiln_cold]}) | $(median ${t[buildah_cold]}) | $runs |"
echo "| no-change rebuild | $(median ${t[kiln_nochange]}) | $(median ${t[buildah_nochange]}) | $runs |"
echo "| last component changed | $(median ${t[kiln_last]}) | $(median ${t[buildah_last]}) | $runs |"
echo "| kiln from nothing (mmdebstrap bootstrap included) | $scratch | - | 1 |"
echo
echo "raw: kiln cold${t[kiln_cold]}; nochange${t[kiln_nochange]}; last${t[kiln_last]}"
echo "raw: buildah cold${t[buildah_cold]}; nochange${t[buildah_nochange]}; last${t[buildah_last]}"
