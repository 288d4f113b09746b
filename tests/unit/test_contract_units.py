"""Unit tests of the pre-flight data contract's checks: each check's name, status and detail from small fake
datasets and build findings, the table printed, and a failed contract stopping the run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.data import contract
from peftsft.data.contract import Check, Contract, ReplyChecks, Run
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.templates import template_sha

SUPERVISED = "every sample has supervised tokens"


def samples(n: int, bad: dict[int, list[int]] | None = None) -> Dataset:
    """`n` samples of two tokens, the second supervised; `bad`: row → labels that replace its own."""
    labels = [(bad or {}).get(i, [IGNORE, 7]) for i in range(n)]
    return Dataset.from_dict({"input_ids": [[5, 7]] * n, "labels": labels})


def stats_of(checks: dict | None = None, **template) -> SimpleNamespace:
    return SimpleNamespace(checks=checks or {}, template=template)


# ---------------------------------------------------------------------------------------------- every sample


def test_every_sample_supervised_counts_the_samples_of_every_dataset():
    check = contract._every_sample_supervised([samples(2), samples(3)])
    assert check == Check(SUPERVISED, "ok", "5 samples, labels = input ids where supervised")


def test_a_sample_without_supervised_tokens_is_named_by_its_place_in_its_dataset():
    check = contract._every_sample_supervised([samples(3), samples(4, {2: [IGNORE, IGNORE]})])
    assert check == Check(SUPERVISED, "FAIL", "sample 2 has no supervised token")


def test_a_bad_sample_past_the_first_batches_is_named_by_its_place_in_the_whole_dataset():
    check = contract._every_sample_supervised([samples(8200, {8194: [IGNORE, IGNORE]})])  # batches of 4096
    assert check == Check(SUPERVISED, "FAIL", "sample 8194 has no supervised token")


def test_labels_that_differ_from_the_ids_they_supervise_fail():
    check = contract._every_sample_supervised([samples(3, {1: [IGNORE, 8]})])
    assert check == Check(SUPERVISED, "FAIL", "sample 1: labels differ from the input ids they supervise")


# ---------------------------------------------------------------------------------------------- packing


def test_packing_isolation_is_not_judged_with_packing_off():
    check = contract._packing_isolated(None, SimpleNamespace(packing=False), "sdpa")
    assert check == Check("packed samples are isolated", "n/a", "packing is off")


@pytest.mark.parametrize("problem", [None, "position ids do not restart"])
def test_packing_isolation_reports_the_problem_found_in_the_training_data(monkeypatch, problem):
    from peftsft.data import packing

    seen = []
    monkeypatch.setattr(packing, "isolation_problem", lambda *args: seen.append(args) or problem)
    check = contract._packing_isolated("TRAIN", SimpleNamespace(packing=True, max_length=64), "eager")
    assert seen == [("TRAIN", 64, "eager")]
    if problem:
        assert check == Check("packed samples are isolated", "FAIL", problem)
    else:
        assert check == Check("packed samples are isolated", "ok",
                              "position ids restart at every sample; eager attention keeps them apart")


def test_an_unknown_attention_backend_is_not_trusted_to_isolate_packed_samples():
    from peftsft.data.packing import isolation_problem

    assert isolation_problem(None, 8, "paged") == (
        "attention 'paged' is not known to keep packed samples apart; use sdpa or eager")


# ---------------------------------------------------------------------------------------------- end of turn, prompts


def test_unclosed_replies_fail_with_the_first_example_that_says_why():
    checks = {"unclosed": 2, "replies": 5, "closed": 3,
              "examples": ["f:1: supervised text outside any reply", "f:2: reply ends 'x' without a supervised '<E>'"]}
    check = contract.end_of_turn_supervised(stats_of(checks, end_of_turn="<E>"))
    assert check == Check("end-of-turn token is supervised", "FAIL",
                          "2 of 5 replies: f:2: reply ends 'x' without a supervised '<E>'")


@pytest.mark.parametrize("example", ["f:1: a reply has no supervised token at all",
                                     "f:1: the text does not end with a supervised '<E>'"])
def test_every_kind_of_unclosed_example_is_shown(example):
    checks = {"unclosed": 1, "replies": 1, "closed": 0, "examples": ["f:0: other", example]}
    assert contract.end_of_turn_supervised(stats_of(checks, end_of_turn="<E>")).detail == f"1 of 1 replies: {example}"


def test_unclosed_replies_of_a_template_without_an_end_of_turn_say_the_model_would_never_stop():
    checks = {"unclosed": 1, "replies": 1, "closed": 0, "examples": ["f:1: without"]}
    check = contract.end_of_turn_supervised(stats_of(checks, end_of_turn=None))
    assert check.status == "FAIL"
    assert check.detail == ("1 of 1 replies: the template puts nothing after a reply, so the model would never "
                            "learn to stop")


def test_closed_replies_pass_and_say_how_many_were_cut_by_max_length():
    check = contract.end_of_turn_supervised(stats_of({"unclosed": 0, "replies": 5, "closed": 3}, end_of_turn="<E>"))
    assert check == Check("end-of-turn token is supervised", "ok", "'<E>' closes 3 of 5 replies (2 cut by max_length)")
    check = contract.end_of_turn_supervised(stats_of({"unclosed": 0, "replies": 4, "closed": 4}, end_of_turn="<E>"))
    assert check.detail == "'<E>' closes 4 of 4 replies"


def test_prompts_are_not_judged_when_masking_trains_on_everything():
    check = contract.no_prompt_supervised(stats_of({"prompt_runs": 3}), "all")
    assert check == Check("no supervised token in a prompt", "n/a", 'masking = "all" trains on prompts by choice')


@pytest.mark.parametrize("example", ["f:3: supervised text is not the reply: 'x'",
                                     "f:3: supervised text outside any reply: 'x'"])
def test_supervised_prompt_text_fails_with_its_first_example(example):
    checks = {"prompt_runs": 3, "examples": ["f:1: a reply has no supervised token", example]}
    check = contract.no_prompt_supervised(stats_of(checks), "assistant")
    assert check == Check("no supervised token in a prompt", "FAIL", f"3 supervised spans are not reply text: {example}")


def test_no_supervised_prompt_passes_naming_the_masking():
    check = contract.no_prompt_supervised(stats_of({}), "last_turn")
    assert check == Check("no supervised token in a prompt", "ok", "every supervised span is reply text (last_turn masking)")


TOOLS = "tool calls supervised, schemas and results not"


def test_tool_masks_are_not_judged_when_masking_trains_on_everything():
    check = contract._tool_masks(stats_of({"tool_rows": 1}), "all")
    assert check == Check(TOOLS, "n/a", 'masking = "all" trains on schemas and tool results by choice')


@pytest.mark.parametrize(("text", "missed", "example"), [
    (1, 0, "f:1: a tool schema or result is supervised: 'x'"),
    (0, 2, "f:1: the call to 'f' is not supervised"),
])
def test_supervised_tool_text_or_missed_calls_fail(text, missed, example):
    checks = {"tool_text_supervised": text, "calls_missed": missed, "examples": ["f:0: other", example]}
    check = contract._tool_masks(stats_of(checks), "assistant")
    assert check == Check(TOOLS, "FAIL", f"{text} schema/result span(s) supervised, {missed} call(s) not: {example}")


def test_tool_masks_pass_counting_the_calls_and_rows():
    checks = {"tool_text_supervised": 0, "calls_missed": 0, "calls_supervised": 3, "tool_rows": 2}
    check = contract._tool_masks(stats_of(checks), "assistant")
    assert check == Check(TOOLS, "ok", "3 call(s) in 2 row(s) supervised; no schema or tool result is")


# ---------------------------------------------------------------------------------------------- the whole contract


class SavingTokenizer:
    """Saves its template as a file, which the patched AutoTokenizer reads back (as a real one would)."""

    def __init__(self, template: str):
        self.template = template

    def save_pretrained(self, folder):
        (Path(folder) / "template.jinja").write_text(self.template)


def test_the_saved_template_is_the_training_template(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda folder: SimpleNamespace(
        chat_template=(Path(folder) / "template.jinja").read_text()))
    stats = stats_of(name="chatml", sha256=template_sha("{{ messages }}"))
    check = contract.template_saved_identically(SavingTokenizer("{{ messages }}"), stats)
    assert check == Check("saved template = training template", "ok",
                          f"chatml template, sha256 {template_sha('{{ messages }}')[:12]}")
    assert contract.template_saved_identically(SavingTokenizer("{{ other }}"), stats) == Check(
        "saved template = training template", "FAIL",
        "the tokenizer saved with the adapter would carry a different chat template")


def fake_checks(monkeypatch):
    """The contract's checks replaced by ones that record what they were given."""
    seen = {}

    def fake(name):
        def check(*args):
            seen[name] = args
            return Check(name, "ok", "")
        return check

    for name in ("_every_sample_supervised", "end_of_turn_supervised", "no_prompt_supervised", "_packing_isolated",
                 "template_saved_identically", "_tool_masks"):
        monkeypatch.setattr(contract, name, fake(name))
    return seen


