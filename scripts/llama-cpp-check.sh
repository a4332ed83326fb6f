#!/usr/bin/env bash
# Checks our GGUF files in llama.cpp itself (issue 13): llama.cpp (through llama-cpp-python, built
# from source once into a cached venv by scripts/llama-cpp-venv.sh) loads each file, and its
# perplexity, computed from its logits with the docs/spec.md §10 protocol (scripts/llama_cpp_ppl.py),
# matches `fasp-engine eval` on the same file and the same token ids: within 0.5% for F16 and 2% for
# Q8_0 (the issue's bounds). Exits non-zero on any miss, load failure or build failure.
#
# Both sides read the same windows: the committed evaluation ids of the real-weights tests
# (tests/fixtures/smollm2/eval_ids.npy, 4 x 512, and tests/fixtures/gemma3/eval_ids.npy, 1 x 1024:
# the head of $FASP_HOME/text/eval.txt, which tests/real_smollm2.rs and tests/gguf_gemma.rs check
# our tokenizer reproduces). llama.cpp's own tokenization of the text is printed for information.
#
# Models (made in a temporary directory from the assets of scripts/fetch-assets.sh):
#   SmolLM2-135M dense: the Q4_1 asset as it is, and converted to F16 and Q8_0 (`fasp-engine convert`);
#   SmolLM2-135M pruned 20% (FASP, 16 x 256 calibration tokens): `prune --format gguf --gguf-type f16`,
#   and that file converted to Q8_0;
#   Gemma-3 270M dense: the Q4_K_M asset as it is, and converted to F16 and Q8_0 (a pruned Gemma-3 is
#   not checked: it would add a prune of a 270M model with a 262k vocabulary to every CI run).
# The quantized assets (Q4_1, Q4_K_M) are held to 2%: llama.cpp multiplies them with activations
# rounded to 8 bits (Q8_1/Q8_K), where our engine dequantizes to f32.
#
#   FASP_HOME       asset cache (default $HOME/.cache/fasp-engine); the venv: $FASP_HOME/llama-venv
#   FASP_BIN        use this fasp-engine binary (else scripts/fasp-bin.sh builds one; FASP_PROFILE)
#   LLAMA_CHECK_GEMMA=0   skip the Gemma-3 rows
#
# Time on the 2-core AMD EPYC (24 GiB, no GPU): the first run builds the venv (see
# docs/inference.md, "The llama.cpp build"); with the venv cached, the check itself took 12.6 min
# wall (6 min CPU) with the machine loaded by other builds (load average 8-10), 8.6 min wall (8 min
# CPU) at load average ~2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FASP_HOME="${FASP_HOME:-$HOME/.cache/fasp-engine}"
export FASP_HOME
say() { echo "[llama-cpp-check] $*"; }
die() { echo "[llama-cpp-check] ERROR: $*" >&2; exit 1; }

SMOL="$FASP_HOME/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA="$FASP_HOME/gemma3-270m/gemma-3-270m-q4_k_m.gguf"
TEXT="$FASP_HOME/text/eval.txt"
CALIB="$FASP_HOME/text/calib.txt"
SMOL_IDS="$ROOT/tests/fixtures/smollm2/eval_ids.npy"
GEMMA_IDS="$ROOT/tests/fixtures/gemma3/eval_ids.npy"
for f in "$SMOL" "$TEXT" "$CALIB"; do
    [ -f "$f" ] || die "missing asset $f: run scripts/fetch-assets.sh first"
done

PY="$("$ROOT/scripts/llama-cpp-venv.sh")" || die "no llama-cpp-python venv (see the message above)"
BIN="$("$ROOT/scripts/fasp-bin.sh")" || die "could not build fasp-engine"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-cpp-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
NCHECK=0
FAILED=0

