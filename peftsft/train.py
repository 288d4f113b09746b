"""The main job: recipe → model → strategy → data → TRL SFTTrainer → run dir. Reads top to bottom."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .callbacks import MetricsLog, RichProgress, TokenRate
from .config import Recipe, recipe_to_toml
from .data import DataStats, build_datasets
from .data.build import apply_template
from .generation import answer_prompts
from .models import load_model, pick_device
from .report import plot_loss, versions, write_samples
from .rundir import prepare_run_dir, write_dir, write_json, write_text
from .strategies import get_strategy, trainable_summary
from .strategies.registry import validate_params


def run(recipe: Recipe, console: Console, overwrite: bool = False) -> dict:
    """Train per the recipe; returns summary.json's contents."""
    from transformers import set_seed

    run_dir = recipe.run_dir
    prepare_run_dir(run_dir, overwrite)
    write_text(run_dir / "recipe.resolved.toml", recipe_to_toml(recipe))
    set_seed(recipe.training.seed)
    device = pick_device(recipe.training.device)

    started = time.perf_counter()
    with console.status(f"loading model {recipe.model.source} on {device}"):
        model, tokenizer, source = load_model(recipe.model, recipe.quantization, device)
    console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s")

    apply_template(tokenizer, recipe.data)
    train_ds, eval_ds, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    print_data_stats(console, stats)

    prompts = recipe.run.sample_prompts
    before = answer_prompts(model, tokenizer, prompts, recipe.run.sample_max_new_tokens)

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    model = strategy.apply(model, params, recipe.quantization.bits is not None)
    params_summary = trainable_summary(model)
    console.print(
        f"strategy {strategy.name}: {params_summary['trainable_params']:,} trainable of "
        f"{params_summary['total_params']:,} parameters ({params_summary['trainable_percent']:.3f}%)"
    )

    rate = TokenRate()
    metrics = MetricsLog(run_dir / "metrics.jsonl", rate)
    trainer = make_trainer(recipe, model, tokenizer, train_ds, eval_ds, device, [metrics, RichProgress(console, rate)])
    result = trainer.train()
    train_seconds = rate.elapsed
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}

    write_dir(run_dir / "adapter", lambda tmp: save_adapter(model, tokenizer, tmp))
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
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "train_tokens": trainer.state.num_input_tokens_seen,
        "train_tokens_per_s": round(trainer.state.num_input_tokens_seen / max(train_seconds, 1e-9), 2),
        "peak_memory_bytes": peak_memory_bytes(device),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"),
        "data": stats.as_dict(),
        "versions": versions(),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def make_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, callbacks: list):
    """TRL's SFTTrainer over our pre-tokenized, pre-masked datasets."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    t = recipe.training
    precision = resolve_precision(t.precision, device)
    evaluate_during = eval_ds is not None and t.eval_steps is not None
    args = SFTConfig(
        output_dir=str(recipe.run_dir / "checkpoints"),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        activation_checkpointing=t.activation_checkpointing,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to or "none",
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy=t.sampling,
        packing=recipe.data.packing,
        packing_strategy="bfd",
        max_length=recipe.data.max_length,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
    )
    model.config.use_cache = False
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our RichProgress shows the same, once
    return trainer


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


def save_adapter(model, tokenizer, directory: Path) -> None:
    """PEFT adapter (safetensors) + tokenizer with the exact chat template used in training."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def print_data_stats(console: Console, stats: DataStats) -> None:
    table = Table(title="data", show_header=False, box=None)
    for key, value in stats.as_dict().items():
        if key != "bad_row_examples":
            table.add_row(key, str(value))
    console.print(table)
    for line in stats.bad_rows[:5]:
        console.print(f"[yellow]skipped[/] {line}")
