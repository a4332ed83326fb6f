#!/usr/bin/env bash
# Builds, here (with Rust), the binaries that scripts/gpu-check.sh runs on a GPU machine (which has
# the NVIDIA driver, nvcc 13.0 and PyTorch but no Rust), into gpu-bundle/:
#   gpu-bundle/gpu-tests      tests/gpu.rs                       (cargo test --release --no-run --test gpu)
#   gpu-bundle/fasp-engine    the CLI                            (cargo build --release --bin fasp-engine)
#   gpu-bundle/kernels-bench  benches/kernels.rs (criterion)     (cargo bench --no-run --bench kernels)
#   gpu-bundle/MANIFEST       git revision, --version line, sizes and sha256 of the three
# The executables are found from cargo's JSON messages (--message-format=json, "executable" of the
# compiler-artifact of each target) and copied with debug info stripped (the bundle must stay under
# the device tool's 64 MiB carry limit). gpu-bundle/ is git-ignored: pass it to the device tool as
# carry: ["gpu-bundle"].
# Env: CARGO_TARGET_DIR (default <repo>/target), FASP_BUNDLE_DIR (default <repo>/gpu-bundle),
# CUDA_COMPUTE_CAP / FASP_PTX_VERSION as for build.rs.
# The binaries link glibc dynamically: the GPU machine needs a glibc at least as new as this one's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${FASP_BUNDLE_DIR:-$ROOT/gpu-bundle}"
PY="${PYTHON:-python3}"
die() { echo "build-gpu-bundle: error: $*" >&2; exit 1; }

if [ ! -x "$ROOT/.cuda/pkgs/nvidia/cu13/bin/nvcc" ] && [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null; then
  echo "build-gpu-bundle: no nvcc: running scripts/setup-cuda.sh" >&2
  scripts/setup-cuda.sh
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "build-gpu-bundle: building (release) ..." >&2
cargo build --release --bin fasp-engine --message-format=json > "$tmp/bin.json"
cargo test --release --no-run --test gpu --message-format=json > "$tmp/test.json"
cargo bench --no-run --bench kernels --message-format=json > "$tmp/bench.json"

# executable of the compiler-artifact whose target is NAME (and, for tests, built as a test)
exe() {
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
found = None
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        found = m["executable"]
print(found or "")
EOF
}
BIN="$(exe "$tmp/bin.json" fasp-engine)"
TEST="$(exe "$tmp/test.json" gpu)"
BENCH="$(exe "$tmp/bench.json" kernels)"
[ -n "$BIN" ] && [ -x "$BIN" ] || die "no fasp-engine executable in cargo's output"
[ -n "$TEST" ] && [ -x "$TEST" ] || die "no tests/gpu.rs executable in cargo's output"
[ -n "$BENCH" ] && [ -x "$BENCH" ] || die "no benches/kernels.rs executable in cargo's output"
"$BIN" --version | grep -q "kernels: built in" || die "the binaries have no CUDA kernels (see scripts/setup-cuda.sh)"

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
copy() {
  cp "$1" "$OUTDIR/$2"
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "$OUTDIR/$2"; fi
  chmod +x "$OUTDIR/$2"
}
copy "$BIN" fasp-engine
copy "$TEST" gpu-tests
copy "$BENCH" kernels-bench
{
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "version: $("$OUTDIR/fasp-engine" --version)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>/dev/null | head -1)"
  for f in fasp-engine gpu-tests kernels-bench; do
    glibc="$(objdump -T "$OUTDIR/$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    echo "$f: $(stat -c %s "$OUTDIR/$f") bytes, needs ${glibc:-GLIBC_?}, sha256 $(sha256sum "$OUTDIR/$f" | cut -d' ' -f1)"
  done
} > "$OUTDIR/MANIFEST"
total=$(du -sb "$OUTDIR" | cut -f1)
cat "$OUTDIR/MANIFEST"
echo "build-gpu-bundle: $OUTDIR is $((total / 1048576)) MiB"
[ "$total" -lt $((64 * 1048576)) ] || die "the bundle exceeds the device tool's 64 MiB carry limit"
