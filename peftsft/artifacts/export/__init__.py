"""merge / export (adapter | merged | gguf | gguf-lora + Ollama Modelfile), each verified against base + adapter.

Layout: runs.py (run dir → models), merge.py (HF model dir), gguf/ (GGUF writer: architectures, vocab, quants,
LoRA), to_gguf.py (the verified GGUF exports), runtimes.py (transformers or llama.cpp, what a check runs in),
template.py (stop tokens, Ollama template), verify.py (the logit and token-id check), pipeline.py (atomic, verified
exports of chat runs), classification.py (the same for classification runs), formats.py (the names the CLI offers).
"""
