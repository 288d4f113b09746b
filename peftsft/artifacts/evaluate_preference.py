"""`eval` for preference runs: the tuned model against the model the run started from (its reference).

On held-out pairs: DPO's implicit reward (accuracy, margin) and how often each model finds the chosen answer likelier.
On the pairs' prompts: a greedy answer from each model, the tuned model's win rate judged by its own per-token
log-probabilities, and the answers' lengths. Then the general check on both. Saved as JSON, printed as a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.artifacts.evaluate import EvalRequest
from peftsft.artifacts.preference_scores import (
    judge_answers, lengths, pair_logprobs, prefers_chosen, reward_metrics, win_rate,
)
from peftsft.core.errors import UserError
from peftsft.data.preference import Pair

START = "start"  # the adapter name the start model's adapter is loaded under, beside the tuned one
JUDGE = "the tuned model's mean log-probability per answer token (length-normalised)"
REWARD = "beta × (log π_tuned − log π_start), summed over the answer's tokens (DPO's implicit reward)"


def evaluate_preference(request: EvalRequest, console: Console) -> Path:
    """A preference run on held-out pairs and their prompts; the report saved as JSON (returned: where)."""
    from peftsft.core.rundir import RunDir, write_json
    from peftsft.loading import load

    if not RunDir.holds_run(request.model):
        raise UserError(f"{request.model}: a preference eval needs the run dir (it loads the start model beside the "
                        "tuned adapter)", hint="python -m peftsft eval runs/<preference run>")
    if not request.compare:
        raise UserError("--no-base: a preference eval is a comparison with the model the run started from",
                        hint="drop --no-base")
    with console.status(f"loading {request.model}"):
        loaded = load(request.model, request.device)
    pairs, source = held_out_pairs(loaded.recipe, request.data)
    report = preference_report(loaded, pairs[: request.limit], request.max_new_tokens, request.batch_size, console)
    report = {"model": request.model, "data": source, **report}
    out = Path(request.out) if request.out else RunDir(request.model).eval_file
    write_json(out, report)
    console.print(results_table(report, f"{source}: {report['rewards']['pairs']} pair(s), "
                                        f"{report['win_rate']['prompts']} prompt(s)"))
    return out


def preference_report(loaded, pairs: list[Pair], max_new_tokens: int, batch_size: int, console: Console) -> dict:
    """Rewards, chosen-preference, win rate, lengths and the general check of `loaded` (a preference run) against
    the model it started from."""
    recipe = loaded.recipe
    max_length, beta = recipe.data.max_length, recipe.preference.beta
    tokenizer = loaded.tokenizer
    prompts = unique_prompts(pairs)
    scores, answers = {}, {}
    for side in ("start", "tuned"):
        with console.status(f"scoring {len(pairs)} pair(s) and answering {len(prompts)} prompt(s): {side}"), \
                use(loaded, side) as model:
            scores[side] = pair_logprobs(model, tokenizer, pairs, max_length, batch_size)
            answers[side] = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    with console.status("judging the answers"), use(loaded, "tuned") as model:
        judged = {side: judge_answers(model, tokenizer, prompts, answers[side], max_length, batch_size)
                  for side in answers}
    return {
        "task": "preference", "method": recipe.preference.method, "beta": beta, "start": start_source(recipe),
        "max_new_tokens": max_new_tokens,
        "rewards": {**reward_metrics(scores["tuned"], scores["start"], beta), "reward": REWARD},
        "prefers_chosen": {side: prefers_chosen(scores[side]) for side in scores},
        "win_rate": {**win_rate(judged["tuned"], judged["start"], answers["tuned"], answers["start"]), "judge": JUDGE,
                     "lengths": {side: lengths(answers[side], judged[side]) for side in answers}},
        "answers": [{"prompt": p, **{side: answers[side][i] for side in answers},
                     **{f"{side}_per_token": round(judged[side][i].per_token, 4) for side in judged}}
                    for i, p in enumerate(prompts)],
        "general": general(loaded, console),
    }


# ---------------------------------------------------------------------------------------------- the two models


def start_source(recipe) -> str:
    """What the run started from: the base with the SFT adapter it continued, or the base alone."""
    return f"{recipe.model.source} + {recipe.model.adapter}" if recipe.model.adapter else recipe.model.source


def use(loaded, side: str):
    """A context giving the "start" model (the run's reference) or the "tuned" one."""
    return start_model(loaded) if side == "start" else nullcontext(loaded.model)


@contextmanager
def start_model(loaded) -> Iterator:
    """The model the run started from, sharing the loaded base: the base (the tuned adapter off), or the base with
    the continued SFT adapter switched in for the block (loaded once, beside the tuned one)."""
    from peftsft.core.rundir.adapter import load_adapter
    from peftsft.tasks.preference.model import sft_adapter_dir

    if loaded.recipe.model.adapter is None:
        with loaded.base() as model:
            yield model
        return
    model = loaded.model
    if START not in model.peft_config:  # the folder as training resolved it (a run dir's adapter/, or the folder)
        load_adapter(model, sft_adapter_dir(loaded.recipe), START)
    active = model.active_adapter
    model.set_adapter(START)
    try:
        yield model
    finally:
        model.set_adapter(active)


# ---------------------------------------------------------------------------------------------- data and answers


def held_out_pairs(recipe, data_path: str | None) -> tuple[list[Pair], str]:
    """(pairs, where from): every row of --data, else the run's eval_path, else its eval_fraction split (the rows
    shuffled with the seed, eval first, as data.build.split does); pairs only."""
    import random

    from peftsft.data.build import DataStats, eval_spec
    from peftsft.data.items import load_items
    from peftsft.data.preference_build import PREFERENCE

    data, stats = recipe.data, DataStats()
    if data_path or data.eval_path:
        source = data_path or data.eval_path
        items = load_items(eval_spec(data, source), -1, data, stats, PREFERENCE)
    elif data.eval_fraction > 0:
        items = [item for i, spec in enumerate(data.datasets) for item in load_items(spec, i, data, stats, PREFERENCE)]
        random.Random(recipe.training.seed).shuffle(items)
        items = items[: max(1, round(len(items) * data.eval_fraction))]
        source = f"eval_fraction {data.eval_fraction} of the training pairs"
    else:
        raise UserError("no held-out pairs to evaluate on",
                        hint="pass --data PAIRS.jsonl (prompt, chosen, rejected), or set [data] eval_path")
    unpaired = next((item for item in items if not isinstance(item.content, Pair)), None)
    if unpaired is not None:
        raise UserError(f"{unpaired.where}: an unpaired row (prompt + completion + label); rewards and win rate "
                        "compare a chosen and a rejected answer", hint="evaluate on pairs: prompt, chosen, rejected")
    if not items:
        raise UserError(f"{source}: no pairs to evaluate")
    return [item.content for item in items], source


def unique_prompts(pairs: list[Pair]) -> list[list[dict]]:
    """Each distinct prompt once, in order (held-out sets pair one prompt with several rejected answers)."""
    seen, prompts = set(), []
    for pair in pairs:
        key = repr(pair.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(pair.prompt)
    return prompts


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers, `batch_size` prompts a generate call, at most `max_new_tokens` each."""
    from peftsft.generation import Sampling, answer_batch

    return answer_batch(model, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens), batch_size)


def general(loaded, console: Console) -> dict | None:
    """The general check (training.general_check) on the start and the tuned model ("base" in it is the start)."""
    from peftsft.training.general_check import GeneralCheck, describe, for_summary

    check = GeneralCheck.for_recipe(loaded.recipe)
    if check is None:
        return None
    scores = {}
    for side in ("start", "tuned"):
        with console.status(f"general check: {side}"), use(loaded, side) as model:
            scores[side] = check.score(model, loaded.tokenizer)
    result = check.compare(scores["start"], scores["tuned"])
    console.print(describe(result) + (" — [bold yellow]past the limit[/]" if result["regressed"] else ""))
    return for_summary(result)


# ---------------------------------------------------------------------------------------------- display


def results_table(report: dict, title: str) -> Table:
    """The start and the tuned model side by side; what exists for one side only is shown there."""
    table = Table(title=title)
    for name, justify in (("metric", "left"), ("start", "right"), ("tuned", "right")):
        table.add_column(name, justify=justify)
    rewards, wins, chosen = report["rewards"], report["win_rate"], report["prefers_chosen"]
    table.add_row("reward accuracy (held-out pairs) ↑", "—", f"{rewards['accuracy']:.3f}")
    table.add_row("reward margin (mean) ↑", "—", f"{rewards['margin']:.4g}")
    table.add_row("prefers chosen (log-prob per token) ↑", f"{chosen['start']:.3f}", f"{chosen['tuned']:.3f}")
    table.add_row(f"win rate over start ({wins['wins']}/{wins['ties']}/{wins['losses']} w/t/l) ↑", "—",
                  f"{wins['win_rate']:.3f}")
    for unit in ("tokens", "words"):
        table.add_row(f"answer length ({unit}, mean)", *(f"{wins['lengths'][s][unit]:.1f}" for s in ("start", "tuned")))
    if report.get("general"):
        for key in ("loss", "accuracy"):
            table.add_row(f"general check {key} {'↓' if key == 'loss' else '↑'}",
                          *(f"{report['general'][s][key]:.4g}" for s in ("base", "tuned")))
    table.caption = f"start: {report['start']}; win rate judged by {JUDGE}"
    return table
