"""The export format interface: what every format (adapter, merged, gguf, gguf-lora) provides.

A format writes its artifact beside the target under a temporary name, re-loads it from there, has the session
check it against base + adapter, and only then moves it into place: a failed check, an error or Ctrl-C leaves
nothing at --out. The session (pipeline.Exporter) is shared by every export of one run, so the reference outputs
and the merged model are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class ExportJob:
    format: str
    out: Path
    quant: str = "f16"  # formats that take "quant" only
    dtype: str | None = None  # formats that take "dtype" only; None: the base checkpoint's own dtype
    modelfile: bool = True  # formats that take "modelfile": an Ollama Modelfile beside the file


def _nothing_beside(job: ExportJob, run: Any) -> list[Path]:
    return []


@dataclass(frozen=True)
class Format:
    """One way of exporting a run.

    `export(session, job) -> path` writes, verifies and places the artifact (see the module docstring);
    `default_name(run_name, quant)` is its name under <run>/exports/ when a recipe's `[export] formats` asks for it;
    `companions(job, run)` lists the files written beside `job.out` (they must not exist either).
    `options` says which of the flags "quant", "dtype", "modelfile" apply; `single_file`: a .gguf file, not a
    model dir; `merges`: the adapter is folded into the base (the strategy must be mergeable); `chat_only`: it
    holds causal LMs (a classification run has none); `pushable`: `push` can publish it on its own.
    """

    name: str
    description: str
    export: Callable[[Any, ExportJob], Path]
    default_name: Callable[[str, str], str]
    options: frozenset[str] = frozenset()
    single_file: bool = False
    merges: bool = False
    chat_only: bool = False
    pushable: bool = True
    companions: Callable[[ExportJob, Any], list[Path]] = _nothing_beside
