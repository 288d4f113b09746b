# The README's two commands. Each installs what it needs into .venv first (scripts/setup.sh: idempotent, fast when
# done): `make demo` only what the demo runs; `make test` everything the tests and the docs build need.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export NO_MKDOCS_2_WARNING := 1  # mkdocs-material's banner about its successor, printed on every build

.PHONY: setup demo test test-fast docs gguf mutation

setup:  ## everything `make test` installs
	bash scripts/setup.sh test

demo:  ## train the default recipe on the embedded SmolLM2 (CPU, offline, a few minutes)
	bash scripts/setup.sh demo
	.venv/bin/python -m peftsft run recipes/llama-chat-lora.toml --overwrite

test: docs  ## the docs build (a broken link fails it), then every test that can run here (gpu ones skip)
	.venv/bin/python -m pytest -q

test-fast: setup  ## the fast lane for development: every test not marked slow (a few minutes)
	.venv/bin/python -m pytest -q -m "not slow"

# Mutation testing ([tool.mutmut] in pyproject.toml says what is mutated and by which tests): not part of `make test`.
# A seeded random sample of each entry's mutants (scripts/mutation.py; on 2 cores well inside two hours, measured in
# docs/tests.md); MUTATION_ARGS="--all" checks every mutant, "--recheck" the sample's survivors again (after a test
# was added).
mutation: setup
	.venv/bin/mutmut --version >/dev/null 2>&1 || .venv/bin/python -m pip install -q -e ".[mutation]"
	nice -n 10 .venv/bin/python scripts/mutation.py $(MUTATION_ARGS)
	.venv/bin/python scripts/mutation_report.py

docs: setup  ## the documentation site into site/ (mkdocs.yml; --strict: any warning, a broken link or anchor, fails)
	.venv/bin/mkdocs build --strict

gguf:  ## llama-cpp-python: GGUF K-quants (q4_k_m, …) and verification of GGUF exports in llama.cpp
	bash scripts/setup.sh gguf
