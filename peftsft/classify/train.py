"""A classification run: recipe → encoder + head → strategy → labelled data → transformers Trainer → run dir.

The transformers Trainer, not TRL's SFTTrainer (which trains generation): cross-entropy over the labels,
accuracy and macro-F1 at every evaluation, early stopping on [classification] best_metric.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from ..callbacks import MetricsLog, NonFiniteGuard, RichProgress, SealCheckpoints, StopOnInterrupt, TokenRate
from ..config import Recipe
from ..models import pick_device
from ..report import plot_loss, versions
from ..rundir import write_dir, write_json, write_text
from ..strategies import trainable_summary
from .commands import prediction_table, predictions
from .data import build_datasets
from .metrics import classification_metrics
from .model import Classifier, apply_strategy, load_encoder


def run_classification(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
                       force: bool = False) -> dict:
    """Train a classifier per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    from transformers import set_seed

    from ..train import checkpoint_step, open_run_dir, train_guarded

    run_dir = recipe.run_dir
    checkpoint = open_run_dir(recipe, console, overwrite, resume, force)
    set_seed(recipe.training.seed)
    device = pick_device(recipe.training.device)

    started = time.perf_counter()
    with console.status(f"loading model {recipe.model.source} on {device}"):
        from ..models import load_tokenizer, materialize, resolve_source

        tokenizer = load_tokenizer(materialize(resolve_source(recipe.model.source)), recipe.model)
        train_ds, eval_ds, labels, stats = build_datasets(tokenizer, recipe)
        model, tokenizer, source = load_encoder(recipe, labels, device)
    console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s, "
                  f"labels: {', '.join(labels.names)}")
    print_stats(console, stats.as_dict())
    if eval_ds is None:
        console.print("[yellow]no eval data[/] (set [data] eval_path or eval_fraction): no accuracy/F1 to report")

    model, strategy = apply_strategy(model, recipe)
    params = trainable_summary(model)
    console.print(f"strategy {strategy.name}: {params['trainable_params']:,} trainable of "
                  f"{params['total_params']:,} parameters ({params['trainable_percent']:.3f}%), head included")

    rate = TokenRate()
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", rate, keep_until_step=checkpoint_step(checkpoint))
    scorer, interrupt = EvalScorer(labels.names), StopOnInterrupt()
    callbacks = [metrics_log, RichProgress(console, rate), NonFiniteGuard(), interrupt, SealCheckpoints()]
    trainer = make_trainer(recipe, model, tokenizer, train_ds, eval_ds, device, scorer, callbacks)
    result = train_guarded(trainer, interrupt, checkpoint, run_dir)  # Ctrl-C / NaN: a message saying how to resume
    train_seconds = rate.elapsed
    final = trainer.evaluate() if eval_ds is not None else {}

    def save(tmp):
        strategy.save(model, tmp)
        tokenizer.save_pretrained(tmp)
        labels.save(tmp)

    write_dir(run_dir / "adapter", save)
    plot_loss(metrics_log.records, run_dir / "loss.png")
    if recipe.run.sample_prompts:  # labelled by the tuned model → samples.md
        tuned = Classifier(model.eval(), tokenizer, labels, str(run_dir), recipe)
        samples = predictions(tuned, recipe.run.sample_prompts, batch_size=32)
        write_text(run_dir / "samples.md", samples_markdown(samples))
        console.print(prediction_table(samples))
    summary = build_summary(recipe, trainer, result, final, scorer.last if final else None, params, stats,
                            train_seconds, device, source.spec, strategy.name, labels.names)
    write_json(run_dir / "summary.json", summary)
    if scorer.last and final:
        console.print(confusion_table(scorer.last))
    if recipe.export.formats:  # [export]: verified exports into <run dir>/exports/
        from .export import export_after_training

        summary["exports"] = export_after_training(run_dir, recipe.export.formats, recipe.export.dtype, console)
        write_json(run_dir / "summary.json", summary)
    return summary


class EvalScorer:
    """compute_metrics for the Trainer: logs accuracy and macro-F1, keeps the full report of the last evaluation."""

    def __init__(self, names) -> None:
        self.names = list(names)
        self.last: dict | None = None

    def __call__(self, prediction) -> dict[str, float]:
        import numpy as np

        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        self.last = classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1), self.names)
        return {"accuracy": self.last["accuracy"], "macro_f1": self.last["macro_f1"]}


def make_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, scorer, callbacks: list):
    """The transformers Trainer; batches are padded per batch by its default collator (DataCollatorWithPadding)."""
    from transformers import Trainer, TrainingArguments

    from ..strategies.registry import strategy_optimizer
    from ..train import trainer_arguments, use_our_callbacks

    t = recipe.training
    evaluate_during = eval_ds is not None and t.eval_steps is not None
    # the same [training] → arguments mapping as chat runs; early stopping keeps the best by best_metric
    args = TrainingArguments(**trainer_arguments(recipe, device, evaluate_during, recipe.classification.best_metric))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        compute_metrics=scorer,
        callbacks=callbacks,
        optimizers=(strategy_optimizer(recipe, model, args), None),  # None: the trainer's own (LoRA+ builds one)
    )
    use_our_callbacks(trainer, recipe, evaluate_during)
    return trainer


def build_summary(recipe, trainer, result, final: dict, report: dict | None, params: dict, stats, train_seconds: float,
                  device: str, model_spec: str, strategy_name: str, names) -> dict:
    from ..train import peak_memory_bytes

    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = trainer.state.num_input_tokens_seen
    return {
        "run_dir": str(recipe.run_dir),
        "task": "classification",
        "model": model_spec,
        "strategy": strategy_name,
        "labels": list(names),
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
        "eval_loss": final.get("eval_loss"),
        "accuracy": report["accuracy"] if report else None,
        "macro_f1": report["macro_f1"] if report else None,
        "per_label": report["per_label"] if report else None,
        "confusion_matrix": report["confusion_matrix"] if report else None,
        "best_metric": trainer.state.best_metric,  # set when early stopping is on
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "data": stats.as_dict(),
        "versions": versions(),
    }


# ---------------------------------------------------------------------------------------------- display


def samples_markdown(rows: list[dict]) -> str:
    lines = ["# Samples: labelled by the tuned model", "", "| text | label | probability |", "|---|---|---|"]
    lines += [f"| {r['text'].replace('|', '/')} | {r['label']} | {r['score']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def print_stats(console: Console, stats: dict) -> None:
    table = Table(title="data", show_header=False, box=None)
    for key, value in stats.items():
        if key != "bad_row_examples":
            table.add_row(key, str(value))
    console.print(table)
    for line in stats["bad_row_examples"][:5]:
        console.print(f"[yellow]skipped[/] {line}")


def confusion_table(report: dict, title: str | None = None) -> Table:
    """Rows: true label; columns: predicted label; the diagonal (correct) in green."""
    names = report["confusion_matrix"]["labels"]
    counts = report["confusion_matrix"]["rows_true_columns_predicted"]
    table = Table(title=title or f"eval: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f} "
                                 f"({report['rows']} rows)")
    table.add_column("true ↓ / predicted →")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("F1", justify="right")
    for i, name in enumerate(names):
        cells = [f"[green]{n}[/]" if i == j else str(n) for j, n in enumerate(counts[i])]
        table.add_row(name, *cells, f"{report['per_label'][name]['f1']:.3f}")
    return table