def test_the_contract_runs_every_check_on_what_it_needs(monkeypatch, tokenizer):
    seen = fake_checks(monkeypatch)
    stats, data = stats_of({}, end_of_turn="<|im_end|>"), SimpleNamespace(masking="assistant", enforce_contract=True)
    result = contract.check_contract(tokenizer, "TRAIN", "EVAL", stats, data, "sdpa")
    assert [c.name for c in result.checks] == ["_every_sample_supervised", "end_of_turn_supervised",
                                               "no_prompt_supervised", "_packing_isolated",
                                               "template_saved_identically"]
    assert result.enforced is True
    assert seen == {"_every_sample_supervised": (["TRAIN", "EVAL"],), "end_of_turn_supervised": (stats,),
                    "no_prompt_supervised": (stats, "assistant"), "_packing_isolated": ("TRAIN", data, "sdpa"),
                    "template_saved_identically": (tokenizer, stats)}


def test_the_contract_checks_tool_masks_for_data_with_tools_and_skips_a_missing_eval_set(monkeypatch, tokenizer):
    seen = fake_checks(monkeypatch)
    stats = stats_of({"tool_rows": 2}, end_of_turn="<|im_end|>")
    data = SimpleNamespace(masking="last_turn", enforce_contract=False)
    result = contract.check_contract(tokenizer, "TRAIN", None, stats, data, "sdpa")
    assert [c.name for c in result.checks][-1] == "_tool_masks" and len(result.checks) == 6
    assert seen["_tool_masks"] == (stats, "last_turn") and seen["_every_sample_supervised"] == (["TRAIN"],)
    assert result.enforced is False


