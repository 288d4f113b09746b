"""Export verification on its own: every limit (max and mean |Δ logit|, greedy agreement over reply positions, same
replies, chat template, token ids) fails at its boundary, against a reference and artifacts made by hand; and the
reference of a real tiny model holds its own runtime to zero difference. The exports themselves: test_export.py."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from peftsft.artifacts.export import verify
from peftsft.artifacts.export.verify import (
    DEFAULT_PROMPTS,
    TOKENIZER_PROBES,
    Check,
    Reference,
    Tolerance,
    check_artifact,
    held_out_prompts,
    loosest,
    print_checks,
    require_passed,
)
from peftsft.core.errors import UserError

VOCAB = 6
# two prompts (3 and 2 tokens) with greedy replies of 2 and 1 tokens: reply positions 2, 3 and 1 of their sequences
PROMPT_IDS = [[1, 2, 3], [4, 5]]
SEQUENCES = [torch.tensor([1, 2, 3, 0, 5]), torch.tensor([4, 5, 1])]


def logits(length: int, seed: int) -> torch.Tensor:
    """Logits whose every position has one clear winner (a margin of 2 over the rest), largest |logit| 4."""
    table = torch.rand(length, VOCAB, generator=torch.Generator().manual_seed(seed))
    table[torch.arange(length), torch.arange(length) % VOCAB] = 3.0
    table[0, 5] = -4.0
    return table


def reference(stop_ids=(0,)) -> Reference:
    return Reference(
        prompts=["p", "q"], chat_template="TEMPLATE", rendered=["<p>", "<q>"], prompt_ids=PROMPT_IDS,
        probe_rendered=["<probe>"], probe_ids=[[9, 9]], sequences=SEQUENCES,
        logits=[logits(5, 0), logits(3, 1)], stop_ids=list(stop_ids),
    )  # fmt: skip


class Artifact:
    """A runtime that returns the reference's logits with `change` applied, and the reference's greedy replies."""

    runtime = "fake"

    def __init__(self, ref: Reference, change=lambda i, t: t, tokens=None, template="TEMPLATE", replies=None):
        self.ref, self.change, self.chat_template = ref, change, template
        self.tokens = tokens or {**dict(zip(ref.rendered, ref.prompt_ids)), "<probe>": [9, 9]}
        self.replies = replies or dict(enumerate(ref.sequences))
        self.greedy_calls = []

    def logits(self, sequence):
        index = next(i for i, s in enumerate(self.ref.sequences) if torch.equal(s, sequence))
        return self.change(index, self.ref.logits[index].clone())

    def greedy(self, prompt, stops, new_tokens):
        self.greedy_calls.append((prompt, stops, new_tokens))
        return self.replies[self.ref.prompt_ids.index(prompt)]

    def tokenize(self, text):
        return self.tokens[text]


@pytest.fixture
def limits(monkeypatch):
    """A tolerance "test" set per test: max_rel, mean_rel, min_agreement."""

    def set_to(max_rel=1.0, mean_rel=1.0, min_agreement=0.0) -> str:
        monkeypatch.setitem(verify.TOLERANCES, "test", Tolerance(max_rel, mean_rel, min_agreement))
        return "test"

    return set_to


def test_an_identical_artifact_passes_with_its_numbers():
    ref = reference()
    artifact = Artifact(ref)
    check = check_artifact("merged", artifact, ref, "float32")
    assert check.passed and check.problems == []
    assert (check.max_diff, check.mean_diff, check.agreement, check.same_replies, check.prompts) == (0, 0, 1.0, 2, 2)
    assert (check.artifact, check.tolerance_name, check.runtime, check.scale) == ("merged", "float32", "fake", 4.0)
    assert artifact.greedy_calls == [(PROMPT_IDS[0], [0], verify.NEW_TOKENS), (PROMPT_IDS[1], [0], verify.NEW_TOKENS)]
    assert ref.scale == 4.0 and ref.longest == 5


def test_max_difference_fails_past_its_share_of_the_logit_scale(limits):
    ref = reference()

    def spike(size):  # one logit of the second prompt off by `size`: the mean stays tiny
        return Artifact(ref, lambda i, t: t.index_put_((torch.tensor(1), torch.tensor(4)), t[1, 4] + size * (i == 1)))

    name = limits(max_rel=0.1)  # 0.1 × scale 4.0 = 0.4
    assert check_artifact("a", spike(0.39), ref, name).passed
    check = check_artifact("a", spike(0.41), ref, name)
    assert check.problems == ["max |Δ logit| 0.41 > 0.4"] and check.max_diff == pytest.approx(0.41)


def test_mean_difference_fails_past_its_share_of_the_logit_scale(limits):
    ref = reference()
    name = limits(mean_rel=0.05)  # 0.2

    def shifted(by):  # every logit of both prompts moved alike: argmax kept, mean = max = `by`
        return Artifact(ref, lambda i, t: t + by)

    assert check_artifact("a", shifted(0.19), ref, name).passed
    check = check_artifact("a", shifted(0.21), ref, name)
    assert check.problems == ["mean |Δ logit| 0.21 > 0.2"] and check.mean_diff == pytest.approx(0.21)


def test_greedy_agreement_counts_reply_positions_only(limits):
    ref = reference()

    def flipped(index, position):  # the winner of one position moved to another token
        def change(i, t):
            if i == index:
                t[position] = t[position].flip(0)
            return t

        return Artifact(ref, change)

    name = limits(min_agreement=0.7)
    assert check_artifact("a", flipped(0, 0), ref, name).agreement == 1.0  # a prompt position: not a choice made
    assert check_artifact("a", flipped(0, 4), ref, name).agreement == 1.0  # after the last reply token: none
    check = check_artifact("a", flipped(0, 3), ref, name)
    assert check.agreement == pytest.approx(2 / 3) and check.problems == ["greedy agreement 66.7% < 70%"]
    assert check_artifact("a", flipped(1, 1), ref, name).agreement == pytest.approx(2 / 3)
    assert check_artifact("a", flipped(1, 1), ref, limits(min_agreement=0.6)).passed


def test_every_limit_is_inclusive():
    """A difference exactly at its limit passes (scale 4 and powers of two: exact in floats)."""
    at_limit = Check("a", "test", 4.0, max_diff=0.5, mean_diff=0.25, agreement=0.5, same_replies=0, prompts=1)
    assert verify._logit_problems(at_limit, Tolerance(0.125, 0.0625, 0.5)) == []
    assert len(verify._logit_problems(at_limit, Tolerance(0.12, 0.06, 0.51))) == 3


def test_agreement_over_a_single_reply_position():
    ref = reference()
    ref.prompt_ids, ref.sequences, ref.logits = [[4, 5]], [SEQUENCES[1]], [ref.logits[1]]
    assert check_artifact("a", Artifact(ref), ref, "float32").agreement == 1.0


def test_same_replies_count_only_identical_greedy_replies():
    ref = reference()
    other = Artifact(ref, replies={0: SEQUENCES[0], 1: torch.tensor([4, 5, 2])})
    assert check_artifact("a", other, ref, "float32").same_replies == 1


def test_a_different_chat_template_is_one_problem_whatever_the_tokens():
    ref = reference()
    check = check_artifact("a", Artifact(ref, template="OTHER", tokens={}), ref, "float32")
    assert check.problems == ["its chat template differs from the one used in training"]


def test_tokens_that_differ_name_the_text_and_the_first_difference():
    ref = reference()
    split = Artifact(ref, tokens={"<p>": [1, 2, 7, 8], "<q>": [4, 5], "<probe>": [9]})
    assert check_artifact("a", split, ref, "float32").problems == [
        "its tokenizer splits '<p>'… differently from training (first at token 2: [7, 8] vs [3])",
        "its tokenizer splits '<probe>'… differently from training (first at token 1: [] vs [9])",
    ]
    long = "<" + "x" * 48 + ">"  # quoted up to 40 characters, 3 tokens from the first difference on
    ref.rendered, ref.prompt_ids = [long, "<q>"], [[1, 2, 3, 4, 5, 6], [4, 5]]
    split = Artifact(ref, tokens={long: [1, 2, 7, 8, 9, 0], "<q>": [4, 5], "<probe>": [9, 9]})
    assert check_artifact("a", split, ref, "float32").problems == [
        f"its tokenizer splits {long[:40]!r}… differently from training (first at token 2: [7, 8, 9] vs [3, 4, 5])"]


def test_loosest_tolerance_and_held_out_prompts():
    assert loosest("float32", "bfloat16", "float16") == "bfloat16"
    assert loosest("gguf q4_0", "q8_0") == "gguf q4_0"
    assert held_out_prompts([]) == list(DEFAULT_PROMPTS)[: verify.MAX_PROMPTS]
    assert held_out_prompts(["a", "b", "a"]) == ["a", "b", DEFAULT_PROMPTS[0]]
    assert held_out_prompts(["a", "b", "c", "d"]) == ["a", "b", "c"]


def checks() -> list[Check]:
    good = Check("adapter", "float32", 4.0, 1e-6, 1e-7, 1.0, 3, 3)
    bad = Check("gguf", "gguf f16", 4.0, 0.5, 0.1, 0.5, 1, 3, runtime="llama.cpp", problems=["max |Δ logit| 0.5 > 0.04"])
    return [good, bad]


def test_require_passed_names_every_diverged_artifact_and_problem(tmp_path):
    good, bad = checks()
    require_passed([good], tmp_path)
    with pytest.raises(UserError) as info:
        require_passed([good, bad], tmp_path / "out")
    assert f"the gguf export diverged from base + adapter; nothing was written to {tmp_path / 'out'}" in str(info.value)
    assert info.value.problems == ["gguf: max |Δ logit| 0.5 > 0.04"]
    assert info.value.hint.startswith("a corrupted or wrongly converted artifact; --no-verify skips this check")
    worse = Check("merged", "float32", 4.0, 1.0, 0.5, 0.0, 0, 3, problems=["greedy agreement 0.0% < 99%"])
    with pytest.raises(UserError, match="the gguf, merged export diverged"):
        require_passed([bad, good, worse], tmp_path)


def test_print_checks_shows_results_and_each_tolerance_in_logits():
    console = Console(record=True, width=240)
    print_checks(console, checks())
    text = console.export_text()
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0].strip() == "verification: artifact re-loaded from disk vs base + adapter"
    assert lines[2:6] == [
        "  artifact   checked in        max Δ     mean Δ   greedy   replies   result",
        " " + "─" * 77,
        "  adapter    transformers   1.00e-06   1.00e-07   100.0%       3/3   ok",
        "  gguf       llama.cpp      5.00e-01   1.00e-01    50.0%       1/3   DIVERGED",
    ]  # numbers right-aligned under their headers
    assert ("Δ: |logit difference| over every position of the prompts and replies; greedy: reply positions where "
            "both pick the same next token; replies: identical greedy replies") in text
    assert "adapter (float32 tolerance): max Δ ≤ 4.00e-04, mean Δ ≤ 4.00e-05 (0.0001 and 1e-05" in text
    assert "gguf (gguf f16 tolerance): max Δ ≤ 4.00e-02, mean Δ ≤ 4.00e-03" in text and "greedy ≥ 95%" in text


def test_a_tiny_models_reference_holds_its_own_runtime_to_zero(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from peftsft.artifacts.export.runtimes import TransformersRuntime

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = verify.reference_outputs(model, tokenizer, ["Hi", "Tell me a joke"])
    assert ref.prompt_ids[0] == list(tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=True)["input_ids"])
    assert ref.rendered[1].endswith("Tell me a joke<|im_end|>\n<|im_start|>assistant\n")
    assert len(ref.probe_ids) == len(ref.probe_rendered) == len(TOKENIZER_PROBES)
    assert all(len(s) > len(p) for s, p in zip(ref.sequences, ref.prompt_ids))  # a reply was generated
    assert [tuple(x.shape) for x in ref.logits] == [(len(s), model.config.vocab_size) for s in ref.sequences]
    check = check_artifact("same model", TransformersRuntime(model, tokenizer), ref, "float32")
    assert check.passed and check.max_diff == 0 and check.same_replies == 2


def test_print_checks_keeps_a_long_artifact_name_whole_on_a_narrow_terminal():
    """The artifact column never wraps: the other columns give way (truncated) instead."""
    console = Console(record=True, width=70)
    print_checks(console, [Check("merged-bfloat16-export", "float32", 4.0, 1e-6, 1e-7, 1.0, 3, 3)])
    rows = [line for line in console.export_text().splitlines() if "3/3" in line]
    assert len(rows) == 1 and rows[0].startswith("  merged-bfloat16-export ")
