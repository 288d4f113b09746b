"""Small pieces of the data pipeline checked on their own: a worker shard run in-process, Hub loading and its
errors, the messages that name a bad preference row, plain-text EOS handling, the tools probe of `validate`, and
the cache's liveness test for abandoned builds."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys

import pytest

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data import cache, parallel, sources
from peftsft.data.contract import ReplyChecks, Run
from peftsft.data.formats import Mapping, RowError, to_messages
from peftsft.data.masking import IGNORE, encode
from peftsft.data.preference import to_preference
from peftsft.data.rows import BadRows
from peftsft.data.templates import BUILTINS, first_row_with_tools, fit_messages
from peftsft.data.tools import call_text
from tests.conftest import write_jsonl
from tests.unit.test_data import tok  # noqa: F401 - fixture: the template put back

# ---------------------------------------------------------------------------------------------- a worker's shard


def run_shard(work, start: int, end: int, index: int = 1, processes: int = 3):
    """`parallel._shard` in this process: (what it sent back, the progress slots, whether it closed its pipe)."""
    receive, send = multiprocessing.Pipe(duplex=False)
    done = [0] * processes
    parallel._shard(work, start, end, done, index, send)
    result = receive.recv()
    with pytest.raises(EOFError):  # the shard closed its end: nothing more comes
        receive.recv()
    return result, done


def test_a_shard_sends_its_result_and_adds_up_its_progress():
    def work(shard, start, end, advance):
        for _ in range(start, end, 5):
            advance(5)
        return shard, start, end

    result, done = run_shard(work, 10, 25)
    assert result == (1, 10, 25)
    assert done == [0, 15, 0]  # three advances of 5, in this shard's slot only


def test_a_failing_shard_sends_back_its_error_with_the_traceback():
    def work(shard, start, end, advance):
        raise ValueError(f"bad row {start + 2}")

    result, _ = run_shard(work, 10, 25)
    assert isinstance(result, parallel._Failed)
    assert isinstance(result.error, ValueError) and str(result.error) == "bad row 12"
    assert result.text.startswith("Traceback") and "ValueError: bad row 12" in result.text
    with pytest.raises(ValueError, match="bad row 12"):
        result.raise_()


def test_an_error_that_does_not_pickle_comes_back_as_its_own_traceback():
    class Local(Exception):  # a class local to a function cannot be pickled
        pass

    def work(shard, start, end, advance):
        raise Local("bad row 12")

    result, _ = run_shard(work, 10, 25)
    assert isinstance(result, parallel._Failed) and result.error is None
    assert "Local: bad row 12" in result.text and "in work" in result.text
    with pytest.raises(RuntimeError, match="(?s)a data worker process failed:\nTraceback.*Local: bad row 12"):
        result.raise_()


def test_a_result_that_does_not_pickle_is_reported_as_a_failure():
    result, _ = run_shard(lambda shard, start, end, advance: (lambda: None), 0, 4)
    assert isinstance(result, parallel._Failed) and result.error is None
    assert "pickle" in result.text


# ---------------------------------------------------------------------------------------------- Hub datasets


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` replaced: records its calls, raises `hub.error` when set."""
    import datasets

    class Hub:
        def __init__(self):
            self.calls: list = []
            self.error: BaseException | None = None

        def set_offline(self, env: str | None, config: bool):
            if env is None:
                monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            else:
                monkeypatch.setenv("HF_HUB_OFFLINE", env)
            monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", config)

    state = Hub()

    def load_dataset(*args, **kwargs):
        state.calls.append((args, kwargs))
        if state.error is not None:
            raise state.error
        return "the dataset"

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return state


def test_a_hub_dataset_is_loaded_by_its_id_subset_and_split(hub):
    spec = DatasetSpec(path="owner/name", subset="cfg", split="test")
    assert sources.load_hub_dataset(spec) == "the dataset"
    assert hub.calls == [(("owner/name", "cfg"), {"split": "test"})]


OFFLINE_HINT = (
    "offline (HF_HUB_OFFLINE=1) only datasets already in the local Hugging Face cache load: download it while "
    "online, or point path at a local .jsonl/.json/.parquet/.csv file or directory"
)
ONLINE_HINT = "check the dataset id, subset and split, and your network"