def test_an_end_of_turn_of_several_tokens_is_a_warning(monkeypatch, tokenizer):
    fake_checks(monkeypatch)
    data = SimpleNamespace(masking="assistant", enforce_contract=True)
    result = contract.check_contract(tokenizer, "T", None, stats_of({}, end_of_turn="END OF TURN"), data, "sdpa")
    n = len(tokenizer("END OF TURN", add_special_tokens=False)["input_ids"])
    assert n > 1
    assert result.checks[-1] == Check("end-of-turn is one token", "warn",
                                      f"'END OF TURN' is {n} tokens in this tokenizer (not a special token)")
    result = contract.check_contract(tokenizer, "T", None, stats_of({}), data, "sdpa")
    assert len(result.checks) == 5


def test_a_contract_passes_without_failures_and_lists_its_checks():
    checks = [Check("a", "ok", "x"), Check("b", "warn", "y")]
    assert Contract(checks, True).failures == []
    assert Contract(checks, True).as_dict() == {
        "passed": True, "enforced": True,
        "checks": [{"name": "a", "status": "ok", "detail": "x"}, {"name": "b", "status": "warn", "detail": "y"}]}
    failed = Contract([*checks, Check("c", "FAIL", "z")], False)
    assert failed.failures == [Check("c", "FAIL", "z")] and failed.as_dict()["passed"] is False


# ---------------------------------------------------------------------------------------------- reporting


def recording_console() -> Console:
    return Console(record=True, width=200, force_terminal=True, color_system="standard")


def test_the_contract_table_shows_each_status_coloured_with_its_check_and_detail():
    console = recording_console()
    checks = [Check("c1", "ok", "[bold]fine[/]"), Check("c2", "FAIL", "bad"), Check("c3", "warn", "hm"),
              Check("c4", "n/a", "off")]
    contract.print_contract(console, Contract(checks, True))
    text = console.export_text()
    assert "pre-flight data contract" in text
    assert [line.split() for line in text.splitlines()[1:]] == [
        ["ok", "c1", "[bold]fine[/]"], ["FAIL", "c2", "bad"], ["warn", "c3", "hm"], ["n/a", "c4", "off"]]
    styled = recording_console()
    contract.print_contract(styled, Contract(checks, True))
    ansi = styled.export_text(styles=True)
    for code, status in (("\x1b[32m", "ok"), ("\x1b[1;31m", "FAIL"), ("\x1b[33m", "warn"), ("\x1b[2m", "n/a")):
        assert f"{code}{status}" in ansi


