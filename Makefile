# The README's two commands. Both install what they need into .venv first (idempotent, fast when done).
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast mutation

setup:
	bash scripts/setup.sh

demo: setup  ## train the default recipe on the embedded SmolLM2 (CPU, offline, a few minutes)
	.venv/bin/python -m peftsft run recipes/llama-chat-lora.toml --overwrite

test: setup  ## every test that can run on this machine (gpu-marked ones skip without CUDA)
	.venv/bin/python -m pytest -q

test-fast: setup  ## the fast lane for development: every test not marked slow (a few minutes)
	.venv/bin/python -m pytest -q -m "not slow"

# Mutation testing ([tool.mutmut] in pyproject.toml says what is mutated and by which tests): not part of `make test`.
# Results stay in mutants/: a rerun checks only mutants without a result. MUTANTS="peftsft.data.*" (names or globs,
# see `mutmut results`) checks just those, again even where they have one (after a test was added, say).
mutation: setup
	.venv/bin/mutmut --version >/dev/null 2>&1 || .venv/bin/python -m pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 nice -n 10 .venv/bin/mutmut run --max-children 2 $(MUTANTS)
	.venv/bin/python scripts/mutation_report.py
