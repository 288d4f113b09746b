"""The chat SFT task: recipe → model → strategy → data → TRL SFTTrainer → run dir. Reads top to bottom."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console

from peftsft.core.config import Recipe, gradient_accumulation
from peftsft.data import DataStats, build_datasets
from peftsft.data.build import apply_template
from peftsft.data.contract import preflight
from peftsft.data.preview import print_stats
from peftsft.generation import answer_prompts
from peftsft.models import load_model, pick_device, quantized_footprint
from peftsft.strategies import StrategyContext, get_strategy, trainable_summary
from peftsft.strategies.registry import strategy_optimizer, validate_params
from peftsft.training import trl_compat
from peftsft.training.attention import applied as attention_applied
from peftsft.training.arguments import trainer_arguments, use_our_callbacks
from peftsft.training.callbacks import MetricsLog, NonFiniteGuard, RichProgress, SealCheckpoints, StopOnInterrupt, TokenRate
from peftsft.training.distributed import console_for, on_main, process_state
from peftsft.training.general_check import GeneralCheck, for_summary, report as report_general
from peftsft.training.levers import Levers, decide_levers
from peftsft.training.rules import resolve_precision
from peftsft.training.rules import cast_frozen_base
from peftsft.training.report import plot_loss, write_samples
from peftsft.training.runs import checkpoint_step, open_run_dir, run_summary, save_adapter, train_guarded
from peftsft.training.sharding import engine_summary, gathered_state, is_sharded, saving_from, trainer_for_launch
from peftsft.core.rundir import write_dir, write_json


def train(
    recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None, force: bool = False
) -> dict:
    """Train per the recipe (or resume its run from a checkpoint); returns summary.json's contents."""
    from transformers import set_seed

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
    print_stats(console, stats)
    attention = trl_compat.attention_implementation(model)
    contract = on_main(
        state,
        lambda: preflight(console, tokenizer, train_ds, eval_ds, stats, recipe.data, attention, run_dir / "summary.json"),
    )

    prompts = recipe.run.sample_prompts
    before = on_main(state, lambda: answer_prompts(model, tokenizer, prompts, recipe.run.sample_max_new_tokens))
    general = GeneralCheck.for_recipe(recipe)  # [eval] general_check: the base scored now, the tuned model at the end
    precision = resolve_precision(recipe.training.precision, device)  # the rule the levers record below
    general_base = on_main(state, lambda: general.score(model, tokenizer, precision)) if general else None

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    model = strategy.apply(model, params, StrategyContext(quantized=recipe.quantization.bits is not None))
    params_summary = trainable_summary(model)
    quantized_base = quantized_footprint(model)  # now: under FSDP the weights become shards
    console.print(
        f"strategy {strategy.name}: {params_summary['trainable_params']:,} trainable of "
        f"{params_summary['total_params']:,} parameters ({params_summary['trainable_percent']:.3f}%)"
    )

    levers = decide_levers(recipe, device, stats.max_tokens, model)
    console.print(f"speed: {levers.describe()}")
    rate = TokenRate()
    metrics = MetricsLog(run_dir / "metrics.jsonl", rate, keep_until_step=checkpoint_step(checkpoint))
    interrupt = StopOnInterrupt()
    callbacks = [metrics, RichProgress(console, rate), NonFiniteGuard(), interrupt, SealCheckpoints()]
    trainer = make_trainer(recipe, model, tokenizer, train_ds, eval_ds, device, callbacks, levers)
    with levers_applied(levers, model):
        result = train_guarded(trainer, interrupt, checkpoint, run_dir)
        train_seconds = rate.elapsed
        eval_metrics = trainer.evaluate() if eval_ds is not None else {}

    def tuned() -> tuple:
        """The tuned model's answers and general-check score."""
        after = answer_prompts(model, tokenizer, prompts, recipe.run.sample_max_new_tokens)
        return after, general.score(model, tokenizer, levers.precision) if general else None

    sharded = is_sharded(model)  # FSDP: every process takes part in each forward pass and in gathering the adapter
    adapter_state = gathered_state(model)
    after, general_tuned = tuned() if sharded else on_main(state, tuned)

    def finish() -> dict:
        """Main process: adapter, samples, plot and summary."""
        with saving_from(model, adapter_state):
            write_dir(run_dir / "adapter", lambda tmp: save_adapter(model, tokenizer, tmp, strategy, recipe.model.base_id))
        general_result = general.compare(general_base, general_tuned) if general else None
        write_samples(run_dir / "samples.md", prompts, before, after, general_result)
        plot_loss(metrics.records, run_dir / "loss.png")
        summary = run_summary(
            recipe, trainer, result, eval_metrics, task="chat", model_spec=source.spec, strategy_name=strategy.name,
            params=params_summary, device=device, train_seconds=train_seconds, stats=stats,
        )
        summary.update(
            world_size=state.num_processes,
            engine=engine_summary(trainer),
            global_batch_size=trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
            * state.num_processes,
            quantized_base=quantized_base,
            levers=levers.as_dict(),
            contract=contract,
            general=for_summary(general_result, train_seconds) if general_result else None,
        )
        write_json(run_dir / "summary.json", summary)
        if general_result:
            report_general(console, general_result, recipe, stats.train_rows)
        return summary

    summary = on_main(state, finish)
    state.wait_for_everyone()
    return summary