def test_an_enforced_failed_contract_stops_naming_each_failed_check():
    failed = Contract([Check("a", "ok", "x"), Check("b", "FAIL", "y"), Check("c", "FAIL", "z")], True)
    with pytest.raises(UserError) as caught:
        contract.enforce(failed)
    assert caught.value.message == ("the pre-flight data contract failed (2 check(s)); training would learn the "
                                    "wrong thing")
    assert caught.value.problems == ["b: y", "c: z"]
    assert caught.value.hint == (
        "fix the data, template or masking (see `python -m peftsft data preview RECIPE`), or override knowingly: "
        "run --skip-contract, or [data] enforce_contract = false")
    contract.enforce(Contract(failed.checks, False))
    contract.enforce(Contract(failed.checks[:1], True))


class FakeRunDir:
    def __init__(self):
        self.summaries = []

    def write_summary(self, summary):
        self.summaries.append(summary)


def test_settling_an_enforced_failure_saves_the_summary_then_stops():
    stats, rundir, console = SimpleNamespace(as_dict=lambda: {"rows": 3}), FakeRunDir(), recording_console()
    failed = Contract([Check("b", "FAIL", "y")], True)
    with pytest.raises(UserError):
        contract.settle(console, failed, stats, rundir)
    assert rundir.summaries == [{"stopped": "pre-flight data contract", "data": {"rows": 3},
                                 "contract": failed.as_dict()}]
    assert "FAIL  b  y" in console.export_text()


def test_settling_an_unenforced_failure_warns_and_goes_on():
    stats, rundir, console = SimpleNamespace(as_dict=lambda: {}), FakeRunDir(), recording_console()
    failed = Contract([Check("b", "FAIL", "y")], False)
    assert contract.settle(console, failed, stats, rundir) == failed.as_dict()
    assert rundir.summaries == []
    assert console.export_text().splitlines()[-1] == (
        "warning: the data contract failed; training anyway (enforce_contract = false)")
    console = recording_console()
    assert contract.settle(console, Contract([Check("a", "ok", "x")], True), stats, rundir)["passed"] is True
    assert "warning" not in console.export_text() and rundir.summaries == []


def test_preflight_checks_prints_and_settles(monkeypatch):
    seen = []
    monkeypatch.setattr(contract, "check_contract", lambda *args: seen.append(args) or Contract([], True))
    console = recording_console()
    assert contract.preflight(console, "TOK", "TR", "EV", "ST", "DATA", "sdpa", FakeRunDir()) == {
        "passed": True, "enforced": True, "checks": []}
    assert seen == [("TOK", "TR", "EV", "ST", "DATA", "sdpa")]


# ---------------------------------------------------------------------------------------------- reply checks


def enc(text: str, ends: list[int], labels: list[int], truncated: bool = False) -> Encoded:
    starts = [0, *ends[:-1]]
    return Encoded(input_ids=list(range(len(ends))), labels=labels, truncated=truncated, text=text,
                   offsets=list(zip(starts, ends)))


def test_supervised_runs_are_the_texts_of_consecutive_learned_tokens():
    e = enc("ab<E>cd<E>", [1, 2, 5, 6, 7, 10], [IGNORE, 1, 1, IGNORE, 1, 1])
    assert contract.supervised_runs(e) == [Run("b<E>", False), Run("d<E>", False)]
    e = enc("ab<E>cd", [1, 2, 5, 6, 7], [IGNORE, 1, 1, IGNORE, 1], truncated=True)
    assert contract.supervised_runs(e) == [Run("b<E>", False), Run("d", True)]


def test_merging_reply_checks_adds_every_count_and_keeps_the_first_examples():
    first, later = ReplyChecks(samples=2, replies=3, closed=1, examples=["a", "b", "c"]), ReplyChecks(
        samples=1, replies=1, unclosed=1, tool_calls=2, examples=["d", "e", "f"])
    first.merge(later)
    assert (first.samples, first.replies, first.closed, first.unclosed, first.tool_calls) == (3, 4, 1, 1, 2)
    assert first.examples == ["a", "b", "c", "d", "e"]


