#!/usr/bin/env bash
# Prints the path of the fasp-engine binary on stdout, after building it with cargo (cargo's own
# progress goes to stderr). The path comes from cargo itself (the "executable" of its JSON build
# messages; `cargo metadata` with --no-build), so CARGO_TARGET_DIR, build.target-dir in a
# .cargo/config.toml and the like are honoured, and the script works from any directory.
#
#   scripts/fasp-bin.sh             build if needed, print the binary's path
#   scripts/fasp-bin.sh --no-build  print where cargo puts it, without building
#
# Env: FASP_BIN=PATH    use this binary and build nothing (e.g. one built elsewhere);
#      FASP_PROFILE     cargo profile (default release; dev is the profile `cargo test` builds in
#                       scripts/test.sh, so FASP_PROFILE=dev reuses the tests' build).
# Used by scripts/demo.sh and scripts/reproduce-timing.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
die() { echo "fasp-bin: error: $*" >&2; exit 1; }

no_build=0
case "${1:-}" in
    "") ;;
    --no-build) no_build=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (expected --no-build)" ;;
esac

if [ -n "${FASP_BIN:-}" ]; then
    [ -f "$FASP_BIN" ] && [ -x "$FASP_BIN" ] || die "FASP_BIN=$FASP_BIN is not an executable file"
    echo "$FASP_BIN"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), then rerun"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON)"
profile="${FASP_PROFILE:-release}"
# dev builds into <target>/debug, every other profile into <target>/<profile>
case "$profile" in dev|test) subdir=debug ;; bench) subdir=release ;; *) subdir="$profile" ;; esac

target_dir="$(cargo metadata --format-version 1 --no-deps --offline --manifest-path "$ROOT/Cargo.toml" |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')" ||
    die "cargo metadata failed for $ROOT/Cargo.toml"
expected="$target_dir/$subdir/fasp-engine"
if [ "$no_build" = 1 ]; then
    echo "$expected"
    exit 0
fi

if [ -x "$expected" ]; then
    echo "fasp-bin: cargo build --profile $profile (up to date: a few seconds; after a change to src/: 1-3 min)" >&2
else
    echo "fasp-bin: first build of fasp-engine (cargo build --profile $profile) into $target_dir:" >&2
    echo "fasp-bin: about 7 min on a 2-core machine (cargo lists each crate below); later runs reuse it" >&2
fi
msgs="$(mktemp)"
trap 'rm -f "$msgs"' EXIT
cargo build --locked --profile "$profile" --bin fasp-engine --manifest-path "$ROOT/Cargo.toml" \
    --message-format=json-render-diagnostics > "$msgs" || die "cargo build failed (see the messages above)"
exe="$("$PY" - "$msgs" <<'EOF'
import json, sys
exe = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "fasp-engine" \
            and "bin" in m.get("target", {}).get("kind", []) and m.get("executable"):
        exe = m["executable"]
print(exe or "")
EOF
)"
[ -n "$exe" ] && [ -x "$exe" ] || die "cargo built no fasp-engine executable (looked for it in cargo's messages)"
echo "$exe"
