"""`--format merged` (and `merge`): the adapter folded into a float32 copy of the base, saved in `--dtype` as a
standard model dir, checked by loading it with plain transformers (upcast, so only the stored weights differ)."""

from __future__ import annotations

from pathlib import Path

from peftsft.artifacts.export.formats.base import ExportJob, Format
from peftsft.core.rundir import write_dir

DTYPES = ("bfloat16", "float16", "float32")


def export(session, job: ExportJob) -> Path:
    from peftsft.artifacts.export.merge import name_base_model, save_merged

    run, dtype = session.run, job.dtype or default_dtype(session.run)

    def fill(tmp: Path) -> None:
        save_merged(session.merged, session.tokenizer, tmp, dtype)
        name_base_model(tmp, run.recipe.model.base_id)
        run.dir.copy_recipe(tmp)
        checked = len(session.checks)
        session.check(f"merged {dtype}", dtype, lambda: reload(tmp), job.out)
        session.seal(tmp, job, checked)
        tmp.chmod(0o755)

    write_dir(job.out, fill)
    return session.done(job.out)


def reload(directory: Path):
    """Exactly what a user does: plain transformers, nothing else."""
    from peftsft.artifacts.export.runtimes import TransformersRuntime

    return TransformersRuntime(*load_merged_dir(directory))


def load_merged_dir(directory: Path):
    """(model in float32, tokenizer) of a merged model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(directory)


def default_dtype(run) -> str:
    """The recipe's [model] dtype when it names one, else the base checkpoint's own."""
    from peftsft.artifacts.export.run_models import tuned_config

    if run.recipe.model.dtype != "auto":
        return run.recipe.model.dtype
    name = str(getattr(tuned_config(run), "dtype", None) or "float32").removeprefix("torch.")
    return name if name in DTYPES else "float32"


FORMAT = Format(
    name="merged",
    description="a standard Hugging Face model dir with the adapter folded in",
    export=export,
    default_name=lambda run_name, quant: "merged",
    options=frozenset({"dtype"}),
    merges=True,
)
