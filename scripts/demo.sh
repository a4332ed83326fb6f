#!/usr/bin/env bash
# The main job: prune the default model at 20% and compare perplexity before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
out=${OUT_DIR:-out/opt-tiny-fasp20}
mkdir -p "$(dirname "$out")"
target/release/fasp-engine prune --model tests/fixtures/opt-tiny --out "$out" --force \
  --calib tests/fixtures/calib.txt --nsamples 32 --seqlen 64 --sparsity 0.2 \
  --eval tests/fixtures/eval.txt --eval-seqlen 64 --eval-dense "$@"
