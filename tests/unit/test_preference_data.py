"""Preference data: the row forms people have, one internal form, exact token ids with only the answers scored,
file:line errors for what a row gets wrong, the pairs' pre-flight contract, `data preview`, and the demo pairs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from peftsft.commands.cli import main
from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data.formats import Mapping, RowError, detect_format
from peftsft.data.preference import Pair, Unpaired, parse_label, to_preference
from peftsft.data.preference_build import build_preference_datasets
from peftsft.data.preference_contract import check_preference_contract
from peftsft.data.templates import render
from tests.conftest import write_jsonl
from tests.unit.test_data import private_cache, tok  # noqa: F401 (fixtures: a private cache, the template put back)
from tests.e2e.probes import NAME_PROBES, NEGATIVE_PROBES, near_duplicates, sample_prompts, training_questions

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "recipes" / "data"
Q, GOOD, BAD = "What is your name?", "I'm Pip, the peftsft assistant.", "Pip."
USER = [{"role": "user", "content": Q}]


def said(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def build(tok, tmp_path, rows, paired=True, name="p.jsonl", spec=None, **settings):
    settings.setdefault("cache", False)
    data = DataSection(datasets=[DatasetSpec(path=str(write_jsonl(tmp_path / name, rows)), **(spec or {}))], **settings)
    return (*build_preference_datasets(tok, data, seed=0, paired=paired), data)


def text(tok, ids) -> str:
    return tok.decode(ids)


# ---------------------------------------------------------------------------------------------- row forms


def test_every_pair_form_reads_as_the_same_pair():
    """Conversational, flat text and UltraFeedback (whole conversations, prompt string, scores) give one Pair."""
    expected = Pair(USER, said("assistant", GOOD)[0], said("assistant", BAD)[0])
    forms = [
        {"prompt": USER, "chosen": said("assistant", GOOD), "rejected": said("assistant", BAD)},
        {"prompt": Q, "chosen": GOOD, "rejected": BAD},
        {"chosen": USER + said("assistant", GOOD), "rejected": USER + said("assistant", BAD)},
        {"prompt": Q, "chosen": USER + said("assistant", GOOD), "rejected": USER + said("assistant", BAD),
         "score_chosen": 9.0, "score_rejected": 2.5},
    ]
    assert [to_preference(row, "auto") for row in forms] == [expected] * 4
    sharegpt = {"question": Q, "better": [{"from": "gpt", "value": GOOD}], "worse": BAD}
    mapping = Mapping({"prompt": "question", "chosen": "better", "rejected": "worse"})
    assert to_preference(sharegpt, "preference", mapping) == expected


def test_system_column_history_and_unpaired_rows():
    history = [*said("system", "Be brief."), *USER, *said("assistant", GOOD), *said("user", "And again?")]
    pair = to_preference({"prompt": history[1:], "system": "Be brief.", "chosen": "Pip!", "rejected": "Pip."}, "auto")
    assert pair.prompt == history and pair.chosen == said("assistant", "Pip!")[0]
    row = {"prompt": Q, "completion": said("assistant", GOOD), "label": False}
    assert to_preference(row, "auto") == Unpaired(USER, said("assistant", GOOD)[0], False)


def test_kto_labels_are_read_by_their_word_never_by_truthiness():
    assert [parse_label(v) for v in (True, False, 1, 0, "true", "False", " no ", "1", "0")] == [
        True, False, True, False, True, False, False, True, False]
    for bad in ("maybe", 2, None, 0.5):
        with pytest.raises(RowError, match="label must be true"):
            parse_label(bad)


@pytest.mark.parametrize(("row", "problem"), [
    ({"chosen": USER + said("assistant", GOOD), "rejected": said("user", "Who are you?") + said("assistant", BAD)},
     "answer different prompts: turn 0 differs"),
    ({"prompt": Q, "chosen": GOOD, "rejected": GOOD + "\n"}, "the same answer"),
    ({"prompt": Q, "chosen": GOOD, "rejected": BAD, "score_chosen": 2, "score_rejected": 8}, "look swapped"),
    ({"prompt": Q, "chosen": GOOD, "rejected": BAD, "score_chosen": 5, "score_rejected": 5}, "a tie prefers nothing"),
    ({"chosen": GOOD, "rejected": BAD}, "missing column 'prompt'"),
    ({"prompt": "Other?", "chosen": USER + said("assistant", GOOD), "rejected": USER + said("assistant", BAD)},
     "'prompt' is not the prompt"),
    ({"prompt": Q, "chosen": said("assistant", GOOD) * 2, "rejected": BAD}, "must end in one assistant reply"),
    ({"prompt": said("assistant", "hi"), "chosen": GOOD, "rejected": BAD}, "must end in a user"),
    ({"prompt": Q, "completion": GOOD, "label": "yes please"}, "label must be true"),
    ({"prompt": Q, "completion": USER + said("assistant", GOOD), "label": True}, "must be one assistant reply"),
    ({"prompt": Q, "answer": GOOD}, "cannot tell the preference format"),
])
def test_what_a_row_gets_wrong_is_named(row, problem):
    with pytest.raises(RowError, match=problem):
        to_preference(row, "auto")


def test_row_errors_carry_file_and_line_and_skip_counts(tmp_path, tok):
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": BAD}, "{broken",
            {"prompt": Q, "chosen": GOOD, "rejected": BAD, "score_chosen": 1, "score_rejected": 3}]
    with pytest.raises(UserError, match=rf"{tmp_path / 'p.jsonl'}:2: malformed JSON"):
        build(tok, tmp_path, rows)
    with pytest.raises(UserError, match=rf"p\.jsonl:2: score_chosen \(1\) is below score_rejected \(3\)"):
        build(tok, tmp_path, [rows[0], rows[2]])
    train, _, stats, _ = build(tok, tmp_path, rows, on_bad_row="skip")
    assert len(train) == 1 and [line.split(": ", 1)[0] for line in stats.bad_rows] == [
        f"{tmp_path / 'p.jsonl'}:2", f"{tmp_path / 'p.jsonl'}:3"]
    (tmp_path / "strict.jinja").write_text(  # a row the template refuses is a bad row at its line too
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    refused = [rows[0], {"prompt": Q, "system": "Be brief.", "chosen": GOOD, "rejected": BAD}]
    with pytest.raises(UserError, match=r"p\.jsonl:2: the chat template cannot render it: no system role"):
        build(tok, tmp_path, refused, template=str(tmp_path / "strict.jinja"))
    csv_file = tmp_path / "k.csv"  # CSV holds labels as words: "false" must stay undesirable
    with csv_file.open("w", newline="") as handle:
        csv.writer(handle).writerows([["prompt", "completion", "label"], [Q, GOOD, "true"], [Q, BAD, "false"]])
    data = DataSection(datasets=[DatasetSpec(path=str(csv_file))], cache=False)
    train, _, stats = build_preference_datasets(tok, data, seed=0, paired=False)
    assert sorted((text(tok, r["completion_ids"]), r["label"]) for r in train) == [
        (GOOD + "<|im_end|>", True), (BAD + "<|im_end|>", False)]


def test_chat_runs_refuse_preference_rows_instead_of_learning_the_bad_answers():
    with pytest.raises(RowError, match='preference data, not chat data: set task = "preference"'):
        detect_format({"prompt": Q, "completion": BAD, "label": False})
    with pytest.raises(RowError, match="chosen \\+ rejected answers"):
        detect_format({"prompt": Q, "chosen": GOOD, "rejected": BAD})
    assert detect_format({"prompt": Q, "completion": GOOD, "label": "x"}) == "prompt_completion"


# ---------------------------------------------------------------------------------------------- token ids


def test_pairs_give_exactly_the_prompt_and_each_answer_through_its_end_of_turn(tmp_path, tok):
    rows = [{"prompt": [*said("system", "Be brief."), *USER, *said("assistant", GOOD), *said("user", "Again?")],
             "chosen": GOOD, "rejected": BAD}]
    train, _, stats, _ = build(tok, tmp_path, rows)
    row = train[0]
    prompt = render(tok, [*said("system", "Be brief."), *USER, *said("assistant", GOOD), *said("user", "Again?")],
                    add_generation_prompt=True)
    assert text(tok, row["prompt_ids"]) == prompt  # the earlier reply in the history is prompt, never scored
    assert text(tok, row["chosen_ids"]) == GOOD + "<|im_end|>"  # not the template's "\n" after it
    assert text(tok, row["rejected_ids"]) == BAD + "<|im_end|>"
    assert row["prompt_ids"] + row["chosen_ids"] == tok(prompt + GOOD + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert stats.checks["pairs"] == 1 and stats.checks["closed"] == 2


def test_kto_unpairs_pairs_into_desirable_chosen_and_undesirable_rejected(tmp_path, tok):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"{Q} {i}", "chosen": f"{GOOD} {i}", "rejected": f"{BAD} {i}"} for i in range(4)])
    unpaired = write_jsonl(tmp_path / "unpaired.jsonl", [{"prompt": Q, "completion": "Nope.", "label": False}])
    data = DataSection(datasets=[DatasetSpec(path=str(pairs)), DatasetSpec(path=str(unpaired))], cache=False)
    train, _, stats = build_preference_datasets(tok, data, seed=0, paired=False)
    judged = {text(tok, r["completion_ids"]): r["label"] for r in train}
    assert judged == {**{f"{GOOD} {i}<|im_end|>": True for i in range(4)},
                      **{f"{BAD} {i}<|im_end|>": False for i in range(4)}, "Nope.<|im_end|>": False}
    assert (stats.checks["desirable"], stats.checks["undesirable"]) == (4, 5)
    in_file_order = [f"{answer} {i}<|im_end|>" for i in range(4) for answer in (GOOD, BAD)] + ["Nope.<|im_end|>"]
    assert [text(tok, ids) for ids in train["completion_ids"]] != in_file_order  # spread: KTO reads rows in order
    again, _, _ = build_preference_datasets(tok, data, seed=0, paired=False)
    assert again["completion_ids"] == train["completion_ids"]  # the seeded order is reproducible


def test_pair_methods_refuse_unpaired_rows(tmp_path, tok):
    with pytest.raises(UserError, match=r"p\.jsonl:1: an unpaired row") as info:
        build(tok, tmp_path, [{"prompt": Q, "completion": GOOD, "label": True}])
    assert 'method = "kto"' in info.value.hint


def test_a_prompt_longer_than_max_length_drops_the_pair_and_cut_answers_are_counted(tmp_path, tok):
    rows = [{"prompt": "word " * 200, "chosen": GOOD, "rejected": BAD},
            {"prompt": Q, "chosen": GOOD + " and more" * 40, "rejected": BAD},
            {"prompt": Q, "chosen": GOOD, "rejected": BAD}]
    train, _, stats, _ = build(tok, tmp_path, rows, max_length=64)
    assert len(train) == 2 and stats.dropped_unsupervised == 2 and stats.truncated == 3
    assert stats.checks["closed"] == 3 and stats.checks["unclosed"] == 0  # the cut answer is not "unclosed"


# ---------------------------------------------------------------------------------------------- contract


def contract(tok, tmp_path, rows, paired=True, template_text=None):
    settings = {}
    if template_text is not None:
        (tmp_path / "t.jinja").write_text(template_text)
        settings["template"] = str(tmp_path / "t.jinja")
    train, evals, stats, data = build(tok, tmp_path, rows, paired=paired, **settings)
    return check_preference_contract(tok, train, evals, stats, data)


PAIRS = [{"prompt": Q, "chosen": GOOD, "rejected": BAD}, {"prompt": "Hi", "chosen": "Hello! I'm Pip.", "rejected": "Hi."}]


def test_contract_passes_on_good_pairs_and_on_kto_rows(tmp_path, tok):
    checks = contract(tok, tmp_path, PAIRS).checks
    assert [(c.name, c.status) for c in checks] == [
        ("every answer has scored tokens after a prompt", "ok"), ("chosen ≠ rejected", "ok"),
        ("prompt ends between tokens", "ok"),
        ("end-of-turn token is supervised", "ok"), ("no supervised token in a prompt", "ok"),
        ("saved template = training template", "ok")]
    assert "closes 4 of 4 replies" in checks[3].detail
    kto = contract(tok, tmp_path, [{"prompt": Q, "completion": GOOD, "label": True}], paired=False).checks
    assert ("desirable and undesirable answers", "warn") in [(c.name, c.status) for c in kto]


def test_contract_fails_where_the_template_puts_no_end_of_turn_after_a_reply(tmp_path, tok):
    template = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n\n{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    failed = {c.name: c.detail for c in contract(tok, tmp_path, PAIRS, template_text=template).failures}
    assert "never learn to stop" in failed["end-of-turn token is supervised"]


def test_contract_fails_where_template_text_would_be_scored(tmp_path, tok):
    """A template that adds text to replies beyond its generation prompt (an empty think block) gets it scored."""
    think = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think></think>"
             "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
             "{% endif %}")
    failed = {c.name: c.detail for c in contract(tok, tmp_path, PAIRS, template_text=think).failures}
    assert list(failed) == ["no supervised token in a prompt"] and "(chosen)" in failed["no supervised token in a prompt"]


def test_a_generation_prompt_ending_in_a_space_gives_its_token_to_both_answers_and_warns(tmp_path, tok):
    """TRL's rule: where prompt and answer share a token, the prompt ends where both sequences still agree."""
    spaced = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}assistant: {% endif %}")
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": "\nPip."}, {"prompt": Q, "chosen": GOOD, "rejected": "I don't know."}]
    (tmp_path / "t.jinja").write_text(spaced)
    train, evals, stats, data = build(tok, tmp_path, rows, template=str(tmp_path / "t.jinja"))
    assert all(text(tok, row["prompt_ids"]).endswith(f"{Q}<|im_end|>\nassistant:") for row in train)
    assert [(text(tok, row["chosen_ids"]), text(tok, row["rejected_ids"])) for row in train] == [
        (f" {GOOD}<|im_end|>", " \nPip.<|im_end|>"), (f" {GOOD}<|im_end|>", " I don't know.<|im_end|>")]
    checks = {c.name: (c.status, c.detail) for c in check_preference_contract(tok, train, evals, stats, data).checks}
    assert checks["prompt ends between tokens"][0] == "warn" and "4 answer(s)" in checks["prompt ends between tokens"][1]
    assert {status for name, (status, _) in checks.items() if name != "prompt ends between tokens"} == {"ok"}


