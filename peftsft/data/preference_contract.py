"""The pre-flight contract for preference data: SFT's checks on every answer, plus what pairs need.

Every pair scores both answers and only them (each answer's scored text is its reply, closed by the end-of-turn
token: the SFT reply checks, run as each answer was encoded), chosen ≠ rejected in every pair, and the template
saved with the adapter is the one the data was rendered with. KTO data should hold both kinds of answers. Rows
whose chosen and rejected answer different prompts never get here: reading them is an error at file:line.
"""

from __future__ import annotations

from peftsft.data.contract import (
    Check, Contract, end_of_turn_supervised, no_prompt_supervised, template_saved_identically,
)


def check_preference_contract(tokenizer, train_ds, eval_ds, stats, data) -> Contract:
    """Every check on the tokenized datasets (pairs, or KTO's unpaired answers) and the build's findings."""
    datasets = [ds for ds in (train_ds, eval_ds) if ds is not None]
    paired = "chosen_ids" in train_ds.column_names
    checks = [_every_answer_scored(datasets, paired)]
    checks += [_chosen_differs(datasets)] if paired else [_both_labels(stats)]
    checks += [
        _prompt_ends_between_tokens(stats),
        end_of_turn_supervised(stats),
        no_prompt_supervised(stats, "answer"),
        template_saved_identically(tokenizer, stats),
    ]
    return Contract(checks, data.enforce_contract)


def _every_answer_scored(datasets: list, paired: bool) -> Check:
    name = "every answer has scored tokens after a prompt"
    answers = ("chosen_ids", "rejected_ids") if paired else ("completion_ids",)
    total = 0
    for ds in datasets:
        for index, row in enumerate(ds):
            total += 1
            empty = [key for key in ("prompt_ids", *answers) if not row[key]]
            if empty:
                return Check(name, "FAIL", f"row {index}: {', '.join(empty)} empty")
    unit = "pairs (both answers)" if paired else "answers"
    return Check(name, "ok", f"{total} {unit}; prompt tokens are never scored (they are apart from the answers)")


def _chosen_differs(datasets: list) -> Check:
    name = "chosen ≠ rejected"
    for ds in datasets:
        for index, (chosen, rejected) in enumerate(zip(ds["chosen_ids"], ds["rejected_ids"])):
            if chosen == rejected:
                return Check(name, "FAIL", f"pair {index}: the two answers are the same tokens")
    return Check(name, "ok", "every pair's answers differ")


def _both_labels(stats) -> Check:
    """KTO learns from desirable and undesirable answers; one kind alone leaves half its loss without data."""
    name = "desirable and undesirable answers"
    good, bad = stats.checks.get("desirable", 0), stats.checks.get("undesirable", 0)
    if not (good and bad):
        return Check(name, "warn", f"{good} desirable, {bad} undesirable: KTO works best with both")
    return Check(name, "ok", f"{good} desirable, {bad} undesirable")


def _prompt_ends_between_tokens(stats) -> Check:
    """Where the template's generation prompt ends inside a token (a trailing space), that token joins the answer:
    training then sees the prompt without those characters, unlike generation, which is told to continue it."""
    name = "prompt ends between tokens"
    merged = stats.checks.get("merged", 0)
    if merged:
        return Check(name, "warn", f"{merged} answer(s) begin with a token that also holds the prompt's last "
                                   "characters (a generation prompt ending in a space?): it is scored as answer")
    return Check(name, "ok", "every answer starts on a token of its own")