@pytest.mark.parametrize("env, config, hint", [
    ("1", False, OFFLINE_HINT),  # the environment says offline
    (None, True, OFFLINE_HINT),  # datasets' own setting says offline
    ("0", False, ONLINE_HINT),
    (None, False, ONLINE_HINT),
])
def test_a_hub_dataset_that_fails_to_load_names_it_its_split_and_the_first_line_of_the_error(hub, env, config, hint):
    hub.set_offline(env, config)
    hub.error = ConnectionError("cannot reach the Hub\nretry 1 of 5")
    with pytest.raises(UserError) as info:
        sources.load_hub_dataset(DatasetSpec(path="owner/name", split="validation"))
    assert info.value.message == (
        "[data] datasets.path: cannot load Hub dataset 'owner/name' (split 'validation'): cannot reach the Hub"
    )
    assert info.value.hint == hint
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_hub_error_without_a_message_is_named_by_its_type(hub):
    hub.error = TimeoutError()
    with pytest.raises(UserError) as info:
        sources.load_hub_dataset(DatasetSpec(path="owner/name"))
    assert info.value.message.endswith("(split 'train'): TimeoutError")


# ---------------------------------------------------------------------------------------------- preference rows


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def test_whole_conversations_share_every_turn_before_their_replies_as_the_prompt():
    before = turns(("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    row = {"chosen": before + turns(("assistant", "good")), "rejected": before + turns(("assistant", "bad")),
           "prompt": before}
    pair = to_preference(row, "preference")
    assert pair.prompt == before
    assert pair.chosen == {"role": "assistant", "content": "good"}
    assert pair.rejected == {"role": "assistant", "content": "bad"}


def test_conversations_that_differ_before_their_replies_name_the_turn_and_the_mapped_columns():
    chosen = turns(("user", "q1"), ("assistant", "x" * 40), ("user", "q2"), ("assistant", "good"))
    rejected = turns(("user", "q1"), ("assistant", "y" * 41), ("user", "q2"), ("assistant", "bad"))
    mapping = Mapping(fields={"chosen": "better", "rejected": "worse"})
    with pytest.raises(RowError) as info:
        to_preference({"better": chosen, "worse": rejected}, "preference", mapping)
    # 40 characters are shown whole; a longer text is cut at 40 and marked
    assert str(info.value) == (
        f"'better' and 'worse' answer different prompts: turn 1 differs "
        f"(assistant: {'x' * 40!r} vs assistant: {'y' * 40!r}…)"
    )


def test_conversations_of_different_lengths_say_how_many_turns_each_has():
    chosen = turns(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "good"))
    with pytest.raises(RowError) as info:
        to_preference({"chosen": chosen, "rejected": turns(("user", "q1"), ("assistant", "bad"))}, "preference")
    assert str(info.value) == "'chosen' and 'rejected' answer different prompts: 4 vs 2 turns"


