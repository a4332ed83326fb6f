#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M and the Wikipedia texts (cached in $FASP_HOME), prune the model at
# 20% with FASP, and print its perplexity before and after on held-out Wikipedia articles.
# Calibration: 32 windows of 256 tokens (a few minutes on a 2-core CPU); --device auto uses the GPU
# when the CUDA backend is available. Extra flags go to `fasp-engine prune`.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${FASP_HOME:-$HOME/.cache/fasp-engine}
scripts/fetch-assets.sh
cargo build --release --locked -q
out=${DEMO_OUT:-out/smollm2-135m-fasp20}
mkdir -p "$(dirname "$out")"
target/release/fasp-engine prune \
  --model "$home/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$out" --force \
  --calib "$home/text/calib.txt" --nsamples 32 --seqlen 256 --sparsity 0.2 --device auto \
  --eval "$home/text/eval.txt" --eval-seqlen 256 --eval-windows 16 --eval-dense "$@"