# check NAME FILE IDS SEQLEN TOLERANCE: both perplexities, one JSON line into $RESULTS
check() {
    local name="$1" file="$2" ids="$3" seqlen="$4" tol="$5" ours theirs
    NCHECK=$((NCHECK + 1))
    say "$name: fasp-engine eval"
    ours="$("$BIN" eval --model "$file" --tokens "$ids" --seqlen "$seqlen" --json --quiet)" \
        || { echo "[llama-cpp-check] $name: fasp-engine eval failed" >&2; FAILED=$((FAILED + 1)); return; }
    say "$name: llama.cpp"
    theirs="$("$PY" "$ROOT/scripts/llama_cpp_ppl.py" --model "$file" --tokens "$ids" --seqlen "$seqlen" --text "$TEXT")" \
        || { echo "[llama-cpp-check] $name: llama.cpp failed on $file" >&2; FAILED=$((FAILED + 1)); return; }
    "$PY" - "$name" "$file" "$tol" "$ours" "$theirs" >> "$RESULTS" <<'EOF' || FAILED=$((FAILED + 1))
import json, os, sys
name, path, tol, ours, theirs = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
rel = theirs["ppl"] / ours["ppl"] - 1.0
same = all(ours[k] == theirs[k] for k in ("seqlen", "windows", "predicted_tokens"))
ok = same and abs(rel) <= tol
print(json.dumps({"model": name, "bytes": os.path.getsize(path), "ours": ours["ppl"], "llama_cpp": theirs["ppl"],
                  "rel": rel, "tol": tol, "ok": ok, "seqlen": ours["seqlen"], "windows": ours["windows"],
                  "predicted_tokens": ours["predicted_tokens"],
                  "tokenizer": theirs.get("llama_cpp_tokenizer_agrees_on", "")}))
if not same:
    print(f"[llama-cpp-check] {name}: windows differ: ours {ours}, llama.cpp {theirs}", file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
    tail -n 1 "$RESULTS"
}

# convert SRC OUT TYPE: our GGUF writer, from any model our reader takes
convert() { "$BIN" convert --model "$1" --out "$2" --gguf-type "$3" >/dev/null; }

check "smollm2 dense q4_1 (asset)" "$SMOL" "$SMOL_IDS" 512 0.02
if "$BIN" convert --help 2>/dev/null | grep -q -- "--gguf-type"; then
    convert "$SMOL" "$WORK/smol-f16.gguf" f16 || die "convert to f16 failed"
    check "smollm2 dense f16" "$WORK/smol-f16.gguf" "$SMOL_IDS" 512 0.005
    convert "$SMOL" "$WORK/smol-q8_0.gguf" q8_0 || die "convert to q8_0 failed"
    check "smollm2 dense q8_0" "$WORK/smol-q8_0.gguf" "$SMOL_IDS" 512 0.02
    say "pruning SmolLM2 20% (fasp, 16 x 256 calibration tokens) to GGUF f16"
    "$BIN" prune --model "$SMOL" --calib "$CALIB" --nsamples 16 --seqlen 256 --sparsity 0.2 --device cpu \
        --format gguf --gguf-type f16 --out "$WORK/smol-p20-f16.gguf" --quiet >/dev/null || die "prune --format gguf failed"
    check "smollm2 pruned 20% f16" "$WORK/smol-p20-f16.gguf" "$SMOL_IDS" 512 0.005
    convert "$WORK/smol-p20-f16.gguf" "$WORK/smol-p20-q8_0.gguf" q8_0 || die "convert of the pruned model to q8_0 failed"
    check "smollm2 pruned 20% q8_0" "$WORK/smol-p20-q8_0.gguf" "$SMOL_IDS" 512 0.02
else
    say "this fasp-engine has no GGUF output (convert --gguf-type): only the asset is checked"
fi
if [ "${LLAMA_CHECK_GEMMA:-1}" != 0 ]; then
    if [ -f "$GEMMA" ]; then
        check "gemma3-270m dense q4_k_m (asset)" "$GEMMA" "$GEMMA_IDS" 1024 0.02
        if "$BIN" convert --help 2>/dev/null | grep -q -- "--gguf-type"; then
            convert "$GEMMA" "$WORK/gemma-f16.gguf" f16 || die "convert of Gemma-3 to f16 failed"
            check "gemma3-270m dense f16" "$WORK/gemma-f16.gguf" "$GEMMA_IDS" 1024 0.005
            rm -f "$WORK/gemma-f16.gguf"
            convert "$GEMMA" "$WORK/gemma-q8_0.gguf" q8_0 || die "convert of Gemma-3 to q8_0 failed"
            check "gemma3-270m dense q8_0" "$WORK/gemma-q8_0.gguf" "$GEMMA_IDS" 1024 0.02
        fi
    else
        say "no Gemma-3 asset at $GEMMA: skipped"
    fi
fi

"$PY" - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("\n| model | file MB | fasp-engine ppl | llama.cpp ppl | diff | bound | |")
print("|---|---:|---:|---:|---:|---:|---|")
for r in rows:
    print(f"| {r['model']} | {r['bytes']/1e6:.1f} | {r['ours']:.4f} | {r['llama_cpp']:.4f} | {100*r['rel']:+.3f}% | "
          f"{100*r['tol']:.1f}% | {'ok' if r['ok'] else 'MISS'} |")
if rows:
    r = rows[0]
    print(f"(seqlen {r['seqlen']}, windows {r['windows']}, predicted tokens {r['predicted_tokens']} for SmolLM2; "
          f"llama.cpp's own tokenizer on the text agrees on {r['tokenizer']})")
EOF
echo "llama-cpp-check: $((NCHECK - FAILED)) passed, $FAILED failed"
[ "$FAILED" = 0 ] || die "llama.cpp and fasp-engine disagree (or a run failed): see above"
say "all models within bounds"
