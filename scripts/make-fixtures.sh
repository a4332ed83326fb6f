#!/usr/bin/env bash
# Regenerates tests/fixtures/ (tiny random OPT / LLaMA / llama3 / Mistral / Qwen2 / Qwen3 /
# Gemma-3 models, tokenizer, texts and FASP reference values). Idempotent: reuses the venv when
# its pins are installed. Then builds the engine (FASP_PROFILE, default dev: the tests' build),
# prunes each family fixture with it and stores transformers' logits of the written outputs
# (`make_fixtures.py --roundtrip`): the written HF output must load in transformers with
# nothing dropped, and tests/families.rs checks our forward gives the same logits on it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-fixtures"
PY="${PYTHON:-python3}"
PINS=(torch==2.9.1 transformers==4.57.6 safetensors==0.7.0 numpy==2.3.5 tokenizers==0.22.2)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "${PINS[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
then
  "$VENV/bin/pip" install --disable-pip-version-check -q "${PINS[@]}"
fi

cd "$ROOT"
PYTHONHASHSEED=0 "$VENV/bin/python" scripts/make_fixtures.py
BIN="$(FASP_PROFILE="${FASP_PROFILE:-dev}" scripts/fasp-bin.sh)"
PYTHONHASHSEED=0 "$VENV/bin/python" scripts/make_fixtures.py --roundtrip "$BIN"
du -sh tests/fixtures
