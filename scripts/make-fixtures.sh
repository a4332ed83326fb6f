#!/usr/bin/env bash
# Regenerates tests/fixtures/ (tiny random OPT / LLaMA models, tokenizer, texts and
# FASP reference values). Idempotent: reuses the venv when its pins are installed.
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
du -sh tests/fixtures