@contextlib.contextmanager
def levers_applied(levers: Levers, model=None):
    """While training and evaluating: TRL's loss head, the attention function and the LoRA layers' kernel as the
    levers say, and with a half-precision frozen base under autocast no fp32 round trip of the adapters' inputs (all
    restored afterwards)."""
    skip_casts = model is not None and levers.base_dtype is not None and levers.precision != "fp32"
    supervised = levers.loss_positions == "supervised"
    with trl_compat.loss_head(levers.loss_vocab_chunk, supervised, levers.fallbacks, levers.loss_kernel):
        with trl_compat.adapter_input_casts_skipped(model, skip_casts):
            with attention_applied(model, levers.attention) if model is not None else contextlib.nullcontext():
                with trl_compat.lora_forward(levers.lora_kernel == "peftsft", levers.fallbacks):
                    with trl_compat.fused_layers(model, levers.lora_kernel == "peftsft", levers.fallbacks):
                        yield


def make_trainer(
    recipe: Recipe, model, tokenizer, train_ds, eval_ds, device: str, callbacks: list, levers: Levers | None = None
):
    """TRL's SFTTrainer over our pre-tokenized, pre-masked datasets, with the run's speed levers."""
    from trl import SFTConfig, SFTTrainer

    levers = levers or decide_levers(recipe, device, max(len(ids) for ids in train_ds["input_ids"]), model)
    evaluate_during = eval_ds is not None and recipe.training.eval_steps is not None
    arguments = trainer_arguments(recipe, device, evaluate_during, levers.precision, levers.activation_checkpointing)
    if levers.padding_free:  # no padding to leave out, and the pad token (often the end-of-turn one) is real text
        arguments["include_num_input_tokens_seen"] = "all"
    args = SFTConfig(
        **arguments,
        packing=recipe.data.packing,
        packing_strategy="bfd",
        padding_free=levers.padding_free,
        # our rows are truncated to max_length already (build_datasets); TRL refuses padding-free with a max_length
        max_length=None if levers.padding_free else recipe.data.max_length,
    )
    cast_frozen_base(model, levers.base_dtype)
    model.config.use_cache = False
    trainer = trainer_for_launch(lambda: SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(strategy_optimizer(recipe, model, args), None),  # None: the trainer's own (LoRA+ builds one)
    ), device)
    trl_compat.set_adapter_dtype(trainer.model, levers.adapter_dtype)  # after TRL's bf16 cast on a quantized base
    use_our_callbacks(trainer, recipe, evaluate_during)
    return trainer
