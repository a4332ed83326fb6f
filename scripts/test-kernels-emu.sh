#!/usr/bin/env bash
# Runs the CUDA kernels' own source (cuda/*.cu) on the CPU under a small emulation of the CUDA execution
# model (cuda/emu/cuda_emu.h) and checks every kernel family against double-precision references.
# Needs only g++ (C++20); no CUDA, no GPU. Usage: scripts/test-kernels-emu.sh [family]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${CARGO_TARGET_DIR:-$ROOT/target}/cuda-emu"
mkdir -p "$OUT"
CXX="${CXX:-g++}"
FLAGS=(-std=c++20 -O2 -pthread -Wall -Wno-unknown-pragmas -include "$ROOT/cuda/emu/cuda_emu.h"
       -I"$ROOT/cuda/emu/shim" -I"$ROOT/cuda" -I"$ROOT/cuda/emu")
objs=()
for src in "$ROOT"/cuda/*.cu; do
  obj="$OUT/$(basename "$src" .cu).o"
  "$CXX" "${FLAGS[@]}" -x c++ -c "$src" -o "$obj" &
  objs+=("$obj")
done
"$CXX" "${FLAGS[@]}" -c "$ROOT/cuda/emu/test_kernels.cpp" -o "$OUT/test_kernels.o" &
for job in $(jobs -p); do wait "$job"; done
"$CXX" -pthread "${objs[@]}" "$OUT/test_kernels.o" -o "$OUT/test_kernels"
"$OUT/test_kernels" "$@"
