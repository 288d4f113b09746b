"""peftsft.training.arguments called directly: the TrainingArguments a recipe becomes (every key from its own
[training] value, the best-checkpoint choice, evaluation and saving), our callbacks on a trainer, and what a TRL
trainer is built with — no model trained."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import EarlyStoppingCallback, PrinterCallback

from peftsft.core.config import Recipe
from peftsft.training import arguments


def recipe_of(training: dict | None = None, **sections) -> Recipe:
    return Recipe.model_validate({"data": {"datasets": [{"path": "train.jsonl"}]}, "training": training or {},
                                  "run": {"name": "tuned", "output_dir": "out"}, **sections})


TRAINING = {"learning_rate": 3e-4, "epochs": 2.5, "max_steps": 17, "batch_size": 3, "grad_accum": 5,
            "lr_scheduler": "linear", "warmup_ratio": 0.07, "weight_decay": 0.011, "max_grad_norm": 0.9,
            "logging_steps": 2, "eval_steps": 4, "seed": 123, "report_to": ["tensorboard"]}


@pytest.fixture
def no_levers(monkeypatch):
    monkeypatch.setattr(arguments, "lever_arguments", lambda levers: {"lever": levers})


def test_every_training_key_comes_from_its_own_recipe_value(no_levers):
    args = arguments.trainer_arguments(recipe_of(TRAINING), "cpu", False, "the levers")
    assert args == {
        "output_dir": str(Path("out") / "tuned" / "checkpoints"),
        "learning_rate": 3e-4, "num_train_epochs": 2.5, "max_steps": 17,
        "per_device_train_batch_size": 3, "per_device_eval_batch_size": 3, "gradient_accumulation_steps": 5,
        "lr_scheduler_type": "linear", "warmup_steps": 0.07, "weight_decay": 0.011, "max_grad_norm": 0.9,
        "logging_steps": 2, "eval_strategy": "no", "eval_steps": 4,
        "save_strategy": "no", "save_steps": 500, "save_total_limit": None, "load_best_model_at_end": False,
        "metric_for_best_model": None, "greater_is_better": None,
        "seed": 123, "data_seed": 123, "report_to": ["tensorboard"], "run_name": "tuned",
        "use_cpu": True, "include_num_input_tokens_seen": "non_padding", "disable_tqdm": True,
        "dataloader_pin_memory": False, "lever": "the levers",
    }


def test_a_cuda_run_pins_memory_and_reports_to_none_when_no_tracker(no_levers):
    args = arguments.trainer_arguments(recipe_of(), "cuda", True, None)
    assert (args["use_cpu"], args["dataloader_pin_memory"], args["report_to"]) == (False, True, "none")
    assert args["eval_strategy"] == "steps" and args["save_strategy"] == "no" and args["save_total_limit"] is None


def test_the_global_batch_size_sets_the_accumulation(no_levers):
    args = arguments.trainer_arguments(recipe_of({"batch_size": 2, "global_batch_size": 12}), "cpu", False, None)
    assert args["gradient_accumulation_steps"] == 6


@pytest.mark.parametrize("training, metric, higher", [
    ({"early_stopping_patience": 2}, "eval_loss", False),
    ({"early_stopping_metric": "token_f1"}, "eval_token_f1", True),
    ({"early_stopping_metric": "general"}, "eval_general_loss", False),
])
def test_a_run_that_keeps_its_best_saves_only_the_best_and_loads_it_at_the_end(no_levers, training, metric, higher):
    args = arguments.trainer_arguments(recipe_of(training), "cpu", True, None)
    assert (args["save_strategy"], args["save_total_limit"], args["load_best_model_at_end"]) == ("best", 1, True)
    assert (args["metric_for_best_model"], args["greater_is_better"]) == (metric, higher)


def test_without_evaluation_during_training_no_best_is_kept(no_levers):
    args = arguments.trainer_arguments(recipe_of({"early_stopping_patience": 2}), "cpu", False, None)
    assert (args["save_strategy"], args["load_best_model_at_end"], args["metric_for_best_model"]) == ("no", False, None)


def test_periodic_checkpoints_are_all_kept_even_when_the_best_is_loaded(no_levers):
    args = arguments.trainer_arguments(recipe_of({"save_steps": 7, "early_stopping_patience": 1}), "cpu", True, None)
    assert (args["save_strategy"], args["save_steps"], args["save_total_limit"]) == ("steps", 7, None)
    assert args["load_best_model_at_end"] is True


class Trainer:
    def __init__(self, **built):
        self.built, self.callbacks, self.removed = built, [], []

    def remove_callback(self, callback):
        self.removed.append(callback)

    def add_callback(self, callback):
        self.callbacks.append(callback)


@pytest.mark.parametrize("training, evaluate_during, stops", [
    ({"early_stopping_patience": 3, "early_stopping_threshold": 0.25}, True, (3, 0.25)),
    ({"early_stopping_patience": 3}, False, None),  # nothing evaluated: nothing to stop on
    ({}, True, None),
])
def test_the_printer_goes_and_early_stopping_comes_when_asked(training, evaluate_during, stops):
    trainer = Trainer()
    arguments.use_our_callbacks(trainer, recipe_of(training), evaluate_during)
    assert trainer.removed == [PrinterCallback]
    if stops is None:
        assert trainer.callbacks == []
    else:
        (callback,) = trainer.callbacks
        assert isinstance(callback, EarlyStoppingCallback)
        assert (callback.early_stopping_patience, callback.early_stopping_threshold) == stops


@pytest.mark.parametrize("eval_ds, eval_steps, stopping", [("held out", 2, True), (None, 2, False),
                                                           ("held out", None, False)])
def test_a_trl_trainer_is_built_from_the_run_with_its_optimizer_and_callbacks(monkeypatch, eval_ds, eval_steps,
                                                                             stopping):
    import peftsft.strategies.registry as registry
    import peftsft.training.sharding as sharding

    launched = []
    monkeypatch.setattr(registry, "strategy_optimizer", lambda *built: ("optimizer of", *built))
    monkeypatch.setattr(sharding, "trainer_for_launch", lambda build, device: launched.append(device) or build())
    model = SimpleNamespace(config=SimpleNamespace(use_cache=True))
    recipe = recipe_of({"early_stopping_patience": 1, "eval_steps": eval_steps})
    trainer = arguments.lm_trainer(Trainer, recipe, model, "tokenizer", "args", "train", eval_ds, "cuda", ["cb"])
    (optimizer, scheduler) = trainer.built.pop("optimizers")
    assert optimizer == ("optimizer of", recipe, model, "args") and scheduler is None
    assert model.config.use_cache is False and launched == ["cuda"]
    assert trainer.built == {"model": model, "args": "args", "train_dataset": "train", "eval_dataset": eval_ds,
                             "processing_class": "tokenizer", "callbacks": ["cb"]}
    assert trainer.removed == [PrinterCallback] and len(trainer.callbacks) == int(stopping)
