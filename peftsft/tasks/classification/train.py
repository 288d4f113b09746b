"""A classification run: recipe → encoder + head → strategy → labelled data → transformers Trainer → run dir.

The transformers Trainer, not TRL's SFTTrainer (which trains generation): cross-entropy over the labels,
accuracy and macro-F1 at every evaluation, early stopping on [classification] best_metric.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from peftsft.training.callbacks import MetricsLog, NonFiniteGuard, RichProgress, SealCheckpoints, StopOnInterrupt, TokenRate
from peftsft.core.config import Recipe
from peftsft.models import pick_device
from peftsft.training.arguments import trainer_arguments, use_our_callbacks
from peftsft.training.report import plot_loss
from peftsft.training.rules import resolve_precision
from peftsft.training.runs import checkpoint_step, open_run_dir, run_summary, train_guarded
from peftsft.core.rundir import write_dir, write_json, write_text
from peftsft.strategies import trainable_summary
from peftsft.tasks.classification.predict import prediction_table, predictions
from peftsft.tasks.classification.data import build_datasets
from peftsft.tasks.classification.metrics import classification_metrics
from peftsft.tasks.classification.model import Classifier, apply_strategy, load_encoder


def train(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
                       force: bool = False) -> dict:
    """Train a classifier per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    from transformers import set_seed


    run_dir = recipe.run_dir
    checkpoint = open_run_dir(recipe, console, overwrite, resume, force)
    set_seed(recipe.training.seed)
    device = pick_device(recipe.training.device)

    started = time.perf_counter()
    with console.status(f"loading model {recipe.model.source} on {device}"):
        from peftsft.models import load_tokenizer, materialize, resolve_source

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
    summary = run_summary(recipe, trainer, result, final, task="classification", model_spec=source.spec,
                          strategy_name=strategy.name, params=params, device=device, train_seconds=train_seconds,
                          stats=stats)
    summary.update(labels=list(labels.names), **scores_summary(scorer.last if final else None))
    write_json(run_dir / "summary.json", summary)
    if scorer.last and final:
        console.print(confusion_table(scorer.last))
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

    from peftsft.strategies.registry import strategy_optimizer

    t = recipe.training
    evaluate_during = eval_ds is not None and t.eval_steps is not None
    # the same [training] → arguments mapping as chat runs; early stopping keeps the best by best_metric
    precision = resolve_precision(t.precision, device)  # the one lever an encoder run has; no memory plan
    checkpointing = t.activation_checkpointing is True
    args = TrainingArguments(
        **trainer_arguments(recipe, device, evaluate_during, precision, checkpointing, recipe.classification.best_metric)
    )
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


def scores_summary(report: dict | None) -> dict:
    """summary.json's classification scores (None without eval data)."""
    keys = ("accuracy", "macro_f1", "per_label", "confusion_matrix")
    return {key: report[key] if report else None for key in keys}


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