def test_a_note_counts_n_and_keeps_at_most_five_examples():
    checks = ReplyChecks()
    for i in range(7):
        checks._note("unclosed", f"e{i}", 2)
    assert checks.unclosed == 14 and checks.examples == ["e0", "e1", "e2", "e3", "e4"]


def test_a_reply_closed_by_its_end_of_turn_is_counted_and_its_body_judged():
    markers = {"eot": "<E>", "header": "<A>"}
    checks = ReplyChecks()
    checks._check_reply({"content": "Hi there"}, Run("Hi there<E>\n", False), markers, "f:1")
    assert (checks.replies, checks.closed, checks.unclosed, checks.prompt_runs) == (1, 1, 0, 0)
    checks._check_reply({"content": "Hi"}, Run("Hi", True), markers, "f:2")  # cut: not closed, not unclosed
    assert (checks.replies, checks.closed, checks.unclosed, checks.examples) == (2, 1, 0, [])
    checks._check_reply({"content": "Hi"}, Run("Hi", False), markers, "f:3")
    assert checks.unclosed == 1 and checks.examples == ["f:3: reply ends 'Hi' without a supervised '<E>'"]
    checks._check_reply({"content": "Hi"}, Run("<U>Q<A>Hi<E>", False), markers, "f:4")
    assert checks.prompt_runs == 1 and checks.examples[-1] == "f:4: supervised text is not the reply: '<U>Q<A>Hi<E>'"


def test_a_reply_with_calls_is_judged_only_for_prompt_scaffolding():
    assert contract._is_reply("<tool_call>{}</tool_call>", {"tool_calls": [{}], "content": ""}, "<A>\n")
    assert not contract._is_reply("x<A>y", {"tool_calls": [{}], "content": ""}, "<A>\n")
    assert contract._is_reply("x<A>y", {"tool_calls": [{}], "content": ""}, "  ")
    assert contract._is_reply("lo", {"content": "Hello"}, "<A>") and not contract._is_reply("Hey", {"content": "Hello"}, "")


def test_tool_texts_are_the_schemas_as_json_and_the_long_tool_results():
    content = [{"role": "system", "content": "s", "tools": None}]
    from peftsft.data.tools import with_tools

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"q": "é"}}}]
    chat = with_tools([{"role": "user", "content": "u"}, {"role": "tool", "content": "  12345678  "},
                       {"role": "tool", "content": "1234567"}], tools)
    assert contract._tool_texts(chat) == ['{"q": "é"}', "12345678"]
    assert contract._tool_texts(content[:0]) == []


def test_tool_calls_must_be_supervised_and_schemas_and_results_not():
    checks = ReplyChecks()
    replies = [{"tool_calls": [{"function": {"name": "lookup"}}, {"function": {"name": "fetch"}}]}]
    content = [{"role": "tool", "content": "the result text"}]
    checks._observe_tools(content, replies, [Run("lookup(", False), Run("the result text", False)], False, "f:1")
    assert (checks.tool_rows, checks.tool_calls, checks.calls_supervised, checks.calls_missed) == (1, 2, 1, 1)
    assert checks.tool_text_supervised == 1
    assert checks.examples == ["f:1: the call to 'fetch' is not supervised",
                               "f:1: a tool schema or result is supervised: 'the result text'"]
    checks._observe_tools(content, replies, [], True, "f:2")  # truncated: missed calls are excused
    assert (checks.tool_rows, checks.tool_calls, checks.calls_missed) == (2, 4, 1)
    checks._observe_tools([], [{"content": "x"}], [], False, "f:3")  # no tools at all: not a tool row
    assert checks.tool_rows == 2


def test_plain_text_is_closed_by_the_eos_of_its_last_run():
    checks = ReplyChecks()
    checks._close([Run("a", False), Run("b</s>", False)], "</s>", "f:1")
    checks._close([], "</s>", "f:2")
    checks._close([Run("b</s>", False)], None, "f:3")
    assert (checks.replies, checks.closed, checks.unclosed) == (3, 1, 2)
    assert checks.examples == ["f:2: the text does not end with a supervised '</s>'",
                               "f:3: the text does not end with a supervised None"]


