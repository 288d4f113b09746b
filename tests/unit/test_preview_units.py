"""The `data` preview on its own: the recipe's tokenizer loaded through the load guard, a sample cut into supervised
and unsupervised pieces and shown marked or coloured, a preference row's answers each after its prompt, what a
preference build trains on, and the statistics table (sources, lengths, shares, packing, template, replay)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rich.console import Console

from peftsft.data import preview
from peftsft.data.preview import (
    _packing_line,
    _sparkline,
    mask_pieces,
    marked_text,
    preference_counts,
    print_preference_row,
    print_sample,
    print_stats,
)
from tests.unit.test_formats_units import Columns, stats_for_preview


class LetterTokenizer:
    """Token i decodes to the i-th letter; a run of tokens decodes to its letters joined by nothing."""

    def decode(self, ids):
        return "".join("abcdefghijklmnopqrstuvwxyz"[i] for i in ids)


def plain_console(width: int = 120) -> Console:
    return Console(record=True, width=width, force_terminal=False, color_system=None)


def lines_of(console: Console) -> list[str]:
    return [line.rstrip() for line in console.export_text().splitlines()]


# ---------------------------------------------------------------------------------------------- the tokenizer


def test_the_recipes_tokenizer_is_loaded_from_the_materialized_source_through_the_guard(monkeypatch):
    import peftsft.models as models

    calls = []

    def guard(fn, *args):
        calls.append((fn.__name__, args))
        return fn(*args)

    monkeypatch.setattr(models, "_load_guard", guard)
    monkeypatch.setattr(models, "resolve_source", lambda source: f"resolved:{source}")
    monkeypatch.setattr(models, "materialize", lambda source: f"dir:{source}")
    monkeypatch.setattr(models, "load_tokenizer", lambda location, model: ("tokenizer", location, model.source))
    recipe = SimpleNamespace(model=SimpleNamespace(source="owner/model"))
    assert preview.load_recipe_tokenizer(recipe) == ("tokenizer", "dir:resolved:owner/model", "owner/model")
    assert calls == [("<lambda>", ("resolved:owner/model",)), ("<lambda>", ("dir:resolved:owner/model", recipe.model))]


# ---------------------------------------------------------------------------------------------- samples


def test_a_sample_is_cut_into_runs_of_supervised_and_unsupervised_tokens():
    sample = {"input_ids": [0, 1, 2, 3, 4, 5, 6], "labels": [-100, -100, 2, 3, -100, 5, 6]}
    assert mask_pieces(LetterTokenizer(), sample) == [("ab", False), ("cd", True), ("e", False), ("fg", True)]


def test_a_sample_starting_supervised_and_a_label_of_any_other_value_counts_as_learned():
    sample = {"input_ids": [0, 1, 2], "labels": [0, -1, -100]}
    assert mask_pieces(LetterTokenizer(), sample) == [("ab", True), ("c", False)]
    assert mask_pieces(LetterTokenizer(), {"input_ids": [], "labels": []}) == []


def test_marked_text_wraps_only_the_supervised_pieces():
    assert marked_text([("a", False), ("b c", True), ("", False), ("d", True)]) == "a[[b c]][[d]]"


def test_a_sample_without_a_terminal_is_shown_plain_with_its_counts():
    console = plain_console()
    sample = {"input_ids": [0, 1, 2, 3], "labels": [-100, 1, 2, -100]}
    print_sample(console, LetterTokenizer(), sample, "eval 2", markers=False)
    assert lines_of(console) == ["── eval 2 (4 tokens, 2 supervised)", "abcd"]


def test_a_preference_pair_shows_each_answer_after_its_prompt(monkeypatch):
    shown = []
    monkeypatch.setattr(preview, "print_sample", lambda *args: shown.append(args))
    row = {"prompt_ids": [0, 1], "chosen_ids": [2, 3], "rejected_ids": [4]}
    print_preference_row("console", "tok", row, "train 3", True)
    assert shown == [
        ("console", "tok", {"input_ids": [0, 1, 2, 3], "labels": [-100, -100, 2, 3]}, "train 3: chosen", True),
        ("console", "tok", {"input_ids": [0, 1, 4], "labels": [-100, -100, 4]}, "train 3: rejected", True),
    ]


@pytest.mark.parametrize("label, side", [(True, "desirable"), (False, "undesirable")])
def test_a_kto_answer_is_titled_by_its_label(label, side):
    console = plain_console()
    row = {"prompt_ids": [0], "completion_ids": [1, 2], "label": label}
    print_preference_row(console, LetterTokenizer(), row, "eval 1", markers=True)
    assert lines_of(console) == [f"── eval 1: {side} (3 tokens, 2 supervised)", "a[[bc]]"]


def test_preference_counts_without_a_cut_say_nothing_was_dropped():
    kto = Columns({"label": [False, False, True, False]})
    assert preference_counts(SimpleNamespace(checks={"identical_after_cut": 0}), kto) == (
        "1 desirable and 3 undesirable answers")
    pairs = Columns({"prompt_ids": [[1]] * 2, "chosen_ids": [[2]] * 2})
    assert preference_counts(SimpleNamespace(checks={"identical_after_cut": 1}), pairs) == (
        "2 pairs (1 dropped: max_length cut both answers to the same tokens)")


# ---------------------------------------------------------------------------------------------- statistics


def test_the_sources_table_shows_missing_counts_as_empty_and_text_literally():
    console = plain_console()
    stats = stats_for_preview(sources=[{"path": "[b]x[/b].csv", "format": "alpaca", "rows": 3},
                                       {"path": "h/i", "format": "text", "rows": 0, "bad": 0, "train": 0}])
    print_stats(console, stats)
    lines = lines_of(console)
    assert lines[:4] == ["                  data", " dataset       format  rows  bad  train", " [b]x[/b].csv  alpaca  3",
                         " h/i           text    0     0    0"]


def test_the_facts_show_a_short_sparkline_and_replay_share():
    console = plain_console()
    replay = {"replay_rows": 10, "actual_share": 0.123, "pool": "[p].jsonl"}
    stats = stats_for_preview(lengths={"min": 5, "max": 9, "histogram": [3, 1]}, replay=replay,
                              template={"name": "t.jinja", "end_of_turn": None}, cache="hit", tokens=3,
                              supervised_tokens=2)
    print_stats(console, stats)
    lines = lines_of(console)
    assert " tokens per sample  min 5, max 9" in lines
    assert " length histogram   5 █▃ 9 tokens" in lines
    assert " supervised share   66.7% of 3 tokens" in lines
    assert " template           t.jinja (end of turn None)" in lines
    assert " cache              hit" in lines
    assert lines[-6:] == [" replay             10 general rows (12.3% of training) from [p].jsonl"] + [
        f"skipped f.jsonl:{i}: bad [x]" for i in range(5)]


def test_a_sparkline_rounds_each_count_to_the_nearest_of_eight_bars():
    assert _sparkline([8, 1, 2, 4, 5], None, 7) == "None █▂▃▅▅ 7 tokens"
    assert _sparkline([0, 3], 1, 2) == "1  █ 2 tokens"


def test_a_packing_line_without_enabled_is_off_and_efficiency_has_one_decimal():
    assert _packing_line({"rows": 7, "efficiency": 0.98765}) == (
        "off (packing would give 7 rows, 98.8% efficiency (non-pad share of max_length rows))")
    assert _packing_line({"enabled": True, "rows": 1, "efficiency": 1}) == (
        "on: 1 rows, 100.0% efficiency (non-pad share of max_length rows)")
    assert _packing_line({}) == "n/a"


def test_skipped_rows_are_flagged_in_yellow_and_shown_without_highlighting():
    from tests.unit.test_formats_units import preview_console

    console = preview_console()
    print_stats(console, stats_for_preview())
    ansi = console.export_text(styles=True, clear=False).splitlines()
    assert ansi[-5:] == [f"\x1b[33mskipped\x1b[0m f.jsonl:{i}: bad [x]" for i in range(5)]
