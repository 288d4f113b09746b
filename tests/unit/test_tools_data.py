"""The shipped tool-calling data (recipes/data/make_tool_data.py): held-out eval phrasings, a mix with enough rows
that need no call, and committed files that are exactly what the seeded generator writes."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.probes import MAX_OVERLAP, nearest

DATA = Path(__file__).resolve().parents[2] / "recipes" / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _question(row: dict) -> str:
    return row["conversations"][0]["value"]


def _called(row: dict) -> str | None:
    """The function the row's reply calls, None for a plain answer."""
    reply = row["conversations"][1]
    return json.loads(reply["value"])["name"] if reply["from"] == "function_call" else None


def _offered(row: dict) -> set[str]:
    return {t.get("function", t)["name"] for t in json.loads(row["tools"])}


def test_eval_questions_are_held_out_from_every_training_question():
    """Call rows and no-call rows alike: no eval question shares more than MAX_OVERLAP of its words with a
    training question (word-set Jaccard, as for the persona probes)."""
    seen = [_question(r) for r in _rows("tools_train.jsonl")]
    near = [(q, *nearest(q, seen)) for q in map(_question, _rows("tools_eval.jsonl"))]
    assert not [n for n in near if n[1] > MAX_OVERLAP], [n for n in near if n[1] > MAX_OVERLAP]


def test_eval_set_is_large_enough_for_both_accuracies():
    """60 call rows (12 per function) and 30 rows that need no call, 10 of them asking for a tool the row lacks."""
    rows = _rows("tools_eval.jsonl")
    calls = Counter(_called(r) for r in rows)
    assert calls.pop(None) == 30 and sum(calls.values()) == 60 and set(calls.values()) == {12}, calls
    lacking = [r for r in rows if _called(r) is None and _asks_for_a_tool(_question(r))]
    assert len(lacking) == 10 and all(_asks_for_a_tool(_question(r)) not in _offered(r) for r in lacking)


def _asks_for_a_tool(question: str) -> str | None:
    """The function one of whose held-out phrasings (the generator's own) the question fills, if any."""
    for function, (_, held_out) in _generator().PHRASINGS.items():
        patterns = ("".join(".+" if i % 2 else re.escape(part) for i, part in enumerate(re.split(r"[{}]", p)))
                    for p in held_out)
        if any(re.fullmatch(pattern, question) for pattern in patterns):
            return function
    return None


def test_training_mix_teaches_when_not_to_call():
    """Every call row offers its function; about two rows in five need no call, and some of those ask for a
    function the row does not offer (the answer says so instead of calling a distractor)."""
    rows = _rows("tools_train.jsonl")
    calls = [r for r in rows if _called(r)]
    assert all(_called(r) in _offered(r) for r in calls)
    share = 1 - len(calls) / len(rows)
    assert 0.3 <= share <= 0.5, share
    quiet = [r["conversations"][1]["value"] for r in rows if not _called(r)]
    assert sum(text.startswith("Sorry, I can't") for text in quiet) >= 30
    assert len(set(map(_question, (r for r in rows if not _called(r))))) >= 100  # varied, not a few repeated


def _generator():
    spec = importlib.util.spec_from_file_location("make_tool_data", DATA / "make_tool_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["tools_train.jsonl", "tools_eval.jsonl"])
def test_committed_files_are_what_the_seeded_generator_writes(tmp_path, monkeypatch, name):
    generator = _generator()
    monkeypatch.setattr(generator, "OUT_DIR", tmp_path)
    generator.main()
    assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()
