"""What every task's run does around training: open the run dir, train with guards, save, sum up."""

from __future__ import annotations

import json
import resource
from pathlib import Path

from rich.console import Console

from peftsft.base_identity import detect_base_identity
from peftsft.core.config import Recipe, recipe_to_toml
from peftsft.core.errors import TrainingStopped
from peftsft.core.rundir import RunDir, write_text
from peftsft.training.callbacks import NonFiniteError, StopOnInterrupt
from peftsft.training.report import versions
from peftsft.training.resume import check_same_recipe, checkpoint_to_resume


def open_run_dir(recipe: Recipe, rundir: RunDir, console: Console, overwrite: bool, resume, force: bool) -> Path | None:
    """Create the run dir (or check a resumed one) and write the resolved recipe; the checkpoint to resume."""
    fill_base_identity(recipe, console)
    resolved = recipe_to_toml(recipe)
    checkpoint = None
    if resume:
        checkpoint = checkpoint_to_resume(rundir, resume)
        check_same_recipe(rundir, resolved, force)
        console.print(f"resuming from {checkpoint}")
    else:
        rundir.create(overwrite)
    rundir.write_recipe(resolved)
    rundir.write_status("running")
    return checkpoint


def fill_base_identity(recipe: Recipe, console: Console) -> None:
    """Fill `[model] base_id` (and `license`) from the source when the recipe leaves them out, once per run, so
    recipe.resolved.toml, the adapter config and the model card all name the base's public id."""
    if recipe.model.base_id is None or recipe.model.license is None:
        identity = detect_base_identity(recipe.model.source)
        if recipe.model.base_id is None and identity.id is not None:
            recipe.model.base_id = identity.id
            console.print(f"base id: {identity.id} (from {identity.found_in})")
        if recipe.model.license is None and identity.license is not None:
            recipe.model.license = identity.license
    if recipe.model.base_id is None:
        console.print("[bold yellow]warning:[/] the base model's Hub id is unknown: the adapter will name the local "
                      "path of its base; set \\[model] base_id = \"OWNER/NAME\" to share it")


def train_guarded(trainer, interrupt: StopOnInterrupt, checkpoint: Path | None, rundir: RunDir):
    """trainer.train(), turning a NaN/inf stop or a Ctrl-C into a message that says how to resume."""
    try:
        with interrupt:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteError as exc:
        rundir.write_status("stopped", f"non-finite training: {exc}")
        saved = rundir.checkpoints()
        raise TrainingStopped(
            f"training stopped: {exc}; the update was not applied",
            hint=f"last good checkpoint: {saved[-1]}. Resume from it with a lower learning rate: "
            "python -m peftsft run RECIPE --resume --force --set training.learning_rate=<lower>"
            if saved
            else "lower [training] learning_rate (set save_steps to keep checkpoints) and run again with --overwrite",
        ) from None
    if interrupt.requested:
        rundir.write_status("stopped", f"interrupted (Ctrl-C) at step {trainer.state.global_step}")
        raise TrainingStopped(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved: {rundir.checkpoints()[-1]}",
            hint="continue with: python -m peftsft run RECIPE --resume",
            exit_code=130,
        )
    return result


def peak_memory_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def save_adapter(model, tokenizer, directory: Path, strategy=None, base_id: str | None = None) -> None:
    """PEFT adapter (safetensors; as the strategy saves it) + tokenizer with the exact chat template used in training.

    The adapter config names the base by its public id (`base_id`) so that it loads on any machine; peftsft itself
    reloads the base from recipe.resolved.toml's `[model] source`. peft's placeholder README goes: the model card
    (peftsft.artifacts.card) is written from the finished run."""
    _name_local_base(model)
    if strategy is not None:
        strategy.save(model, directory)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if base_id is not None:
        name_base_model(directory, base_id)
    (directory / "README.md").unlink(missing_ok=True)


def _name_local_base(model) -> None:
    """An adapter loaded from a run dir names its base by the public id; peft's save then asks the Hub whether that
    base's vocabulary changed (a network lookup, and a warning offline). Naming the local base it was loaded on
    answers the question from disk; the saved config names the public id again (name_base_model)."""
    local = getattr(getattr(model, "config", None), "name_or_path", None)
    if not local or not (Path(local) / "config.json").is_file():
        return
    for config in getattr(model, "peft_config", {}).values():
        named = config.base_model_name_or_path
        if not named or not (Path(named) / "config.json").is_file():
            config.base_model_name_or_path = local


def name_base_model(directory: Path, base_id: str) -> None:
    """Set adapter_config.json's base_model_name_or_path (peft writes the local path it was loaded from)."""
    config_file = directory / "adapter_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_id
        write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")


def run_summary(recipe: Recipe, trainer, result, eval_metrics: dict, *, task: str, model_spec: str,
                strategy_name: str, params: dict, device: str, train_seconds: float, stats) -> dict:
    """summary.json's keys every task shares; a task adds its own (levers, accuracy, …) beside them."""
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = trainer.state.num_input_tokens_seen
    return {
        "run_dir": str(recipe.run_dir),
        "task": task,
        "model": model_spec,
        "base_id": recipe.model.base_id,
        "strategy": strategy_name,
        **params,
        "device": device,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / max(train_seconds, 1e-9), 2),
        "peak_memory_bytes": peak_memory_bytes(device),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"),
        "best_metric": trainer.state.best_metric,  # set when early stopping is on
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "data": stats.as_dict(),
        "versions": versions(),
    }
