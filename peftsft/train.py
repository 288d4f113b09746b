"""The main job: recipe → model → strategy → data → TRL SFTTrainer → run dir. Reads top to bottom."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from rich.console import Console

from .callbacks import (
    MetricsLog,
    NonFiniteError,
    NonFiniteGuard,
    RichProgress,
    SealCheckpoints,
    StopOnInterrupt,
    TokenRate,
)
from .config import Recipe, gradient_accumulation, recipe_to_toml
from .data import DataStats, build_datasets
from .data.build import apply_template
from .data.contract import preflight
from .generation import answer_prompts
from .levers import Levers, resolve_levers, set_adapter_dtype, set_loss_head
from .models import load_model, pick_device, quantized_footprint
from .report import plot_loss, versions, write_samples
from .distributed import console_for, on_main, process_state, world_size
from .errors import TrainingStopped
from .resume import check_same_recipe, checkpoint_to_resume, checkpoints
from .rundir import prepare_run_dir, write_dir, write_json, write_text
from .strategies import get_strategy, trainable_summary
from .strategies.registry import strategy_optimizer, validate_params


def run(
    recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None, force: bool = False
) -> dict:
    """Train per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    from transformers import set_seed

    if recipe.task == "classification":  # an encoder + classification head, trained by the transformers Trainer
        from .classify import run_classification

        return run_classification(recipe, console, overwrite, resume, force)
    device = pick_device(recipe.training.device)
    state = process_state(device)
    gradient_accumulation(recipe.training, state.num_processes)  # a global batch this launch cannot split fails now
    console = console_for(state, console)
    run_dir = recipe.run_dir
    checkpoint = on_main(state, lambda: open_run_dir(recipe, console, overwrite, resume, force))
    state.wait_for_everyone()
    set_seed(recipe.training.seed)
    if recipe.model.trust_remote_code:
        console.print("[bold yellow]warning:[/] trust_remote_code = true: code shipped with the model will run")

    started = time.perf_counter()
    with console.status(f"loading model {recipe.model.source} on {device}"), state.main_process_first():
        model, tokenizer, source = load_model(recipe.model, recipe.quantization, device)  # GGUF converted once
        apply_template(tokenizer, recipe.data)
        train_ds, eval_ds, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s")
    print_data_stats(console, stats)
    attention = model.config._attn_implementation
    contract = on_main(
        state,
        lambda: preflight(console, tokenizer, train_ds, eval_ds, stats, recipe.data, attention, run_dir / "summary.json"),
    )

    prompts = recipe.run.sample_prompts
    before = on_main(state, lambda: answer_prompts(model, tokenizer, prompts, recipe.run.sample_max_new_tokens))

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    model = strategy.apply(model, params, recipe.quantization.bits is not None)
    params_summary = trainable_summary(model)
    console.print(
        f"strategy {strategy.name}: {params_summary['trainable_params']:,} trainable of "
        f"{params_summary['total_params']:,} parameters ({params_summary['trainable_percent']:.3f}%)"
    )

    levers = resolve_levers(recipe, device, stats.max_tokens)
    console.print(f"speed: {levers.describe()}")
    rate = TokenRate()
    metrics = MetricsLog(run_dir / "metrics.jsonl", rate, keep_until_step=checkpoint_step(checkpoint))
    interrupt = StopOnInterrupt()
    callbacks = [metrics, RichProgress(console, rate), NonFiniteGuard(), interrupt, SealCheckpoints()]
    trainer = make_trainer(recipe, model, tokenizer, train_ds, eval_ds, device, callbacks, levers)
    result = train_guarded(trainer, interrupt, checkpoint, run_dir)
    train_seconds = rate.elapsed
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}

    def finish() -> dict:
        """Main process: adapter, samples, plot and summary (then the recipe's exports)."""
        write_dir(run_dir / "adapter", lambda tmp: save_adapter(model, tokenizer, tmp, strategy))
        after = answer_prompts(model, tokenizer, prompts, recipe.run.sample_max_new_tokens)
        write_samples(run_dir / "samples.md", prompts, before, after)
        plot_loss(metrics.records, run_dir / "loss.png")
        losses = [r["loss"] for r in metrics.records if "loss" in r]
        summary = {
            "run_dir": str(run_dir),
            "model": source.spec,
            "strategy": strategy.name,
            **params_summary,
            "device": device,
            "world_size": state.num_processes,
            "global_batch_size": trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
            * state.num_processes,
            "steps": trainer.state.global_step,
            "train_seconds": round(train_seconds, 2),
            "train_tokens": trainer.state.num_input_tokens_seen,
            "train_tokens_per_s": round(trainer.state.num_input_tokens_seen / max(train_seconds, 1e-9), 2),
            "peak_memory_bytes": peak_memory_bytes(device),
            "quantized_base": quantized_footprint(model),
            "levers": levers.as_dict(),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "train_loss": result.training_loss,
            "eval_loss": eval_metrics.get("eval_loss"),
            "best_eval_loss": trainer.state.best_metric,  # set when early stopping is on
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "stopped_early": trainer.state.global_step < trainer.state.max_steps,
            "data": stats.as_dict(),
            "contract": contract,
            "versions": versions(),
        }
        write_json(run_dir / "summary.json", summary)
        if recipe.export.formats:  # [export]: verified exports into <run dir>/exports/
            from .export import export_after_training

            summary["exports"] = export_after_training(recipe, console)
            write_json(run_dir / "summary.json", summary)
        return summary

    summary = on_main(state, finish)
    state.wait_for_everyone()
    return summary


