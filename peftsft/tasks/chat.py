"""The chat SFT task: a causal LM with its strategy, chat-templated and masked data, TRL's SFTTrainer.

It fills the training skeleton (training/skeleton.py): before training it answers the sample prompts and scores
the general check with the adapter off; after it, the same with the adapter on, into samples.md and summary.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from peftsft.core.compat import attention_implementation
from peftsft.core.config import Recipe
from peftsft.data import build_datasets
from peftsft.data.build import apply_template
from peftsft.data.contract import preflight
from peftsft.data.preview import print_stats
from peftsft.generation import answer_prompts
from peftsft.levers import Levers, sft_arguments
from peftsft.models import load_model, quantized_footprint
from peftsft.strategies import StrategyContext, get_strategy, trainable_summary
from peftsft.strategies.registry import strategy_optimizer, validate_params
from peftsft.training import skeleton
from peftsft.training.arguments import trainer_arguments, use_our_callbacks
from peftsft.training.distributed import on_main
from peftsft.training.general_check import GeneralCheck, for_summary, report as report_general
from peftsft.training.report import write_samples
from peftsft.training.runs import save_adapter
from peftsft.training.sharding import trainer_for_launch
from peftsft.training.skeleton import Prepared, Session, adapter_off
from peftsft.training.task_metrics import ChatMetrics


class ChatTask:
    name = "chat"

    def setup(self, session: Session) -> Prepared:
        recipe, console, state = session.recipe, session.console, session.state
        started = time.perf_counter()
        with console.status(f"loading model {recipe.model.source} on {session.device}"), state.main_process_first():
            model, tokenizer, source = load_model(recipe.model, recipe.quantization, session.device)
            apply_template(tokenizer, recipe.data)
            train_ds, eval_ds, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
        console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s")
        print_stats(console, stats)
        attention = attention_implementation(model)
        contract = on_main(state, lambda: preflight(console, tokenizer, train_ds, eval_ds, stats, recipe.data,
                                                    attention, session.rundir))  # fmt: skip
        strategy = get_strategy(recipe.strategy.name)
        params = validate_params(strategy, recipe.strategy.params)
        model = strategy.apply(model, params, StrategyContext(quantized=recipe.quantization.bits is not None))
        summary = trainable_summary(model)
        console.print(f"strategy {strategy.name}: {summary['trainable_params']:,} trainable of "
                      f"{summary['total_params']:,} parameters ({summary['trainable_percent']:.3f}%)")  # fmt: skip
        general = GeneralCheck.for_recipe(recipe)
        extra = {"contract": contract, "general": general,
                 "quantized_base": quantized_footprint(model)}  # before training: FSDP turns the weights into shards
        return Prepared(model, tokenizer, train_ds, eval_ds, stats, source, strategy, summary, stats.max_tokens, extra,
                        measure=ChatMetrics.for_recipe(recipe, general))

    def before_training(self, session: Session, prepared: Prepared, levers: Levers) -> None:
        """The base's answers and general-check score (main process), with the adapter off."""
        run, model, tokenizer, general = session.recipe.run, prepared.model, prepared.tokenizer, prepared.extra["general"]

        def measure():
            with adapter_off(model):
                before = answer_prompts(model, tokenizer, run.sample_prompts, run.sample_max_new_tokens)
                base = general.score(model, tokenizer, levers.precision) if general else None
            return before, base

        prepared.extra["before"], prepared.extra["general_base"] = on_main(session.state, measure)

    def trainer(self, session: Session, prepared: Prepared, levers: Levers, callbacks: list):
        return sft_trainer(session.recipe, prepared.model, prepared.tokenizer, prepared.train_ds, prepared.eval_ds,
                           session.device, callbacks, levers)  # fmt: skip

    def save(self, session: Session, prepared: Prepared, directory: Path) -> None:
        save_adapter(prepared.model, prepared.tokenizer, directory, prepared.strategy, session.recipe.model.base_id)

    def score(self, session: Session, prepared: Prepared, levers: Levers) -> dict:
        """The tuned model's answers and general-check score."""
        recipe, model, tokenizer, general = session.recipe, prepared.model, prepared.tokenizer, prepared.extra["general"]
        return {
            "after": answer_prompts(model, tokenizer, recipe.run.sample_prompts, recipe.run.sample_max_new_tokens),
            "general_tuned": general.score(model, tokenizer, levers.precision) if general else None,
        }

    def finish(self, session: Session, prepared: Prepared, trainer, levers: Levers, train_seconds: float,
               scores: dict) -> dict:  # fmt: skip
        recipe, extra, general = session.recipe, prepared.extra, prepared.extra["general"]
        result = general.compare(extra["general_base"], scores["general_tuned"]) if general else None
        extra["general_result"] = result
        write_samples(session.rundir.samples_file, recipe.run.sample_prompts, extra["before"], scores["after"], result)
        return {
            "quantized_base": extra["quantized_base"],
            "contract": extra["contract"],
            "general": for_summary(result, train_seconds) if result else None,
        }

    def report(self, session: Session, prepared: Prepared, summary: dict) -> None:
        if prepared.extra.get("general_result"):
            report_general(session.console, prepared.extra["general_result"], session.recipe,
                           prepared.stats.train_rows)  # fmt: skip


def train(recipe: Recipe, console, overwrite: bool = False, resume: str | bool | None = None,
          force: bool = False, callbacks=()) -> dict:  # fmt: skip
    """Train per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    return skeleton.train(ChatTask(), recipe, console, overwrite, resume, force, callbacks)


def sft_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, callbacks: list, levers: Levers):
    """TRL's SFTTrainer over our pre-tokenized, pre-masked datasets, with the run's levers."""
    from trl import SFTConfig, SFTTrainer

    evaluate_during = eval_ds is not None and recipe.training.eval_steps is not None
    arguments = trainer_arguments(recipe, device, evaluate_during, levers)
    args = SFTConfig(**{**arguments, **sft_arguments(levers, recipe.data.max_length)})
    model.config.use_cache = False
    trainer = trainer_for_launch(lambda: SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(strategy_optimizer(recipe, model, args), None),  # None: the trainer's own (LoRA+ builds one)
    ), device)  # FSDP launches: sharding set up (and checked) for this process
    use_our_callbacks(trainer, recipe, evaluate_during)
    return trainer
