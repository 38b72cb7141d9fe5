#!/usr/bin/env bash
# Runs deploy/Containerfile's build on this host, for machines without a container runtime: the
# builder stage's cargo command, into a temporary target folder (so it starts clean, as in the
# image), then the runtime stage's checks: the binaries start (`--help`) as a non-root user when one
# can be switched to, and need no shared library that debian:bookworm-slim lacks.
# Usage: deploy/build-outside-container.sh [OUT_DIR]   (OUT_DIR gets fffserve and fffc; default: a
# temporary folder, removed at the end).  Env CARGO_TARGET_DIR reuses a target folder instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${1:-$tmp/out}
mkdir -p "$out"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$tmp/target}
# The same command as the Containerfile's builder stage.
cargo build --release --locked -p fff-server -p fff-compiler --bin fffserve --bin fffc
cp "$CARGO_TARGET_DIR/release/fffserve" "$CARGO_TARGET_DIR/release/fffc" "$out/"
"$out/fffserve" --help >/dev/null
"$out/fffc" --help >/dev/null
echo "fffserve and fffc built and start: $out"
# The runtime image holds glibc and libgcc_s and nothing else a binary could link to.
for bin in fffserve fffc; do
  extra=$(ldd "$out/$bin" | awk '{print $1}' |
    grep -v -E '^(linux-vdso\.so|/lib64/ld-linux|libc\.so|libm\.so|libgcc_s\.so|libpthread\.so|libdl\.so|librt\.so)' || true)
  if [ -n "$extra" ]; then
    echo "$bin links libraries debian:bookworm-slim does not have: $extra" >&2
    exit 1
  fi
done
echo "shared libraries: only glibc and libgcc_s"
# As the image's non-root user would run it (uid 10001), where this host lets us switch users.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  chmod 755 "$out" "$out/fffserve"
  [ "$out" = "$tmp/out" ] && chmod 755 "$tmp"
  setpriv --reuid 10001 --regid 10001 --clear-groups "$out/fffserve" --help >/dev/null
  echo "fffserve --help runs as uid 10001"
fi