def test_rows_whose_labels_and_ids_differ_in_length_are_compared_over_the_shorter():
    data = Dataset.from_dict({"input_ids": [[5, 7], [5, 7, 9], [5, 7]], "labels": [[IGNORE, 7], [IGNORE, 7], [IGNORE]]})
    check = contract._every_sample_supervised([data])
    assert check == Check(SUPERVISED, "FAIL", "sample 2 has no supervised token")
    data = Dataset.from_dict({"input_ids": [[5, 7], [5, 7, 9], [4, 7]], "labels": [[IGNORE, 7], [IGNORE, 7], [IGNORE, 8]]})
    assert contract._every_sample_supervised([data]).detail == "sample 2: labels differ from the input ids they supervise"
    data = Dataset.from_dict({"input_ids": [[5, 7], [5, 7, 9]], "labels": [[IGNORE, 7], [IGNORE, 7]]})
    assert contract._every_sample_supervised([data]).status == "ok"


# ---------------------------------------------------------------------------------------------- observing samples

PIECES = ["<U>Q1<E>", "<A>", "A1", "<E>", "<U>Q2<E>", "<A>", "A2", "<E>"]
MARKERS = {"eot": "<E>", "eos": "</s>", "header": "<A>"}
CHAT = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
NO_TOOLS = SimpleNamespace(chat_template="")  # fit_messages keeps plain messages as they are


def sample(learned: set[int], pieces=PIECES, truncated=False) -> Encoded:
    ends, at = [], 0
    for piece in pieces:
        at += len(piece)
        ends.append(at)
    return enc("".join(pieces), ends, [i if i in learned else IGNORE for i in range(len(pieces))], truncated)


def counts(checks: ReplyChecks) -> tuple:
    return checks.samples, checks.replies, checks.closed, checks.unclosed, checks.prompt_runs


def test_every_reply_supervised_through_its_end_of_turn_passes():
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, sample({2, 3, 6, 7}), "assistant", MARKERS, "f:1")
    checks.observe(NO_TOOLS, CHAT, sample({6, 7}), "last_turn", MARKERS, "f:2")
    assert counts(checks) == (2, 3, 3, 0, 0) and checks.examples == [] and checks.tool_rows == 0


def test_supervised_prompt_text_beyond_the_replies_is_noted():
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, sample({2, 3, 4, 6, 7}), "assistant", MARKERS, "f:1")
    assert counts(checks) == (1, 2, 2, 0, 1)
    assert checks.examples == ["f:1: supervised text is not the reply: 'A1<E><U>Q2<E>'"]
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, sample({2, 3, 6, 7}), "last_turn", MARKERS, "f:2")
    assert checks.prompt_runs == 2 and checks.examples[-1] == "f:2: supervised text outside any reply: 'A2<E>'"


def test_a_reply_without_any_supervised_token_is_unclosed_unless_the_sample_was_cut():
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, sample({2, 3}), "assistant", MARKERS, "f:1")
    assert counts(checks) == (1, 2, 1, 1, 0) and checks.examples == ["f:1: a reply has no supervised token at all"]
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, sample({2, 3}, truncated=True), "assistant", MARKERS, "f:2")
    assert counts(checks) == (1, 2, 1, 0, 0) and checks.examples == []


def test_masking_all_closes_replies_by_the_end_of_turns_in_the_text_and_counts_tool_rows():
    tool_chat = [*CHAT[:2], {"role": "tool", "content": "a long tool result"}, *CHAT[2:]]
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, tool_chat, sample(set(range(8))), "all", MARKERS, "f:1")
    checks.observe(NO_TOOLS, CHAT, sample(set(range(8))), "all", MARKERS, "f:2")
    assert counts(checks) == (2, 4, 4, 0, 0) and checks.tool_rows == 1


def test_a_tool_result_in_a_row_is_checked_against_the_supervised_runs():
    tool_chat = [*CHAT[:2], {"role": "tool", "content": "a long tool result"}, *CHAT[2:]]
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, tool_chat, sample({2, 3, 6, 7}), "assistant", MARKERS, "f:1")
    assert checks.tool_rows == 1 and checks.tool_text_supervised == 0 and counts(checks) == (1, 2, 2, 0, 0)


def test_plain_text_is_closed_by_its_supervised_eos():
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, "some text</s>", sample({0, 1}, ["some text", "</s>"]), "assistant", MARKERS, "f:1")
    checks.observe(NO_TOOLS, "some text", sample({0}, ["some text", "</s>"]), "assistant", MARKERS, "f:2")
    assert counts(checks) == (2, 2, 1, 1, 0)
    assert checks.examples == ["f:2: the text does not end with a supervised '</s>'"]
