"""Loss masks: exactly the assistant tokens (with their end-of-turn token) are supervised."""

import json

import pytest

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.data.build import build_datasets
from peftsft.data.masking import IGNORE, encode
from peftsft.core.errors import UserError

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]


def supervised_runs(sample):
    """Decoded runs of consecutive supervised tokens."""
    runs, current = [], []
    for tok, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE:
            assert label == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_assistant_masking_supervises_every_reply_and_its_end_of_turn(tokenizer):
    sample = encode(tokenizer, CONVERSATION, "assistant", max_length=512)
    runs = [tokenizer.decode(run) for run in supervised_runs(sample)]
    assert runs == ["Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"]
    assert not sample.truncated


def test_last_turn_and_all_masking(tokenizer):
    last = encode(tokenizer, CONVERSATION, "last_turn", max_length=512)
    assert [tokenizer.decode(r) for r in supervised_runs(last)] == ["It is 4.<|im_end|>"]
    everything = encode(tokenizer, CONVERSATION, "all", max_length=512)
    assert everything.labels == everything.input_ids


def test_default_system_prompt_of_the_template_stays_unsupervised(tokenizer):
    sample = encode(tokenizer, CONVERSATION[1:3], "assistant", max_length=512)
    text = tokenizer.decode(sample.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text  # SmolLM2's template adds it
    assert [tokenizer.decode(r) for r in supervised_runs(sample)] == ["Hello! How can I help?<|im_end|>"]


def test_masking_with_a_template_that_has_no_eos_per_turn(tokenizer):
    """A Llama-2-style template: the span still covers exactly the reply."""
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    tokenizer.eos_token = "<|endoftext|>"
    sample = encode(tokenizer, [CONVERSATION[1], CONVERSATION[2]], "assistant", max_length=512)
    assert [tokenizer.decode(r) for r in supervised_runs(sample)] == [" Hello! How can I help?<|endoftext|>"]


def test_truncation_is_counted_and_fully_masked_samples_dropped(tmp_path, tokenizer):
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    fine = {"messages": CONVERSATION}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(long_prompt) + "\n" + json.dumps(fine) + "\n")
    data = DataSection(datasets=[DatasetSpec(path=str(path))], max_length=64)
    train, _, stats = build_datasets(tokenizer, data, seed=0)
    assert stats.truncated == 1 and stats.dropped_unsupervised == 1 and len(train) == 1
    assert all(len(ids) <= 64 for ids in train["input_ids"])


def test_bad_rows_fail_with_file_and_line_or_are_skipped(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    data = DataSection(datasets=[DatasetSpec(path=str(path))])
    with pytest.raises(UserError) as info:
        build_datasets(tokenizer, data, seed=0)
    assert f"{path}:2: malformed JSON" in str(info.value)
    data = DataSection(datasets=[DatasetSpec(path=str(path))], on_bad_row="skip")
    train, _, stats = build_datasets(tokenizer, data, seed=0)
    assert len(train) == 1 and len(stats.bad_rows) == 2
    assert f"{path}:3: 'messages' must be a non-empty list" in stats.bad_rows[1]


def test_eval_split_by_fraction(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(10)))
    data = DataSection(datasets=[DatasetSpec(path=str(path))], eval_fraction=0.2)
    train, evals, stats = build_datasets(tokenizer, data, seed=0)
    assert (len(train), len(evals)) == (8, 2) and (stats.train_rows, stats.eval_rows) == (8, 2)


def test_empty_dataset_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("\n")
    with pytest.raises(UserError, match="empty after filtering"):
        build_datasets(tokenizer, DataSection(datasets=[DatasetSpec(path=str(path))]), seed=0)
