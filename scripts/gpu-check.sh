#!/usr/bin/env bash
# The one prepared call for a GPU machine that has the NVIDIA driver, nvcc 13.0 and PyTorch but no
# Rust. It runs binaries built elsewhere by scripts/build-gpu-bundle.sh (gpu-bundle/, carried to the
# machine; see docs/gpu.md), from the repository root so tests/fixtures are at hand:
#   1. LD_LIBRARY_PATH from the PyTorch environment (torch/lib and site-packages/nvidia/*/lib), plus a
#      folder of symlinks giving cuBLAS/cuSOLVER the plain names cudarc's loader tries first;
#   2. the GPU tests (tests/gpu.rs): every kernel family against the CPU reference, Cholesky failure
#      and escalation, the backend's steps, and a whole prune of every fixture on CUDA vs the CPU;
#   3. the CLI: `prune --device cpu` and `--device cuda` on every fixture, the family ones (llama3,
#      mistral, qwen2, qwen3, gemma3) included (sparsity 0.25, eval on
#      tests/fixtures/eval.txt), comparing kept sets and perplexity;
#   4. the kernel benches in quick mode (FASP_BENCH_QUICK=1, GPU part only);
# then prints one table and writes every log under $OUT (or ./gpu-check-out). Exit status 0 only when
# every test and comparison passed.
# Stages, for a 15-minute device budget (FASP_GPU_CHECK_STAGE=1, 2 or all; default all):
#   stage 1 (about 90 s): open the device, load every module, launch each kernel family once (one
#     cuda:: test per family), prune one fixture on CUDA against the CPU; stops at the first failure;
#   stage 2: every GPU test, the CLI comparison on every fixture, and the benches.
# The same tests already ran on the emulated device in CI (tests/gpu.rs emu::*): here they confirm.
# Env: FASP_GPU_BUNDLE (default ./gpu-bundle), PYTHON (default python3), FASP_GPU_CHECK_SKIP_BENCH=1,
#      FASP_GPU_CHECK_STAGE.
set -uo pipefail
T0=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE="${FASP_GPU_BUNDLE:-$ROOT/gpu-bundle}"
LOG="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
SUMMARY="$LOG/summary.txt"
: > "$SUMMARY"
FAIL=0
say() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

for f in gpu-tests fasp-engine kernels-bench; do
  if [ ! -x "$BUNDLE/$f" ]; then
    say "gpu-check: $BUNDLE/$f is missing: build the bundle with scripts/build-gpu-bundle.sh and carry gpu-bundle/"
    exit 2
  fi
done

# ---- 1. libraries ------------------------------------------------------------------------------
LIBDIRS="$("$PY" - <<'EOF' 2>>"$LOG/env.log"
import glob, os, site, sys
roots = set()
try:
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
except Exception:
    pass
dirs = []
try:
    import torch
    tdir = os.path.dirname(torch.__file__)
    dirs.append(os.path.join(tdir, "lib"))
    roots.add(os.path.dirname(tdir))
    print("torch %s, CUDA %s" % (torch.__version__, torch.version.cuda), file=sys.stderr)
except Exception as e:
    print("torch not importable: %s" % e, file=sys.stderr)
for r in sorted(roots):
    dirs += sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)"
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
# cudarc (bindings for CUDA 13.0) tries libNAME.so first, then libNAME.so.13/.12/...; CUDA 13 wheels
# ship libcublas.so.13 / libcusolver.so.12. As a fallback, link the plain name to the best match.
link_lib() {  # name, preferred sonames...
  local name="$1"; shift
  local want="$*"
  local IFS=:
  for dir in $LIBDIRS; do [ -e "$dir/lib$name.so" ] && return 0; done
  for v in "$@"; do
    for dir in $LIBDIRS; do
      if [ -e "$dir/lib$name.so.$v" ]; then ln -sf "$dir/lib$name.so.$v" "$SHIM/lib$name.so"; echo "lib$name.so -> $dir/lib$name.so.$v" >> "$LOG/env.log"; return 0; fi
    done
  done
  echo "no lib$name.so or lib$name.so.N (N in $want) under the PyTorch environment" >> "$LOG/env.log"
}
link_lib cublas 13 12
link_lib cublasLt 13 12
link_lib cusolver 12 11
export LD_LIBRARY_PATH="$SHIM${LIBDIRS:+:$LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FASP_REPO_ROOT="$ROOT"
{
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  "$BUNDLE/fasp-engine" --version 2>&1
  cat "$BUNDLE/MANIFEST" 2>/dev/null
} >> "$LOG/env.log"
DEVICE="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
say "== fasp-engine gpu-check on ${DEVICE:-unknown GPU} ($(uname -n), $(date -u +%Y-%m-%dT%H:%M:%SZ))"
say "   $("$BUNDLE/fasp-engine" --version 2>&1 | head -1)"

