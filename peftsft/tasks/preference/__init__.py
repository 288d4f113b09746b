"""The preference task (task = "preference"): a chat adapter tuned on preferred vs rejected answers with DPO, ORPO,
KTO or SimPO on TRL's trainers, from the base or continuing an SFT run's adapter (`[model] adapter`).

It fills the training skeleton (training/skeleton.py) as the chat task does: the data are pairs (or KTO's answers)
built and checked by peftsft.data.preference_build / preference_contract; model.py picks the adapter and the
reference; trainers.py builds the method's trainer. The result is a chat adapter: exported and served as chat runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from peftsft.core.config import Recipe
from peftsft.data.build import apply_template
from peftsft.data.contract import settle
from peftsft.data.preference_build import build_preference_datasets
from peftsft.data.preference_contract import check_preference_contract
from peftsft.data.preview import preference_counts, print_stats
from peftsft.generation import answer_prompts
from peftsft.levers import Levers
from peftsft.models import load_model, quantized_footprint
from peftsft.strategies import trainable_summary
from peftsft.tasks.preference.model import adapt, drop_reference, reference_kind, settle_reference
from peftsft.tasks.preference.trainers import preference_trainer
from peftsft.training import skeleton
from peftsft.training.distributed import on_main
from peftsft.training.report import write_samples
from peftsft.training.runs import save_adapter
from peftsft.training.skeleton import Prepared, Session


class PreferenceTask:
    name = "preference"

    def setup(self, session: Session) -> Prepared:
        recipe, console, state = session.recipe, session.console, session.state
        started, paired = time.perf_counter(), recipe.preference.paired
        with console.status(f"loading model {recipe.model.source} on {session.device}"), state.main_process_first():
            model, tokenizer, source = load_model(recipe.model, recipe.quantization, session.device)
            apply_template(tokenizer, recipe.data)
            train_ds, eval_ds, stats = build_preference_datasets(tokenizer, recipe.data, recipe.training.seed, paired)
        console.print(f"model: {source.spec} ({source.describe}) in {time.perf_counter() - started:.1f}s")
        print_stats(console, stats)
        console.print(f"[preference] method = {recipe.preference.method!r}: {preference_counts(stats, train_ds)}",
                      markup=False)  # fmt: skip
        contract = on_main(state, lambda: settle(console, check_preference_contract(
            tokenizer, train_ds, eval_ds, stats, recipe.data), stats, session.rundir))  # fmt: skip
        adapted = adapt(recipe, model, quantized=recipe.quantization.bits is not None)
        model, summary = adapted.model, trainable_summary(adapted.model)
        reference = reference_kind(recipe, model, adapted.continued is not None)
        start = f"continuing {adapted.continued}" if adapted.continued else f"a new {adapted.strategy.name} adapter"
        console.print(f"strategy {adapted.strategy.name}: {start}, {summary['trainable_params']:,} trainable of "
                      f"{summary['total_params']:,} parameters; reference: {reference}", markup=False)  # fmt: skip
        extra = {"contract": contract, "continued": adapted.continued, "reference": reference,
                 "quantized_base": quantized_footprint(model)}
        return Prepared(model, tokenizer, train_ds, eval_ds, stats, source, adapted.strategy, summary, stats.max_tokens,
                        extra)

    def before_training(self, session: Session, prepared: Prepared, levers: Levers) -> None:
        """The starting model's answers (the SFT model, or the base under a fresh adapter), main process."""
        run = session.recipe.run
        prepared.extra["before"] = on_main(session.state, lambda: answer_prompts(
            prepared.model, prepared.tokenizer, run.sample_prompts, run.sample_max_new_tokens))

    def trainer(self, session: Session, prepared: Prepared, levers: Levers, callbacks: list):
        trainer = preference_trainer(session.recipe, prepared.model, prepared.tokenizer, prepared.train_ds,
                                     prepared.eval_ds, session.device, callbacks, levers)  # fmt: skip
        settle_reference(prepared.model, prepared.extra["reference"])
        return trainer

    def score(self, session: Session, prepared: Prepared, levers: Levers) -> dict:
        run = session.recipe.run
        return {"after": answer_prompts(prepared.model, prepared.tokenizer, run.sample_prompts,
                                        run.sample_max_new_tokens)}  # fmt: skip

    def save(self, session: Session, prepared: Prepared, directory: Path) -> None:
        drop_reference(prepared.model)
        save_adapter(prepared.model, prepared.tokenizer, directory, prepared.strategy, session.recipe.model.base_id)

    def finish(self, session: Session, prepared: Prepared, trainer, levers: Levers, train_seconds: float,
               scores: dict) -> dict:  # fmt: skip
        recipe, extra = session.recipe, prepared.extra
        start = f"SFT model ({recipe.model.adapter})" if recipe.model.adapter else "base"
        write_samples(session.rundir.samples_file, recipe.run.sample_prompts, extra["before"], scores["after"],
                      start=start)
        logged = [r for r in trainer.state.log_history if any(k.startswith("rewards/") for k in r)]
        last = {k: v for k, v in (logged[-1] if logged else {}).items() if k.startswith(("rewards/", "eval_rewards/"))}
        return {
            "quantized_base": extra["quantized_base"],
            "contract": extra["contract"],
            "preference": {
                **recipe.preference.model_dump(include=set(recipe.preference.keys_in_use())),
                "reference": extra["reference"], "continued": extra["continued"],
                "rows": preference_counts(prepared.stats, prepared.train_ds), "last_logged": last,
            },
        }

    def report(self, session: Session, prepared: Prepared, summary: dict) -> None:
        last = summary["preference"]["last_logged"]
        if last:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items()) if isinstance(v, (int, float)))
            session.console.print(f"preference, last logged: {shown}", markup=False)


def train(recipe: Recipe, console, overwrite: bool = False, resume: str | bool | None = None,
          force: bool = False, callbacks=()) -> dict:  # fmt: skip
    """Train per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    return skeleton.train(PreferenceTask(), recipe, console, overwrite, resume, force, callbacks)
