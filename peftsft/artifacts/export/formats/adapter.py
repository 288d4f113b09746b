"""`--format adapter`: the run's adapter dir, cleaned (PEFT files, tokenizer, template) and checked by reloading it
over the base exactly as training had it (the reference itself, so it must match to float32 rounding)."""

from __future__ import annotations

import shutil
from pathlib import Path

from peftsft.artifacts.export.formats.base import ExportJob, Format
from peftsft.core.rundir import write_dir

# what a clean PEFT adapter dir holds (training may leave other files beside them)
ADAPTER_FILES = (
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json", "model.safetensors",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "README.md",
)  # fmt: skip


def export(session, job: ExportJob) -> Path:
    run = session.run

    def fill(tmp: Path) -> None:
        for name in ADAPTER_FILES:
            if (run.adapter_dir / name).is_file():
                shutil.copy2(run.adapter_dir / name, tmp / name)
        run.dir.copy_recipe(tmp)
        checked = len(session.checks)
        session.check("adapter", "float32", lambda: reload(session, tmp), job.out)
        session.seal(tmp, job, checked)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared

    write_dir(job.out, fill)
    return session.done(job.out)


def reload(session, directory: Path):
    """The exported adapter over the run's base, with the tokenizer saved beside it: what a user loads."""
    from transformers import AutoTokenizer

    from peftsft.artifacts.export.run_models import load_tuned
    from peftsft.artifacts.export.runtimes import TransformersRuntime

    return TransformersRuntime(load_tuned(session.run, adapter_dir=directory), AutoTokenizer.from_pretrained(directory))


FORMAT = Format(
    name="adapter",
    description="the adapter dir (PEFT safetensors + tokenizer with the training chat template)",
    export=export,
    default_name=lambda run_name, quant: "adapter",
)