STAGE="${FASP_GPU_CHECK_STAGE:-all}"
case "$STAGE" in 1|2|all) ;; *) say "gpu-check: FASP_GPU_CHECK_STAGE=$STAGE: expected 1, 2 or all"; exit 2;; esac

# ---- stage 1: device, modules, one launch per kernel family, one fixture prune ----------------------
if [ "$STAGE" != 2 ]; then
  say ""
  say "-- stage 1: device, modules, kernel families, fixture prune (log stage1.log)"
  for t in modules_load_and_report_jit_time score_kernels_match_cpu topk_matches_cpu_with_ties \
           compact_gathers_and_scatters_match_cpu cholesky_factor_and_solves_match_cpu stats_match_cpu \
           forward_kernels_match_cpu restore_matches_cpu; do
    timeout 60 "$BUNDLE/gpu-tests" "cuda::$t" --exact --test-threads=1 --show-output >> "$LOG/stage1.log" 2>&1
    rc=$?
    if grep -q "SKIP (no CUDA device" "$LOG/stage1.log"; then
      say "   FAIL cuda::$t: no CUDA device ($(grep -m1 'SKIP (no CUDA device' "$LOG/stage1.log" | cut -c1-200))"
      say "== gpu-check stage 1 FAIL after $(elapsed) s"; exit 1
    fi
    if [ $rc -ne 0 ]; then
      say "   FAIL cuda::$t (rc $rc):"; grep -E "panicked|error" "$LOG/stage1.log" | tail -3 | sed 's/^/      /' | tee -a "$SUMMARY"
      say "== gpu-check stage 1 FAIL after $(elapsed) s"; exit 1
    fi
    say "   ok   cuda::$t"
  done
  grep -E '^JIT all modules' "$LOG/stage1.log" | sed 's/^/   /' | tee -a "$SUMMARY"
  S1="$(mktemp -d)"
  for dev in cpu cuda; do
    timeout 60 "$BUNDLE/fasp-engine" prune --model tests/fixtures/llama-gqa --out "$S1/$dev" \
      --calib tests/fixtures/llama-gqa/calib_ids.npy --sparsity 0.25 --device "$dev" -q >> "$LOG/stage1.log" 2>&1 ||
      { say "   FAIL prune llama-gqa --device $dev"; say "== gpu-check stage 1 FAIL after $(elapsed) s"; exit 1; }
  done
  if "$PY" - "$S1/cpu/fasp.json" "$S1/cuda/fasp.json" > "$LOG/stage1-prune.txt" 2>&1 <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
