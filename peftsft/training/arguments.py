"""The TrainingArguments every peftsft trainer shares (SFT and classification), from [training] and the levers."""

from __future__ import annotations

from peftsft.core.compat import launched_world_size
from peftsft.core.config import Recipe, gradient_accumulation
from peftsft.core.metric_names import best_metric, higher_is_better, keeps_best
from peftsft.levers import Levers, trainer_arguments as lever_arguments


def trainer_arguments(recipe: Recipe, device: str, evaluate_during: bool, levers: Levers) -> dict:
    """What the levers decided (precision, optimizer, sampling, checkpointing); everything else from [training]."""
    t = recipe.training
    keep_best = evaluate_during and keeps_best(recipe)
    metric = best_metric(recipe)
    return dict(
        output_dir=str(recipe.run_dir / "checkpoints"),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=gradient_accumulation(t, launched_world_size()),  # global_batch_size → accum.
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else ("best" if keep_best else "no"),
        save_steps=t.save_steps or 500,
        # the best checkpoint (by the metric: the loss, a task metric, the general check) is kept and its weights
        # loaded at the end; task metrics join the eval metrics before the Trainer compares (training.task_metrics)
        save_total_limit=1 if keep_best and not t.save_steps else None,
        load_best_model_at_end=keep_best,
        metric_for_best_model=f"eval_{metric}" if keep_best else None,
        greater_is_better=higher_is_better(metric) if keep_best else None,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to or "none",
        run_name=recipe.run.name,
        use_cpu=device == "cpu",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
        **lever_arguments(levers),
    )


def use_our_callbacks(trainer, recipe: Recipe, evaluate_during: bool) -> None:
    """Drop the Trainer's printer (RichProgress shows the same, once); add early stopping when the recipe asks."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    trainer.remove_callback(PrinterCallback)
    t = recipe.training
    if evaluate_during and t.early_stopping_patience is not None:
        trainer.add_callback(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
