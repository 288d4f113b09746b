"""Each preference method on its TRL trainer: DPO (DPOTrainer), KTO (KTOTrainer), ORPO (trl.experimental's
ORPOTrainer), SimPO (trl.experimental's CPOTrainer with loss_type = "simpo"), fed peftsft's token rows.

One table says which config keys each method's [preference] keys become; the rest of the arguments are every
task's (training.arguments.trainer_arguments, from [training] and the levers).
"""

from __future__ import annotations

import os
import warnings

from peftsft.core.compat import pretokenized, require
from peftsft.core.config import PreferenceSection, Recipe
from peftsft.levers import Levers
from peftsft.strategies.registry import strategy_optimizer
from peftsft.training.arguments import trainer_arguments, use_our_callbacks
from peftsft.training.sharding import trainer_for_launch

EXPERIMENTAL = ((1, 16), (1, 16))  # trl.experimental's ORPO and CPO trainers: no stability promise, so pinned


def method_arguments(p: PreferenceSection) -> dict:
    """The method's keys as its TRL config names them."""
    if p.method == "dpo":
        losses = [p.loss_type] + (["sft"] if p.sft_weight else [])
        return {"beta": p.beta, "loss_type": losses, "loss_weights": [1.0] + ([p.sft_weight] if p.sft_weight else []),
                "label_smoothing": p.label_smoothing, "precompute_ref_log_probs": p.precompute_reference}
    if p.method == "kto":
        return {"beta": p.beta, "desirable_weight": p.desirable_weight, "undesirable_weight": p.undesirable_weight,
                "precompute_ref_log_probs": p.precompute_reference}
    if p.method == "simpo":  # cpo_alpha: CPO's NLL term on the chosen answer (0: SimPO as published)
        return {"beta": p.beta, "loss_type": "simpo", "simpo_gamma": p.gamma, "cpo_alpha": p.sft_weight}
    return {"beta": p.beta}  # orpo: beta is the odds-ratio weight λ


def trainer_classes(method: str):
    """(config class, trainer class) of the method."""
    if method in ("dpo", "kto"):
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

        return (DPOConfig, pretokenized(DPOTrainer)) if method == "dpo" else (KTOConfig, pretokenized(KTOTrainer))
    require("trl", *EXPERIMENTAL, f"method = {method!r} (TRL's experimental trainers)")
    with warnings.catch_warnings():
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the recipe chose the method; the notice says no more
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    config, trainer = (ORPOConfig, ORPOTrainer) if method == "orpo" else (CPOConfig, CPOTrainer)
    return config, _token_rows(trainer)


def _token_rows(trainer_class):
    """ORPO/CPO trainers reading peftsft's pairs: `tokenize_row` (their public per-row hook) turns prompt_ids +
    chosen_ids / rejected_ids into their columns, labels -100 on the prompt, instead of tokenizing text."""

    class TokenRows(trainer_class):
        def tokenize_row(self, feature, model=None) -> dict:
            if "prompt_ids" not in feature:
                return super().tokenize_row(feature, model)
            prompt = list(feature["prompt_ids"])
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                answer = list(feature[f"{side}_ids"])
                row[f"{side}_input_ids"] = prompt + answer
                row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
                row[f"{side}_labels"] = [-100] * len(prompt) + answer
            return row

    TokenRows.__name__ = TokenRows.__qualname__ = f"TokenRows{trainer_class.__name__}"
    return TokenRows


def preference_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, callbacks: list,
                       levers: Levers):  # fmt: skip
    """The method's TRL trainer over our pre-tokenized rows, with the run's levers."""
    method = recipe.preference.method
    config_class, trainer_class = trainer_classes(method)
    evaluate_during = eval_ds is not None and recipe.training.eval_steps is not None
    arguments = {**trainer_arguments(recipe, device, evaluate_during, levers), **method_arguments(recipe.preference)}
    arguments.update(max_length=recipe.data.max_length, remove_unused_columns=False)
    if method in ("orpo", "simpo"):  # their batches hold chosen_/rejected_input_ids, no `input_ids` to count tokens by
        arguments["include_num_input_tokens_seen"] = "no"
    args = config_class(**arguments)
    model.config.use_cache = False
    trainer = trainer_for_launch(lambda: trainer_class(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(strategy_optimizer(recipe, model, args), None),
    ), device)
    use_our_callbacks(trainer, recipe, evaluate_during)
    return trainer