d = sum(len(set(la[k]) ^ set(lb[k])) // 2 for la, lb in zip(a["layers"], b["layers"]) for k in ("attn_kept_units", "mlp_kept_units"))
ok = d == 0 and b["backend"].startswith("cuda")
print("   %s   prune llama-gqa: %d units differ, backend %s" % ("ok" if ok else "FAIL", d, b["backend"]))
sys.exit(0 if ok else 1)
EOF
  then say "$(cat "$LOG/stage1-prune.txt")"
  else say "$(cat "$LOG/stage1-prune.txt")"; say "== gpu-check stage 1 FAIL after $(elapsed) s"; exit 1; fi
  rm -rf "$S1"
  say "   stage 1 passed in $(elapsed) s"
  if [ "$STAGE" = 1 ]; then say "== gpu-check stage 1 PASS in $(elapsed) s (logs in $LOG)"; exit 0; fi
fi

# ---- 2. GPU tests --------------------------------------------------------------------------------
# --show-output keeps each "test NAME ... ok" line whole and prints what passing tests printed after them
timeout 180 "$BUNDLE/gpu-tests" cuda:: --test-threads=1 --show-output > "$LOG/gpu-tests.log" 2>&1
rc=$?
say ""
say "-- GPU tests (rc $rc, $(elapsed) s so far; log gpu-tests.log)"
grep -E '^test .* \.\.\. ' "$LOG/gpu-tests.log" | sed -E 's/^test (.*) \.\.\. (.*)$/   \2\t\1/' | tee -a "$SUMMARY"
if grep -q 'SKIP (no CUDA device)' "$LOG/gpu-tests.log"; then
  say "   !! tests skipped for lack of a CUDA device:"
  grep 'SKIP (no CUDA device)' "$LOG/gpu-tests.log" | head -1 | sed 's/^/      /' | tee -a "$SUMMARY"
  FAIL=1
fi
grep -E '^JIT all modules|units differ|dense device forward|kept sets identical|^(opt-tiny|llama-mha|llama-gqa|fixture) ' "$LOG/gpu-tests.log" | sed 's/^/   /' | tee -a "$SUMMARY"
[ $rc -eq 0 ] || FAIL=1

# ---- 3. CLI: prune on CUDA vs CPU ------------------------------------------------------------------
say ""
say "-- CLI prune, sparsity 0.25, --device cpu vs cuda (logs cli-*.log)"
say "$(printf '   %-10s %9s %9s %10s %12s %12s %10s' fixture cpu_s cuda_s differ ppl_cpu ppl_cuda ppl_rel)"
CLI_TMP="$(mktemp -d)"
for m in opt-tiny llama-mha llama-gqa llama3 mistral qwen2 qwen3 gemma3; do
  for dev in cpu cuda; do
    s=$(date +%s%N)
    timeout 30 "$BUNDLE/fasp-engine" prune --model "tests/fixtures/$m" --out "$CLI_TMP/$m-$dev" \
      --calib "tests/fixtures/$m/calib_ids.npy" --sparsity 0.25 --device "$dev" \
      --eval tests/fixtures/eval.txt --eval-seqlen 16 -q > "$LOG/cli-$m-$dev.log" 2>&1
    echo "rc $? wall_ms $(( ($(date +%s%N) - s) / 1000000 ))" >> "$LOG/cli-$m-$dev.log"
  done
  row="$("$PY" - "$CLI_TMP/$m-cpu/fasp.json" "$CLI_TMP/$m-cuda/fasp.json" "$m" <<'EOF'
import json, sys
try:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
except Exception as e:
    print("   %-10s FAILED (no fasp.json: %s)" % (sys.argv[3], e)); sys.exit(1)
d = 0
for la, lb in zip(a["layers"], b["layers"]):
    for k in ("attn_kept_units", "mlp_kept_units"):
        d += len(set(la[k]) ^ set(lb[k])) // 2
pa, pb = a["eval"]["pruned"]["ppl"], b["eval"]["pruned"]["ppl"]
rel = abs(pb - pa) / pa
ok = rel <= 1e-3 and b["backend"].startswith("cuda")
print("   %-10s %9.2f %9.2f %10d %12.6f %12.6f %10.2e %s" % (sys.argv[3], a["total_seconds"], b["total_seconds"], d, pa, pb, rel, "ok" if ok else "FAILED"))
sys.exit(0 if ok else 1)
EOF
)"
  ok=$?
  say "$row"
  if [ $ok -ne 0 ]; then
    FAIL=1
    for dev in cpu cuda; do grep -m1 '^error' "$LOG/cli-$m-$dev.log" | sed "s/^/      $dev: /" | tee -a "$SUMMARY"; done
  fi
done
rm -rf "$CLI_TMP"

# ---- 4. benches (quick) ---------------------------------------------------------------------------
if [ "${FASP_GPU_CHECK_SKIP_BENCH:-0}" = 1 ]; then
  say ""; say "-- benches skipped (FASP_GPU_CHECK_SKIP_BENCH=1)"
else
  left=$(( 460 - $(elapsed) ))
  [ $left -gt 30 ] || left=30
  say ""
  say "-- kernel benches, quick mode, GPU time (log bench.log; ${left} s budget)"
  CRITERION_HOME="$(mktemp -d)" FASP_BENCH_QUICK=1 timeout "$left" "$BUNDLE/kernels-bench" --bench gpu/ > "$LOG/bench.log" 2>&1
  brc=$?
  [ $brc -eq 0 ] || say "   bench exit status $brc (124 = out of time; the table has what finished)"
  "$PY" - "$LOG/bench.log" <<'EOF' | tee -a "$SUMMARY"
import re, sys
name = None
rows = []
for line in open(sys.argv[1], errors="replace"):
    s = line.split("\r")[-1].strip()
    if s.startswith("gpu/") and "time:" not in s:
        name = s
    m = re.match(r"^(gpu/\S.*?)?\s*time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", s)
    if m:
        if m.group(1):
            name = m.group(1).strip()
        rows.append([name, m.group(3), ""])
    m = re.match(r"^thrpt:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", s)
    if m and rows:
        rows[-1][2] = m.group(2)
    if s.startswith("GPU:") or s.startswith("SKIP"):
        print("   " + s)
for n, t, th in rows:
    print("   %-62s %14s %18s" % (n, t, th))
EOF
fi

say ""
say "== gpu-check finished in $(elapsed) s: $([ $FAIL -eq 0 ] && echo PASS || echo FAIL) (logs in $LOG)"
exit $FAIL