def open_run_dir(recipe: Recipe, console: Console, overwrite: bool, resume, force: bool) -> Path | None:
    """Create the run dir (or check a resumed one) and write the resolved recipe; the checkpoint to resume."""
    resolved = recipe_to_toml(recipe)
    checkpoint = None
    if resume:
        checkpoint = checkpoint_to_resume(recipe.run_dir, resume)
        check_same_recipe(recipe.run_dir, resolved, force)
        console.print(f"resuming from {checkpoint}")
    else:
        prepare_run_dir(recipe.run_dir, overwrite)
    write_text(recipe.run_dir / "recipe.resolved.toml", resolved)
    return checkpoint


def train_guarded(trainer, interrupt: StopOnInterrupt, checkpoint: Path | None, run_dir: Path):
    """trainer.train(), turning a NaN/inf stop or a Ctrl-C into a message that says how to resume."""
    try:
        with interrupt:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteError as exc:
        saved = checkpoints(run_dir)
        raise TrainingStopped(
            f"training stopped: {exc}; the update was not applied",
            hint=f"last good checkpoint: {saved[-1]}. Resume from it with a lower learning rate: "
            "python -m peftsft run RECIPE --resume --force --set training.learning_rate=<lower>"
            if saved
            else "lower [training] learning_rate (set save_steps to keep checkpoints) and run again with --overwrite",
        ) from None
    if interrupt.requested:
        raise TrainingStopped(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved: {checkpoints(run_dir)[-1]}",
            hint="continue with: python -m peftsft run RECIPE --resume",
            exit_code=130,
        )
    return result


def checkpoint_step(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None


def make_trainer(
    recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, callbacks: list, levers: Levers | None = None
):
    """TRL's SFTTrainer over our pre-tokenized, pre-masked datasets, with the run's speed levers."""
    from trl import SFTConfig, SFTTrainer

    levers = levers or resolve_levers(recipe, device, max(len(ids) for ids in train_ds["input_ids"]))
    evaluate_during = eval_ds is not None and recipe.training.eval_steps is not None
    args = SFTConfig(
        **trainer_arguments(recipe, device, evaluate_during, checkpointing=levers.activation_checkpointing),
        packing=recipe.data.packing,
        packing_strategy="bfd",
        max_length=recipe.data.max_length,
    )
    model.config.use_cache = False
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(strategy_optimizer(recipe, model, args), None),  # None: the trainer's own (LoRA+ builds one)
    )
    set_adapter_dtype(trainer.model, levers)  # after TRL's bf16 cast of adapters on a quantized base
    set_loss_head(levers)
    use_our_callbacks(trainer, recipe, evaluate_during)
    return trainer


def use_our_callbacks(trainer, recipe: Recipe, evaluate_during: bool) -> None:
    """Drop the Trainer's printer (RichProgress shows the same, once); add early stopping when the recipe asks."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    trainer.remove_callback(PrinterCallback)
    t = recipe.training
    if evaluate_during and t.early_stopping_patience is not None:
        trainer.add_callback(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))


def trainer_arguments(
    recipe: Recipe, device: str, evaluate_during: bool, best_metric: str = "loss", checkpointing: bool | None = None
) -> dict:
    """The TrainingArguments every peftsft trainer shares (SFT and classification), from [training].

    `checkpointing`: activation checkpointing as resolved (levers); None takes only an explicit `true` as on."""
    t = recipe.training
    precision = resolve_precision(t.precision, device)
    early_stop = evaluate_during and t.early_stopping_patience is not None
    return dict(
        output_dir=str(recipe.run_dir / "checkpoints"),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=gradient_accumulation(t, world_size()),  # global_batch_size → grad_accum
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        activation_checkpointing=t.activation_checkpointing is True if checkpointing is None else checkpointing,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else ("best" if early_stop else "no"),
        save_steps=t.save_steps or 500,
        # early stopping keeps the best checkpoint (by best_metric) and ends with its weights loaded
        save_total_limit=1 if early_stop and not t.save_steps else None,
        load_best_model_at_end=early_stop,
        metric_for_best_model=f"eval_{best_metric}" if early_stop else None,
        greater_is_better=best_metric != "loss" if early_stop else None,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to or "none",
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy=t.sampling,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
    )


def resolve_precision(requested: str, device: str) -> str:
    """bf16 autocast when it pays: CUDA with bf16, or a CPU with native bf16 matmuls."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def save_adapter(model, tokenizer, directory: Path, strategy=None) -> None:
    """PEFT adapter (safetensors; as the strategy saves it) + tokenizer with the exact chat template used in training."""
    if strategy is not None:
        strategy.save(model, directory)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def print_data_stats(console: Console, stats: DataStats) -> None:
    from .data.preview import print_stats

    print_stats(console, stats)
