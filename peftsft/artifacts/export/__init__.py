"""merge / export (adapter | merged | gguf | gguf-lora + Ollama Modelfile), each verified against base + adapter.

Layout: formats/ (the registry: one module per format, each its export, verification and defaults), pipeline.py
(the session every export of a run shares, and the entry points), run_models.py (run dir → the models export needs),
merge.py (HF model dir), gguf/ (GGUF writer: architectures, vocab, quants, LoRA), single_file.py (a file staged
under a temporary name, renamed once checked), runtimes.py (transformers or llama.cpp, what a check runs in),
template.py (stop tokens, Ollama template), verify.py (the logit and token-id check), record.py (what was
verified, kept with the artifact), classification.py (the same for classification runs).
"""
