#!/usr/bin/env bash
# The test suite, exactly as CI runs it (.ci/run calls this script).
#  1. scripts/setup-cuda.sh installs the pinned nvcc 13.0 from PyPI into .cuda/ so that build.rs
#     compiles every CUDA kernel to PTX (no GPU is needed for that; GPU tests skip themselves).
#  2. scripts/fetch-assets.sh fetches SmolLM2-135M and the Wikipedia texts into $FASP_HOME
#     (cached), for the real-weights tests.
#  3. cargo fmt --check and cargo clippy --all-targets -D warnings (the habits of the code base).
#  4. cargo test runs every unit, integration and CLI test; the GPU tests (tests/gpu.rs) and the
#     emulator's own tests (tests/emu.rs) run on the emulated device, which build.rs compiles from
#     the same cuda/*.cu sources.
#  5. scripts/fuzz.sh smoke runs every fuzz target of fuzz/ for a few seconds from the committed
#     seeds (cargo-fuzz is installed once; its build is cached in $CARGO_TARGET_DIR/fuzz).
#     FASP_FUZZ_SECONDS sets the seconds per target (default 5; 0 skips the smoke).
#  6. scripts/llama-cpp-check.sh checks our GGUF output in llama.cpp itself (issue 13): perplexity
#     parity with `fasp-engine eval` (F16 within 0.5%, Q8_0 within 2%), with the dev binary that
#     step 4 built. Its llama-cpp-python venv is built from source once and cached in
#     $FASP_HOME/llama-venv: ADDED TIME, see docs/inference.md ("The llama.cpp build"). FASP_LLAMA_CPP=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
# no incremental caches: they add hundreds of MB per test binary and a clean CI build gains nothing
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
tdir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$tdir"
echo "test.sh: disk free where the build goes ($tdir): $(df -h --output=avail "$tdir" | tail -1 | tr -d ' ') (the whole suite needs about 3 GB)"
if [ -x scripts/setup-cuda.sh ]; then scripts/setup-cuda.sh; fi
if [ -x scripts/fetch-assets.sh ]; then scripts/fetch-assets.sh; fi
echo "test.sh: cargo fmt --check"
cargo fmt --check
cargo fmt --check --manifest-path fuzz/Cargo.toml
echo "test.sh: cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# --show-output prints what passing tests said, so the GPU tests' SKIP lines are visible
cargo test --locked "$@" -- --show-output
if [ "${FASP_FUZZ_SECONDS:-5}" != 0 ]; then
    echo "test.sh: fuzz smoke (scripts/fuzz.sh smoke ${FASP_FUZZ_SECONDS:-5})"
    scripts/fuzz.sh smoke "${FASP_FUZZ_SECONDS:-5}"
fi
if [ "${FASP_LLAMA_CPP:-1}" != 0 ]; then
    echo "test.sh: llama.cpp check (scripts/llama-cpp-check.sh; FASP_LLAMA_CPP=0 skips it)"
    FASP_PROFILE=dev scripts/llama-cpp-check.sh
fi
