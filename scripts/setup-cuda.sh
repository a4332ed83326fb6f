#!/usr/bin/env bash
# Installs a project-local CUDA 13.0 device compiler (nvcc, cicc, ptxas, CUDA and CCCL headers) from the
# PyPI wheels into .cuda/, so build.rs can compile cuda/*.cu to PTX. Needs python3 + pip and a host C++
# compiler (g++); needs no system CUDA, no driver and no GPU. Idempotent: a second run only re-checks.
#
# Layout of the 13.x wheels (all five unpack into one toolkit-shaped tree):
#   .cuda/pkgs/nvidia/cu13/bin/nvcc          (+ nvcc.profile, ptxas, cudafe++, fatbinary, nvlink)
#   .cuda/pkgs/nvidia/cu13/nvvm/bin/cicc     (found by nvcc through nvcc.profile: CICC_PATH=$(TOP)/nvvm/bin)
#   .cuda/pkgs/nvidia/cu13/nvvm/libdevice/
#   .cuda/pkgs/nvidia/cu13/include/          (cuda_runtime.h, cuda_bf16.h, crt/ ...)
#   .cuda/pkgs/nvidia/cu13/include/cccl/     (cub, thrust, cuda/std; nvcc.profile adds it with -isystem)
#   .cuda/pkgs/nvidia/cu13/lib/              (libcudart.so.13, libnvvm.so.4)
# Env: PYTHON (default python3), FASP_CUDA_DIR (default <repo>/.cuda), FASP_CUDA_FORCE=1 to reinstall.
set -euo pipefail

start=$(date +%s.%N)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${FASP_CUDA_DIR:-$ROOT/.cuda}"
SERIES="13.0"
PKGS=(nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-cccl nvidia-cuda-crt nvidia-cuda-runtime)
PY="${PYTHON:-python3}"
PKGDIR="$DEST/pkgs"
CUDA_HOME_LOCAL="$PKGDIR/nvidia/cu13"
NVCC="$CUDA_HOME_LOCAL/bin/nvcc"
STAMP="$DEST/stamp"
WANT="series=$SERIES packages=${PKGS[*]}"

die() { echo "setup-cuda: error: $*" >&2; exit 1; }

# Compiles a trivial kernel (bf16 header + a CCCL header) to PTX with the nvcc given as $1.
smoke_test() {
  local nvcc="$1" dir
  dir="$(mktemp -d)"
  cat > "$dir/t.cu" <<'CU'
#include <cuda_bf16.h>
#include <cuda/std/limits>
extern "C" __global__ void fasp_smoke(float* x) {
  x[threadIdx.x] = __bfloat162float(__float2bfloat16_rn(1.0f)) + cuda::std::numeric_limits<float>::epsilon();
}
CU
  if ! "$nvcc" --ptx -O3 -arch=compute_80 "$dir/t.cu" -o "$dir/t.ptx" 2> "$dir/err"; then
    cat "$dir/err" >&2; rm -rf "$dir"; return 1
  fi
  grep -q '\.entry fasp_smoke' "$dir/t.ptx" || { rm -rf "$dir"; return 1; }
  rm -rf "$dir"
}

command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 ||
  die "nvcc needs a host C++ compiler; install one (e.g. apt-get install -y g++)"

if [[ "${FASP_CUDA_FORCE:-0}" != 1 && -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] &&
   "$NVCC" --version 2>/dev/null | grep -q "release $SERIES," && smoke_test "$NVCC"; then
  echo "setup-cuda: CUDA $SERIES compiler already installed in $DEST"
else
  "$PY" -m pip --version >/dev/null 2>&1 || die "$PY -m pip is not available"
  mkdir -p "$DEST"
  NEW="$DEST/pkgs.new"
  rm -rf "$NEW"
  trap 'rm -rf "$NEW"' EXIT
  specs=()
  for p in "${PKGS[@]}"; do specs+=("$p==$SERIES.*"); done
  echo "setup-cuda: installing ${specs[*]} into $DEST"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --disable-pip-version-check --no-cache-dir \
    --no-warn-script-location --quiet --target "$NEW" "${specs[@]}"
  [[ -x "$NEW/nvidia/cu13/bin/nvcc" ]] || die "wheel layout changed: no nvidia/cu13/bin/nvcc under $NEW"
  [[ -x "$NEW/nvidia/cu13/nvvm/bin/cicc" ]] || die "wheel layout changed: no nvidia/cu13/nvvm/bin/cicc"
  smoke_test "$NEW/nvidia/cu13/bin/nvcc" || die "the installed nvcc failed to compile a trivial kernel"
  rm -rf "$PKGDIR"
  mv "$NEW" "$PKGDIR"
  trap - EXIT
  echo "$WANT" > "$STAMP"
  cat > "$DEST/env.sh" <<ENV
# source this to put the project-local nvcc on PATH
export CUDA_HOME="$CUDA_HOME_LOCAL"
export PATH="\$CUDA_HOME/bin:\$PATH"
ENV
  # build.rs only reruns on its watched inputs, so a build made before nvcc was here keeps its
  # kernel-less binary. Touch build.rs (the next build then compiles the kernels) only when such a
  # build exists (its build-script output carries the "NOT built" warning): an install before the
  # first build costs no rebuild.
  tdir="${CARGO_TARGET_DIR:-$ROOT/target}"
  if grep -qs "CUDA kernels NOT built" "$tdir"/*/build/fasp-engine-*/output; then
    echo "setup-cuda: a build in $tdir has no CUDA kernels: touching build.rs so the next cargo build adds them"
    touch "$ROOT/build.rs"
  fi
fi

"$NVCC" --version | grep release
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "setup-cuda: done in %.1fs\n", b - a }'
echo "nvcc: $NVCC"
