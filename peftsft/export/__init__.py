"""merge / export (adapter | merged | gguf + Ollama Modelfile), each verified by logits against base + adapter.

Layout: runs.py (run dir → models), merge.py (HF model dir), gguf.py (GGUF writer), template.py (stop tokens,
Ollama template), verify.py (the logit check), pipeline.py (atomic, verified exports), commands.py (CLI).
Heavy libraries are imported lazily, so registering the subcommands costs nothing.
"""

from .commands import add_commands, export_after_training

__all__ = ["add_commands", "export_after_training"]
