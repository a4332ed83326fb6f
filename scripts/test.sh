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
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/setup-cuda.sh ]; then scripts/setup-cuda.sh; fi
if [ -x scripts/fetch-assets.sh ]; then scripts/fetch-assets.sh; fi
echo "test.sh: cargo fmt --check"
cargo fmt --check
echo "test.sh: cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# --show-output prints what passing tests said, so the GPU tests' SKIP lines are visible
cargo test --locked "$@" -- --show-output
