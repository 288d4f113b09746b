"""The classification task: an encoder (or decoder) with a classification head, labelled data, transformers' Trainer.

The transformers Trainer, not TRL's SFTTrainer (which trains generation): cross-entropy over the labels, accuracy
and macro-F1 at every evaluation, early stopping on [classification] best_metric. Fills the training skeleton.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.core.config import Recipe
from peftsft.core.rundir import write_text
from peftsft.levers import Levers
from peftsft.strategies import trainable_summary
from peftsft.tasks.classification.data import build_datasets
from peftsft.tasks.classification.metrics import classification_metrics
from peftsft.tasks.classification.model import Classifier, apply_strategy, load_encoder
from peftsft.tasks.classification.predict import prediction_table, predictions
from peftsft.training import skeleton
from peftsft.training.arguments import trainer_arguments, use_our_callbacks
from peftsft.training.skeleton import Prepared, Session


class ClassificationTask:
    name = "classification"

    def setup(self, session: Session) -> Prepared:
        from peftsft.models import load_tokenizer, materialize, resolve_source

        recipe, console, device = session.recipe, session.console, session.device
        started = time.perf_counter()
        with console.status(f"loading model {recipe.model.source} on {device}"):
            tokenizer = load_tokenizer(materialize(resolve_source(recipe.model.source)), recipe.model)
            train_ds, eval_ds, labels, stats = build_datasets(tokenizer, recipe)
            model, tokenizer, source = load_encoder(recipe, labels, device)
        console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s, "
                      f"labels: {', '.join(labels.names)}")  # fmt: skip
        print_stats(console, stats.as_dict())
        if eval_ds is None:
            console.print("[yellow]no eval data[/] (set [data] eval_path or eval_fraction): no accuracy/F1 to report")
        model, strategy = apply_strategy(model, recipe)
        params = trainable_summary(model)
        console.print(f"strategy {strategy.name}: {params['trainable_params']:,} trainable of "
                      f"{params['total_params']:,} parameters ({params['trainable_percent']:.3f}%), head included")
        return Prepared(model, tokenizer, train_ds, eval_ds, stats, source, strategy, params,
                        extra={"labels": labels, "scorer": EvalScorer(labels.names)})  # fmt: skip

    def before_training(self, session: Session, prepared: Prepared, levers: Levers) -> None:
        pass

    def trainer(self, session: Session, prepared: Prepared, levers: Levers, callbacks: list):
        return make_trainer(session.recipe, prepared.model, prepared.tokenizer, prepared.train_ds, prepared.eval_ds,
                            session.device, prepared.extra["scorer"], callbacks, levers)  # fmt: skip

    def save(self, session: Session, prepared: Prepared, directory: Path) -> None:
        prepared.strategy.save(prepared.model, directory)
        prepared.tokenizer.save_pretrained(directory)
        prepared.extra["labels"].save(directory)

    def score(self, session: Session, prepared: Prepared, levers: Levers) -> dict:
        """The sample prompts labelled by the tuned model."""
        recipe = session.recipe
        if not recipe.run.sample_prompts:
            return {"samples": None}
        tuned = Classifier(prepared.model.eval(), prepared.tokenizer, prepared.extra["labels"],
                           str(session.rundir.path), recipe)  # fmt: skip
        return {"samples": predictions(tuned, recipe.run.sample_prompts, batch_size=32)}

    def finish(self, session: Session, prepared: Prepared, trainer, levers: Levers, train_seconds: float,
               scores: dict) -> dict:  # fmt: skip
        extra, samples = prepared.extra, scores["samples"]
        if samples is not None:  # labelled by the tuned model → samples.md
            write_text(session.rundir.samples_file, samples_markdown(samples))
            session.console.print(prediction_table(samples))
        scored = extra["scorer"].last if prepared.eval_ds is not None else None
        return {"labels": list(extra["labels"].names), **scores_summary(scored)}

    def report(self, session: Session, prepared: Prepared, summary: dict) -> None:
        scorer = prepared.extra["scorer"]
        if scorer.last and prepared.eval_ds is not None:
            session.console.print(confusion_table(scorer.last))


def train(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
          force: bool = False, callbacks=()) -> dict:  # fmt: skip
    """Train a classifier per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    return skeleton.train(ClassificationTask(), recipe, console, overwrite, resume, force, callbacks)


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


def make_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, scorer, callbacks: list,
                 levers: Levers):  # fmt: skip
    """The transformers Trainer; batches are padded per batch by its default collator (DataCollatorWithPadding)."""
    from transformers import Trainer, TrainingArguments

    from peftsft.strategies.registry import strategy_optimizer

    evaluate_during = eval_ds is not None and recipe.training.eval_steps is not None
    # the same [training] → arguments mapping as chat runs; the best is kept by early_stopping_metric or best_metric
    args = TrainingArguments(**trainer_arguments(recipe, device, evaluate_during, levers))
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
