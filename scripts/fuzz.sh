#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo fuzz, libFuzzer): the safetensors header and index, the GGUF
# reader, the .npy reader, config.json, and report's sweep CSV and inspect's fasp.json readers.
#
#   scripts/fuzz.sh smoke [SECONDS]        every target for SECONDS (default 5) from the committed
#                                          seeds (fuzz/seeds/TARGET); what scripts/test.sh runs
#   scripts/fuzz.sh run TARGET [SECONDS]   one target (default 600 s); the growing corpus is kept in
#                                          fuzz/corpus/TARGET (git-ignored), crashes in fuzz/artifacts/TARGET
#   scripts/fuzz.sh list                   the targets
#
# cargo-fuzz is installed with `cargo install --locked` when missing (once; ~/.cargo/bin). It needs
# nightly-only rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them (set here, for
# these builds only). Targets are built without a sanitizer (--sanitizer none): the readers are
# safe Rust, so the findings that matter are panics, aborts, unbounded allocations (libFuzzer's
# -malloc_limit_mb, 2 GiB) and hangs, which libFuzzer catches on its own, at about twice the speed.
# The build goes to $CARGO_TARGET_DIR/fuzz (default target/fuzz), so later runs reuse it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
CARGO_FUZZ_VERSION=0.13.2
die() { echo "fuzz.sh: error: $*" >&2; exit 1; }

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^fasp-engine-fuzz$'; }

mode="${1:-}"
case "$mode" in
    list) targets; exit 0 ;;
    smoke) secs="${2:-5}" ;;
    run) [ -n "${2:-}" ] || die "run needs a TARGET (scripts/fuzz.sh list)"; secs="${3:-600}" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (once, about 4 minutes on 2 cores)"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
# the fuzz targets read files, not kernels: skip the PTX build (the emulator library still builds)
export FASP_NO_CUDA=1
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/fuzz}"
build() {
    echo "fuzz.sh: building the fuzz targets into $target_dir (the first build compiles the crate again, several minutes)"
    cargo fuzz build --sanitizer none --target-dir "$target_dir" "$@"
}

# run TARGET SECONDS CORPUS_DIR ARTIFACT_PREFIX
fuzz_one() {
    local t="$1" s="$2" corpus="$3" artifacts="$4"
    mkdir -p "$corpus" "$artifacts"
    # -rss_limit_mb / -malloc_limit_mb: an input that makes a reader allocate over 2 GiB is a finding
    cargo fuzz run --sanitizer none --target-dir "$target_dir" "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$s" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1
}

case "$mode" in
    smoke)
        build
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        for t in $(targets); do
            echo "fuzz.sh: smoke $t (${secs} s)"
            if ! fuzz_one "$t" "$secs" "$tmp/corpus/$t" "$tmp/artifacts/$t" >"$tmp/$t.log" 2>&1; then
                tail -40 "$tmp/$t.log" >&2
                mkdir -p "$ROOT/fuzz/artifacts/$t"
                cp "$tmp/artifacts/$t"/* "$ROOT/fuzz/artifacts/$t/" 2>/dev/null || true
                die "fuzz target $t failed (the input is in fuzz/artifacts/$t/; replay: cargo fuzz run $t fuzz/artifacts/$t/FILE)"
            fi
            { grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$tmp/$t.log" || true; } | tail -1 | sed "s/^/fuzz.sh: $t: /"
        done
        ;;
    run)
        t="$2"
        targets | grep -qx "$t" || die "unknown target $t (scripts/fuzz.sh list)"
        build "$t"
        fuzz_one "$t" "$secs" "corpus/$t" "artifacts/$t"
        ;;
esac
