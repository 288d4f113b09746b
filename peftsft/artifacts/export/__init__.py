"""merge / export (adapter | merged | gguf + Ollama Modelfile), each verified by logits against base + adapter.

Layout: runs.py (run dir → models), merge.py (HF model dir), gguf.py (GGUF writer), template.py (stop tokens,
Ollama template), verify.py (the logit check), pipeline.py (atomic, verified exports of chat runs),
classification.py (the same for classification runs), formats.py (the names the CLI offers).
"""
