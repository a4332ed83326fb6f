#!/usr/bin/env bash
# Inference speed of dense and FASP-pruned (10/20/30%) SmolLM2-135M (issue 13), on the same threads:
#  - llama.cpp (llama-cpp-python, the cached venv of scripts/llama-cpp-venv.sh) on our GGUF output,
#    F16 and Q8_0: prompt processing of 512 tokens and generation of 128 tokens (tokens/s, best of
#    --reps after a warm-up, scripts/llama_cpp_speed.py), the file size and the process's peak RSS;
#  - fasp-engine's own forward (`fasp-engine eval`) on the dense model and on the truly compact form
#    (`prune --compact`): prompt processing only, timed as (t(3 windows) - t(1 window)) / 2 windows
#    of 512 so that loading is not counted, with the peak RSS of the 1-window run. fasp-engine has
#    no generation path (no KV cache): it has no tokens/s for generation to measure.
# Writes docs/inference-speed.csv and docs/inference-speed.svg (matplotlib, installed into the
# venv on first use) and prints a markdown table for docs/inference.md.
#
#   scripts/inference-speed.sh [--threads T] [--reps N] [--out-dir DIR]   (defaults: nproc, 5, docs)
#   FASP_HOME, FASP_BIN, FASP_PROFILE as in scripts/llama-cpp-check.sh.
# Takes ~15-25 min on the 2-core AMD EPYC (three prunes, two conversions each, 8 llama.cpp runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FASP_HOME="${FASP_HOME:-$HOME/.cache/fasp-engine}"
export FASP_HOME
THREADS="$(nproc)"
REPS=5
OUT_DIR="$ROOT/docs"
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "inference-speed: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { echo "[inference-speed] $*" >&2; }
die() { echo "[inference-speed] ERROR: $*" >&2; exit 1; }

SMOL="$FASP_HOME/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
CALIB="$FASP_HOME/text/calib.txt"
IDS="$ROOT/tests/fixtures/smollm2/eval_ids.npy"
[ -f "$SMOL" ] && [ -f "$CALIB" ] || die "missing assets: run scripts/fetch-assets.sh first"
PY="$("$ROOT/scripts/llama-cpp-venv.sh")"
"$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install --disable-pip-version-check -q matplotlib==3.10.7 >&2 \
    || die "could not install matplotlib into the venv"
BIN="$("$ROOT/scripts/fasp-bin.sh")"
"$BIN" convert --help 2>/dev/null | grep -q -- "--gguf-type" || die "this fasp-engine writes no GGUF (convert --gguf-type)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/inference-speed.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows.jsonl"
: > "$ROWS"

# the models: dense F16/Q8_0 from the asset; per sparsity, FASP (16 x 256 calibration tokens) to
# GGUF F16, that converted to Q8_0, and the compact form for fasp-engine's own forward
say "making the models in $WORK"
"$BIN" convert --model "$SMOL" --out "$WORK/dense-f16.gguf" --gguf-type f16 >/dev/null
"$BIN" convert --model "$SMOL" --out "$WORK/dense-q8_0.gguf" --gguf-type q8_0 >/dev/null
for s in 10 20 30; do
    say "pruning ${s}%"
    "$BIN" prune --model "$SMOL" --calib "$CALIB" --nsamples 16 --seqlen 256 --sparsity "0.$s" --device cpu \
        --format gguf --gguf-type f16 --out "$WORK/p$s-f16.gguf" --quiet >/dev/null
    "$BIN" convert --model "$WORK/p$s-f16.gguf" --out "$WORK/p$s-q8_0.gguf" --gguf-type q8_0 >/dev/null
    "$BIN" prune --model "$SMOL" --calib "$CALIB" --nsamples 16 --seqlen 256 --sparsity "0.$s" --device cpu \
        --dtype f16 --compact --out "$WORK/p$s-compact" --quiet >/dev/null
done

# ours MODEL WINDOWS: wall seconds and peak RSS (MiB) of one `eval` run
ours() {
    local log="$WORK/time.log"
    RAYON_NUM_THREADS="$THREADS" /usr/bin/time -v -o "$log" "$BIN" eval --model "$1" --tokens "$IDS" --seqlen 512 \
        --max-windows "$2" --json --quiet >/dev/null
    awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; w=s}
                /Maximum resident set size/ {r=$2/1024} END {printf "%.3f %.1f\n", w, r}' "$log"
}