def test_contract_fails_on_a_pair_whose_answers_are_the_same_tokens(tmp_path, tok):
    train, evals, stats, data = build(tok, tmp_path, PAIRS)
    same = Dataset.from_list([{**row, "rejected_ids": row["chosen_ids"]} for row in train])
    failed = {c.name: c.detail for c in check_preference_contract(tok, same, evals, stats, data).failures}
    assert failed == {"chosen ≠ rejected": "pair 0: the two answers are the same tokens"}
    empty = Dataset.from_list([{**row, "chosen_ids": []} for row in train])
    failed = {c.name: c.detail for c in check_preference_contract(tok, empty, evals, stats, data).failures}
    assert failed["every answer has scored tokens after a prompt"] == "row 0: chosen_ids empty"


def test_preference_builds_are_cached_and_pairs_apart_from_kto_answers(tmp_path, tok):
    rows = PAIRS
    first = build(tok, tmp_path, rows, cache=True)
    assert first[2].cache == "miss" and build(tok, tmp_path, rows, cache=True)[2].cache == "hit"
    kto = build(tok, tmp_path, rows, paired=False, cache=True)
    assert kto[2].cache == "miss" and "label" in kto[0].column_names


# ---------------------------------------------------------------------------------------------- preview and demo


def preference_recipe(tmp_path, model_dir: Path, method="dpo") -> Path:
    """The demo's pairs on SmolLM2 as the session already converted it (this module's cache is a private one, where
    the embedded default would be converted from its GGUF again)."""
    recipe = tmp_path / "pref.toml"
    recipe.write_text(f'''task = "preference"
[model]
source = "{model_dir}"
[[data.datasets]]
path = "{DATA / 'preference_train.jsonl'}"
[data]
eval_path = "{DATA / 'preference_eval.jsonl'}"
cache = false
[preference]
method = "{method}"
''', encoding="utf-8")
    return recipe


