# The README's two commands. Both install what they need into .venv first (idempotent, fast when done).
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup  ## train the default recipe on the embedded SmolLM2 (CPU, offline, a few minutes)
	.venv/bin/python -m peftsft run recipes/llama-chat-lora.toml --overwrite

test: setup  ## every test that can run on this machine (gpu-marked ones skip without CUDA)
	.venv/bin/python -m pytest -q