for name in dense p10 p20 p30; do
    sp=0; [ "$name" = dense ] || sp="${name#p}"
    for q in f16 q8_0; do
        say "llama.cpp: $name $q"
        "$PY" "$ROOT/scripts/llama_cpp_speed.py" --model "$WORK/$name-$q.gguf" --tokens "$IDS" \
            --threads "$THREADS" --reps "$REPS" \
            | "$PY" -c "import json,sys; r=json.load(sys.stdin); r.update(engine='llama.cpp', sparsity=$sp, type='$q'); print(json.dumps(r))" >> "$ROWS"
    done
    # fasp-engine: the dense F16 GGUF, or the compact form (f16 weights; computed in f32 either way)
    m="$WORK/$name-compact"; [ "$name" = dense ] && m="$WORK/dense-f16.gguf"
    say "fasp-engine: $name"
    best=""
    for _ in $(seq "$REPS"); do
        read -r t1 rss < <(ours "$m" 1)
        read -r t3 _ < <(ours "$m" 3)
        best="$best $t1,$t3,$rss"
    done
    bytes=$(du -sb "$m" | cut -f1)
    "$PY" - "$best" "$sp" "$bytes" "$THREADS" >> "$ROWS" <<'EOF'
import json, sys
runs = [tuple(map(float, r.split(","))) for r in sys.argv[1].split()]
# best of the repetitions for each, as for llama.cpp
t1, t3 = min(r[0] for r in runs), min(r[1] for r in runs)
print(json.dumps({"engine": "fasp-engine", "sparsity": int(sys.argv[2]), "type": "f32 compute",
                  "bytes": int(sys.argv[3]), "threads": int(sys.argv[4]), "pp_tok_s": 2 * 512 / (t3 - t1),
                  "tg_tok_s": None, "peak_rss_mib": min(r[2] for r in runs), "t1_s": t1, "t3_s": t3}))
EOF
done

mkdir -p "$OUT_DIR"
"$PY" - "$ROWS" "$OUT_DIR" "$THREADS" <<'EOF'
import csv, json, os, sys
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
rows = [json.loads(l) for l in open(sys.argv[1])]
out, threads = sys.argv[2], sys.argv[3]
cols = ["engine", "type", "sparsity", "bytes", "pp_tok_s", "tg_tok_s", "peak_rss_mib"]
with open(os.path.join(out, "inference-speed.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in rows:
        w.writerow([r[c] if r.get(c) is not None else "" for c in cols])
dense = {(r["engine"], r["type"]): r for r in rows if r["sparsity"] == 0}
print(f"| engine | type | pruned | file MB | pp512 tok/s | vs dense | tg128 tok/s | vs dense | peak RSS MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    d = dense[(r["engine"], r["type"])]
    tg = f"{r['tg_tok_s']:.1f} | {r['tg_tok_s'] / d['tg_tok_s']:.2f}x" if r.get("tg_tok_s") else "— | —"
    print(f"| {r['engine']} | {r['type']} | {r['sparsity']}% | {r['bytes'] / 1e6:.1f} | {r['pp_tok_s']:.1f} | "
          f"{r['pp_tok_s'] / d['pp_tok_s']:.2f}x | {tg} | {r['peak_rss_mib']:.0f} |")
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for (eng, typ), style in [(("llama.cpp", "f16"), "o-"), (("llama.cpp", "q8_0"), "s-"), (("fasp-engine", "f32 compute"), "^--")]:
    sel = sorted((r for r in rows if r["engine"] == eng and r["type"] == typ), key=lambda r: r["sparsity"])
    if not sel:
        continue
    xs = [r["sparsity"] for r in sel]
    axes[0].plot(xs, [r["pp_tok_s"] / sel[0]["pp_tok_s"] for r in sel], style, label=f"{eng} {typ}")
    if sel[0].get("tg_tok_s"):
        axes[1].plot(xs, [r["tg_tok_s"] / sel[0]["tg_tok_s"] for r in sel], style, label=f"{eng} {typ}")
for ax, t in zip(axes, ["prompt processing (512 tokens)", "generation (128 tokens)"]):
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("FASP sparsity (%)")
    ax.set_ylabel("tokens/s relative to dense")
    ax.set_title(t)
    ax.set_xticks([0, 10, 20, 30])
    ax.legend()
fig.suptitle(f"SmolLM2-135M, {threads} threads, 2-core AMD EPYC (no GPU)")
fig.tight_layout()
fig.savefig(os.path.join(out, "inference-speed.svg"), metadata={"Date": None})
EOF
say "wrote $OUT_DIR/inference-speed.csv and $OUT_DIR/inference-speed.svg"