def test_preview_shows_both_answers_with_their_scored_tokens_and_the_contract(tmp_path, capsys, smollm_dir):
    assert main(["data", "preview", str(preference_recipe(tmp_path, smollm_dir)), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "method = 'dpo', 240 pairs for training" in out
    assert out.count(": chosen (") == 2 and out.count(": rejected (") == 2
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>]]\n" in out and "preference (detected)" in out
    assert "pre-flight data contract" in out and "chosen ≠ rejected" in out and "FAIL" not in out
    assert main(["data", "preview", str(preference_recipe(tmp_path, smollm_dir, "kto")), "-n", "1"]) == 0
    assert "240 desirable and 240 undesirable answers" in capsys.readouterr().out


def test_demo_pairs_are_regenerated_byte_for_byte(tmp_path):
    for name in ("make_preference_data.py", "make_persona_data.py", "persona_train.jsonl", "persona_eval.jsonl",
                 "persona_probes.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    subprocess.run([sys.executable, str(tmp_path / "make_preference_data.py")], check=True, capture_output=True)
    for name in ("preference_train.jsonl", "preference_eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_demo_pairs_prefer_pip_and_hold_their_eval_questions_out():
    rows = {split: [json.loads(line) for line in (DATA / f"preference_{split}.jsonl").open()] for split in ("train", "eval")}
    question = {split: [r["prompt"][-1]["content"] for r in rows[split]] for split in rows}
    sft = training_questions()
    for sft_file in ("persona_eval.jsonl", "persona_probes.jsonl"):
        sft += [m["content"] for line in (DATA / sft_file).open() for m in _turns(json.loads(line)) if m["role"] == "user"]
    assert not {q.lower() for q in question["train"] + question["eval"]} & {q.lower() for q in sft}
    assert near_duplicates(sorted(set(question["eval"])), sorted(set(question["train"])) + training_questions()) == []
    assert near_duplicates([*NAME_PROBES, *NEGATIVE_PROBES, *sample_prompts()], question["train"] + question["eval"]) == []
    answers = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows["train"]]
    rambling = sum(chosen in rejected and len(rejected) > 2 * len(chosen) for chosen, rejected in answers)
    curt = sum(len(rejected) <= 100 and chosen not in rejected for chosen, rejected in answers)
    assert rambling == curt == 120  # half of each: the generator alternates


def _turns(row):
    return row["messages"] if isinstance(row, dict) else row
