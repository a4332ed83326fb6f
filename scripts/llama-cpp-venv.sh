#!/usr/bin/env bash
# Creates (once) the cached virtual environment with llama-cpp-python, pinned and hash-checked,
# built from its PyPI sdist (which vendors llama.cpp's source) for this machine's CPU only, and
# prints its python on stdout (everything else goes to stderr). Later runs reuse it in seconds.
#
# The build compiles llama.cpp (about 140 C/C++ files) with the smallest set of targets the Python
# package needs: no multimodal library (LLAVA_BUILD=OFF), no examples, tests, tools or server;
# GGML_NATIVE=ON (-march=native: the venv is for this machine). Measured on the 2-core AMD EPYC
# (24 GiB, no GPU): see docs/inference.md ("The llama.cpp build").
#
#   LLAMA_VENV   where the venv lives (default: $FASP_HOME/llama-venv, FASP_HOME default
#                $HOME/.cache/fasp-engine)
#   PYTHON       python >= 3.9 used to create it (default: python3)
#   LLAMA_BUILD_JOBS  parallel compile jobs (default: the number of CPUs)
#
# The venv is built in LLAMA_VENV.tmp and renamed into place only once llama_cpp imports, with a
# stamp naming the pin and the build flags; a stamp that differs (a new pin) rebuilds it. On a
# failure the build log is kept and its path printed, and nothing is left at LLAMA_VENV.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI (pip refuses a download that differs)
LLAMA_CPP_PYTHON_SHA="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# its runtime dependencies, pinned (installed before it; it is installed with --no-deps)
DEPS=(numpy==2.4.6 typing-extensions==4.16.0 diskcache==5.6.3 jinja2==3.1.6 MarkupSafe==3.0.4)
CMAKE_FLAGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

FASP_HOME="${FASP_HOME:-$HOME/.cache/fasp-engine}"
VENV="${LLAMA_VENV:-$FASP_HOME/llama-venv}"
PYTHON="${PYTHON:-python3}"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
STAMP="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sha256:$LLAMA_CPP_PYTHON_SHA ${DEPS[*]} cmake:$CMAKE_FLAGS"

say() { echo "[llama-cpp-venv] $*" >&2; }
die() { echo "[llama-cpp-venv] ERROR: $*" >&2; exit 1; }

if [ -f "$VENV/.fasp-stamp" ] && [ "$(cat "$VENV/.fasp-stamp")" = "$STAMP" ] \
    && "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
    say "reusing $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
    echo "$VENV/bin/python"
    exit 0
fi

command -v "$PYTHON" >/dev/null || die "python not found: $PYTHON (set PYTHON)"
command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler (cc/gcc): llama.cpp is built from source"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++/g++): llama.cpp is built from source"

mkdir -p "$(dirname "$VENV")"
TMP="$VENV.tmp"
LOG="$(dirname "$VENV")/llama-venv-build.log"
rm -rf "$TMP"
say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (llama.cpp from source, $JOBS jobs) into $VENV"
say "this takes 10-40 min on 2 cores, once; the log: $LOG"
start=$(date +%s)
{
    echo "== $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo ?)"
    "$PYTHON" -m venv "$TMP"
    "$TMP/bin/python" -m pip install --disable-pip-version-check --no-input "${DEPS[@]}"
    echo "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION --hash=sha256:$LLAMA_CPP_PYTHON_SHA" > "$TMP/requirements.txt"
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        "$TMP/bin/python" -m pip install --disable-pip-version-check --no-input --no-cache-dir \
        --no-binary llama-cpp-python --no-deps --require-hashes -r "$TMP/requirements.txt"
    "$TMP/bin/python" -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, 'imports')"
    echo "== $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo ?)"
} > "$LOG" 2>&1 || {
    rm -rf "$TMP"
    tail -n 25 "$LOG" >&2
    die "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION failed after $(( $(date +%s) - start )) s (full log: $LOG; the lines above are its end). It needs PyPI, a C/C++ compiler and ~2 GB of disk in \$TMPDIR. Set FASP_LLAMA_CPP=0 to skip the llama.cpp check in scripts/test.sh."
}
echo "$STAMP" > "$TMP/.fasp-stamp"
rm -rf "$VENV"
mv "$TMP" "$VENV"
say "built in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1 || die "$VENV was moved into place but llama_cpp does not import"
echo "$VENV/bin/python"