def test_a_prompt_column_of_other_turns_than_the_conversations_is_refused_showing_their_question():
    before = turns(("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    row = {"chosen": before + turns(("assistant", "good")), "rejected": before + turns(("assistant", "bad")),
           "question": turns(("user", "q2"))}
    with pytest.raises(RowError) as info:
        to_preference(row, "preference", Mapping(fields={"prompt": "question"}))
    assert str(info.value) == (
        "'question' is not the prompt the chosen and rejected conversations answer (user: 'q2')"
    )


def test_a_prompt_column_beside_conversations_without_a_user_turn_is_refused():
    before = turns(("system", "be brief"))
    row = {"chosen": before + turns(("assistant", "good")), "rejected": before + turns(("assistant", "bad")),
           "prompt": "q"}
    with pytest.raises(RowError) as info:
        to_preference(row, "preference")
    assert str(info.value) == "'prompt' is not the prompt the chosen and rejected conversations answer (user: '')"


def test_a_malformed_prompt_column_beside_conversations_names_its_column():
    before = turns(("user", "q1"))
    row = {"chosen": before + turns(("assistant", "good")), "rejected": before + turns(("assistant", "bad")),
           "question": [{"role": "robot", "content": "q1"}]}
    with pytest.raises(RowError, match=r"^question\[0\]\.role: unknown role 'robot'"):
        to_preference(row, "preference", Mapping(fields={"prompt": "question"}))


# ---------------------------------------------------------------------------------------------- plain text


@pytest.mark.parametrize("row, message", [
    ({"body": 5}, "body must be a string (got int)"),
    ({"body": " \n"}, "'body' is empty"),
])
def test_a_bad_text_row_names_its_mapped_column(row, message):
    with pytest.raises(RowError) as info:
        to_messages(row, "text", Mapping(fields={"text": "body"}))
    assert str(info.value) == message


def test_plain_text_gets_one_closing_eos_spanning_the_eos_text(tok):
    sample = encode(tok, "hello world", "all", max_length=64)
    assert sample.text == "hello world" + tok.eos_token
    assert sample.input_ids[-1] == tok.eos_token_id and sample.input_ids.count(tok.eos_token_id) == 1
    assert sample.offsets[-1] == (len("hello world"), len("hello world") + len(tok.eos_token))
    assert sample.labels == sample.input_ids


def test_plain_text_already_ending_in_the_eos_gets_no_second_one(tok):
    text = "hello there, world" + tok.eos_token
    sample = encode(tok, text, "all", max_length=64)
    assert sample.text == text
    assert sample.input_ids == tok(text)["input_ids"] and sample.input_ids.count(tok.eos_token_id) == 1


def test_plain_text_exactly_max_length_long_is_not_truncated(tok):
    length = len(encode(tok, "hello there, world", "all", max_length=64).input_ids)
    assert not encode(tok, "hello there, world", "all", max_length=length).truncated
    cut = encode(tok, "hello there, world", "all", max_length=length - 1)
    assert cut.truncated and len(cut.input_ids) == length - 1 and IGNORE not in cut.labels


# ---------------------------------------------------------------------------------------------- plain text's check


def test_plain_text_closed_by_its_supervised_eos_counts_as_closed(tok):
    checks = ReplyChecks()
    for text in ("first text", "second text"):
        checks.observe(tok, text, encode(tok, text, "all", 64), "all", {"eos": tok.eos_token}, "d.jsonl:1")
    assert (checks.replies, checks.closed, checks.unclosed, checks.examples) == (2, 2, 0, [])


def test_plain_text_cut_by_max_length_is_neither_closed_nor_unclosed(tok):
    checks = ReplyChecks()
    text = "a text longer than eight tokens, cut before its end " * 2
    checks.observe(tok, text, encode(tok, text, "all", 8), "all", {"eos": tok.eos_token}, "d.jsonl:1")
    assert (checks.replies, checks.closed, checks.unclosed, checks.examples) == (1, 0, 0, [])


@pytest.mark.parametrize("runs", [[Run("some text", False)], []])
def test_plain_text_without_its_closing_text_supervised_is_unclosed_and_shown(runs):
    checks = ReplyChecks()
    checks._close(runs, "</s>", "d.jsonl:3")
    assert (checks.replies, checks.closed, checks.unclosed) == (1, 0, 1)
    assert checks.examples == ["d.jsonl:3: the text does not end with a supervised '</s>'"]


# ---------------------------------------------------------------------------------------------- templates


def test_calls_become_hermes_blocks_after_the_text_for_a_template_without_tools(tok):
    tok.chat_template = BUILTINS["chatml"].read_text()
    calls = [{"type": "function", "function": {"name": name, "arguments": {"city": "Oslo"}}}
             for name in ("weather", "time")]
    messages = [{"role": "user", "content": "Oslo?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": calls}]
    fitted = fit_messages(tok, messages)
    assert fitted[1] == {
        "role": "assistant",
        "content": "Let me check.\n" + call_text(calls[0]["function"]) + "\n" + call_text(calls[1]["function"]),
    }


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def test_the_first_row_with_tools_is_found_past_unreadable_sources(tmp_path):
    plain = {"text": "x"}
    found = write_jsonl(tmp_path / "b.jsonl", ["{bad json", plain, {"text": "y", "tools": TOOLS}])
    specs = [DatasetSpec(path="owner/hub-dataset"), DatasetSpec(path=str(tmp_path / "missing.jsonl")),
             DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", [plain]))), DatasetSpec(path=str(found))]
    assert first_row_with_tools(DataSection(datasets=specs)) == f"{found}:3"


def test_the_eval_file_is_searched_for_tools_with_the_first_datasets_columns(tmp_path):
    train = DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])), fields={"tools": "functions"})
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"text": "y", "tools": TOOLS}, {"text": "z", "functions": TOOLS}])
    assert first_row_with_tools(DataSection(datasets=[train], eval_path=str(evals))) == f"{evals}:2"
    assert first_row_with_tools(DataSection(datasets=[], eval_path=str(evals))) == f"{evals}:1"


def test_only_the_first_rows_of_a_file_are_searched_for_tools(tmp_path):
    rows = [{"text": "x"}] * 1001 + [{"text": "y", "tools": TOOLS}]  # the tools on row 1002
    data = DataSection(datasets=[DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", rows)))])
    assert first_row_with_tools(data) is None
    assert first_row_with_tools(data, limit=1001) == f"{tmp_path / 'a.jsonl'}:1002"


# ---------------------------------------------------------------------------------------------- cache, bad rows


def test_a_running_process_is_alive_and_is_not_signalled():
    received = []
    previous = signal.signal(signal.SIGHUP, lambda *_: received.append(True))
    try:
        assert cache._alive(os.getpid())
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert not received


def test_a_finished_process_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # reaped: its pid names no process
    assert not cache._alive(child.pid)


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert cache._alive(12345)


def test_bad_rows_pickle_whole_with_their_total():
    bad = BadRows(["a.jsonl:1: malformed JSON"], total=7)
    back = pickle.loads(pickle.dumps(bad))
    assert isinstance(back, BadRows) and list(back) == ["a.jsonl:1: malformed JSON"] and back.total == 7
