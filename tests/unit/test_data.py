"""The data pipeline: formats and mappings, sources, templates, exact masks, packing isolation, bad rows,
the tokenized-dataset cache, `data preview`, and the pre-flight contract (alone and inside `run`)."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest
import torch
from rich.console import Console

from peftsft.commands.cli import main
from peftsft.core.config import DataSection, DatasetSpec, Recipe, TrainingSection
from peftsft.training.recipe import load_recipe
from peftsft.data import build as build_module
from peftsft.data.build import build_datasets
from peftsft.data.contract import check_contract, enforce
from peftsft.data.masking import IGNORE
from peftsft.data.preview import print_sample
from peftsft.data.templates import BUILTINS
from peftsft.core.errors import UserError
from tests.conftest import write_jsonl

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]
LLAMA3_MARKERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Tokenized-dataset cache entries of these tests go to a temp dir."""
    monkeypatch.setenv("PEFTSFT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tok(tokenizer):
    """SmolLM2's tokenizer; builds set templates on it, so its own is put back after each test."""
    own = tokenizer.chat_template
    yield tokenizer
    tokenizer.chat_template = own


def build(tokenizer, specs: list[DatasetSpec], **settings):
    settings.setdefault("cache", False)
    return build_datasets(tokenizer, DataSection(datasets=specs, **settings), seed=0)


def one_file(tmp_path, rows, name="d.jsonl", **spec):
    return DatasetSpec(path=str(write_jsonl(tmp_path / name, rows)), **spec)


def runs(tokenizer, sample) -> list[str]:
    """Decoded runs of consecutive supervised tokens; supervised labels must equal their input ids."""
    out, current = [], []
    for tok, label in zip([*sample["input_ids"], None], [*sample["labels"], IGNORE]):
        if label != IGNORE:
            assert label == tok
            current.append(tok)
        elif current:
            out.append(tokenizer.decode(current))
            current = []
    return out


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def text_of(tokenizer, sample) -> str:
    return tokenizer.decode(sample["input_ids"])


# ---------------------------------------------------------------------------------------------- formats


def test_messages_with_system_multi_turn_and_tool_calls_kept_as_text(tmp_path, tok):
    tool_turns = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "name": "weather", "content": "18C, sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."},
    ]
    train, _, stats = build(tok, [one_file(tmp_path, [{"messages": CONVERSATION}, {"messages": tool_turns}])])
    assert stats.sources[0]["format"] == "messages (detected)"
    assert runs(tok, train[0]) == ["Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"]
    assert "<|im_start|>system\nYou are terse.<|im_end|>" in text_of(tok, train[0])
    call = '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert runs(tok, train[1]) == [call, "It is 18C and sunny.<|im_end|>"]  # SmolLM2's template has no tools
    assert "<|im_start|>tool\n18C, sunny<|im_end|>" in text_of(tok, train[1])


def test_tool_calls_stay_structured_when_the_template_renders_them(tmp_path, tok):
    (tmp_path / "tools.jinja").write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% for c in m.get('tool_calls') or [] %}"
        "<call>{{ c['function']['name'] }}{{ c['function']['arguments'] | tojson }}</call>{% endfor %}"
        "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    row = {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "18C."}]}
    data = DataSection(datasets=[one_file(tmp_path, [row])], template=str(tmp_path / "tools.jinja"), cache=False)
    train, evals, stats = build_datasets(tok, data, seed=0)
    assert runs(tok, train[0]) == ['<call>weather{"city": "Paris"}</call><|im_end|>', "18C.<|im_end|>"]
    assert not check_contract(tok, train, evals, stats, data, "sdpa").failures


def test_sharegpt_with_field_and_role_mapping_and_default_roles(tmp_path, tok):
    mapped = DatasetSpec(
        path=str(write_jsonl(tmp_path / "m.jsonl", [{"dialog": [
            {"speaker": "human", "said": "Hi"}, {"speaker": "ai", "said": "Hello"}], "persona": "Be nice."}])),
        format="sharegpt",
        fields={"conversations": "dialog", "from": "speaker", "value": "said", "system": "persona"},
        roles={"ai": "assistant"},
    )
    plain = one_file(tmp_path, [{"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hey"}]}])
    train, _, stats = build(tok, [mapped, plain])
    assert [s["format"] for s in stats.sources] == ["sharegpt", "sharegpt (detected)"]
    assert runs(tok, train[0]) == ["Hello<|im_end|>"]
    assert text_of(tok, train[0]).startswith("<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert runs(tok, train[1]) == ["Hey<|im_end|>"]
    turns = [{"from": "human", "value": "a"}, {"from": "ai", "value": "b"}]
    unmapped = one_file(tmp_path, [{"conversations": turns}], "u.jsonl")
    with pytest.raises(UserError, match=r"u\.jsonl:1: conversations\[1\]\.from: unknown role 'ai'.*roles"):
        build(tok, [unmapped])


def test_alpaca_with_input_system_history_and_mapped_columns(tmp_path, tok):
    row = {"instruction": "Translate", "input": "cat", "output": "chat", "system": "You translate.", "history": [["Say hi", "hi"]]}
    renamed = {"question": "Capital of France?", "answer": "Paris"}
    spec = one_file(tmp_path, [renamed], "r.jsonl", fields={"instruction": "question", "output": "answer"})
    train, _, stats = build(tok, [one_file(tmp_path, [row]), spec])
    assert [s["format"] for s in stats.sources] == ["alpaca (detected)", "alpaca (detected)"]
    assert runs(tok, train[0]) == ["hi<|im_end|>", "chat<|im_end|>"]
    text = text_of(tok, train[0])
    assert text.startswith("<|im_start|>system\nYou translate.<|im_end|>\n<|im_start|>user\nSay hi<|im_end|>")
    assert "<|im_start|>user\nTranslate\n\ncat<|im_end|>" in text
    assert runs(tok, train[1]) == ["Paris<|im_end|>"]


def test_prompt_completion_plain_and_conversational(tmp_path, tok):
    rows = [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [{"role": "user", "content": "Name?"}], "completion": [{"role": "assistant", "content": "Bob"}]},
    ]
    train, _, stats = build(tok, [one_file(tmp_path, rows, format="prompt-completion")])
    assert stats.sources[0]["format"] == "prompt_completion"
    assert [runs(tok, s) for s in train] == [["4<|im_end|>"], ["Bob<|im_end|>"]]
    assert "<|im_start|>user\n2+2?<|im_end|>" in text_of(tok, train[0])


def test_plain_text_supervises_everything_and_the_eos(tmp_path, tok):
    spec = one_file(tmp_path, [{"body": "Once upon a time there was a fox."}], fields={"text": "body"})
    train, _, stats = build(tok, [spec])
    assert stats.sources[0]["format"] == "text (detected)"
    sample = train[0]
    assert sample["labels"] == sample["input_ids"]
    assert text_of(tok, sample) == "Once upon a time there was a fox." + tok.eos_token


def test_undetectable_rows_name_the_expected_formats(tmp_path, tok):
    with pytest.raises(UserError, match=r"d\.jsonl:1: cannot tell the format.*'conversations' \(ShareGPT\)"):
        build(tok, [one_file(tmp_path, [{"question": "x"}])])


def test_recipe_mapping_is_validated():
    with pytest.raises(ValueError, match="not fields of format 'sharegpt'"):
        DatasetSpec(path="x.jsonl", format="sharegpt", fields={"messages": "m"})
    with pytest.raises(ValueError, match="samples or weight"):
        DatasetSpec(path="x.jsonl", samples=3, weight=2.0)
    with pytest.raises(ValueError, match="must map to one of"):
        DatasetSpec(path="x.jsonl", roles={"gpt": "bot"})


# ---------------------------------------------------------------------------------------------- sources


def test_json_parquet_csv_and_directory_sources(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION[1:]}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    with (tmp_path / "c.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["messages"], *([json.dumps(r["messages"])] for r in rows)])
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "one.jsonl", rows)
    (folder / "two.json").write_text(json.dumps(rows))
    specs = [DatasetSpec(path=str(tmp_path / n)) for n in ("a.json", "b.parquet", "c.csv", "dir")]
    train, _, stats = build(tok, specs)
    assert [s["rows"] for s in stats.sources] == [2, 2, 2, 4] and len(train) == 10
    assert {tuple(runs(tok, s)) for s in train} == {
        ("Hello! How can I help?<|im_end|>",),
        ("Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"),
    }


def test_hub_dataset_offline_fails_clearly(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        build(tok, [DatasetSpec(path="peftsft-tests/no-such-dataset")])
    assert "cannot load Hub dataset 'peftsft-tests/no-such-dataset'" in str(info.value)
    assert "HF_HUB_OFFLINE=1" in str(info.value)


def test_mixing_by_samples_and_weight_and_a_separate_eval_file(tmp_path, tok):
    a = one_file(tmp_path, [{"messages": CONVERSATION[1:3]}] * 4, "a.jsonl", samples=6)
    b = one_file(tmp_path, [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)], "b.jsonl", weight=0.5)
    held_out = write_jsonl(tmp_path / "e.jsonl", [{"messages": CONVERSATION}] * 3)
    train, evals, stats = build(tok, [a, b], eval_path=str(held_out))
    assert [s["train"] for s in stats.sources] == [6, 2]
    assert (len(train), len(evals), stats.train_rows, stats.eval_rows) == (8, 3, 8, 3)


def test_weights_and_eval_fractions_that_do_not_divide_the_rows_round_to_the_nearest_row(tmp_path, tok):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    _, _, stats = build(tok, [one_file(tmp_path, rows, weight=0.65)])  # 2.6 rows: flooring would give 2
    assert stats.sources[0]["train"] == 3
    rows = [{"messages": chat(f"q{i}", f"a{i}")} for i in range(10)]
    train, evals, _ = build(tok, [one_file(tmp_path, rows)], eval_fraction=0.28)  # 2.8 rows
    assert (len(train), len(evals)) == (7, 3)
    train, evals, _ = build(tok, [one_file(tmp_path, rows)], eval_fraction=0.01)  # 0.1 rows: at least one
    assert (len(train), len(evals)) == (9, 1)


def test_eval_split_by_fraction_takes_no_training_row(tmp_path, tok):
    rows = [{"messages": chat(f"q{i}", f"a{i}")} for i in range(10)]
    train, evals, _ = build(tok, [one_file(tmp_path, rows)], eval_fraction=0.3)
    assert (len(train), len(evals)) == (7, 3)
    assert not {text_of(tok, s) for s in train} & {text_of(tok, s) for s in evals}


def test_recipe_accepts_hub_ids_and_builtin_templates(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[data.datasets]]\npath = "someone/some-dataset"\n[data]\ntemplate = "llama3"\n')
    assert load_recipe(recipe).data.template == "llama3"
    recipe.write_text('[[data.datasets]]\npath = "missing.jsonl"\n[data]\ntemplate = "nope"\n')
    with pytest.raises(UserError) as info:
        load_recipe(recipe)
    assert "file not found: missing.jsonl" in str(info.value) and "neither auto, a built-in" in str(info.value)


# ---------------------------------------------------------------------------------------------- exact masks


def expected(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids of the whole text, labelled segment by segment: (text, supervised). Segment ends must be token ends."""
    ids = tokenizer("".join(text for text, _ in segments), add_special_tokens=False)["input_ids"]
    labels, end, done = [], 0, ""
    for text, supervised in segments:
        start, done = end, done + text
        while tokenizer.decode(ids[:end]) != done:
            end += 1
            assert end <= len(ids), f"no token boundary after {text!r}"
        labels += ids[start:end] if supervised else [IGNORE] * (end - start)
    return ids, labels


def test_exact_masks_multi_turn_smollm2(tmp_path, tok):
    prompt1 = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    prompt2 = "\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    reply1, reply2 = "Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"
    spec = one_file(tmp_path, [{"messages": CONVERSATION}])
    for masking, supervised in [("assistant", (True, True)), ("last_turn", (False, True))]:
        train, _, stats = build(tok, [spec], template="smollm2", masking=masking)
        segments = [(prompt1, False), (reply1, supervised[0]), (prompt2, False), (reply2, supervised[1]), ("\n", False)]
        ids, labels = expected(tok, segments)
        assert (train[0]["input_ids"], train[0]["labels"]) == (ids, labels)
        assert stats.template["end_of_turn"] == "<|im_end|>"
    train, _, _ = build(tok, [spec], template="smollm2", masking="all")
    assert train[0]["labels"] == train[0]["input_ids"] == ids


def test_exact_masks_multi_turn_llama3(tmp_path, tok):
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_MARKERS})  # as Llama 3's own tokenizer has them
    train, evals, stats = build(tok, [one_file(tmp_path, [{"messages": CONVERSATION}])], template="llama3")
    head = "<|start_header_id|>{}<|end_header_id|>\n\n"
    ids, labels = expected(tok, [
        (tok.bos_token + head.format("system") + "You are terse.<|eot_id|>" + head.format("user") + "Hi there<|eot_id|>"
         + head.format("assistant"), False),
        ("Hello! How can I help?<|eot_id|>", True),
        (head.format("user") + "What is 2+2?<|eot_id|>" + head.format("assistant"), False),
        ("It is 4.<|eot_id|>", True),
    ])
    assert (train[0]["input_ids"], train[0]["labels"]) == (ids, labels)
    contract = check_contract(tok, train, evals, stats, DataSection(datasets=[]), "sdpa")
    assert [c.status for c in contract.checks] == ["ok", "ok", "ok", "n/a", "ok"]


def test_template_markers_missing_from_the_vocabulary_break_the_contract(tmp_path, tok):
    """Llama 3's markers on a tokenizer without them: "<|eot_id|><" merges across the turn boundary."""
    data = DataSection(datasets=[one_file(tmp_path, [{"messages": CONVERSATION}])], template="llama3", cache=False)
    train, evals, stats = build_datasets(tok, data, seed=0)
    contract = check_contract(tok, train, evals, stats, data, "sdpa")
    status = {c.name: c for c in contract.checks}
    assert status["end-of-turn token is supervised"].status == "FAIL"
    assert status["end-of-turn is one token"].status == "warn"


def test_generation_markers_give_the_same_masks(tmp_path, tok):
    plain = tok.chat_template
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    marked = plain.replace(turn, (
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + turn + "{% endif %}"
    ))
    assert marked != plain
    (tmp_path / "marked.jinja").write_text(marked)
    spec = one_file(tmp_path, [{"messages": CONVERSATION}])
    without, _, _ = build(tok, [spec])
    with_markers, _, _ = build(tok, [spec], template=str(tmp_path / "marked.jinja"))
    assert with_markers[0] == without[0]


# ---------------------------------------------------------------------------------------------- packing


@pytest.mark.slow  # builds the trainer (TRL) to read its packed batch
def test_packed_batch_logits_equal_each_sample_alone(tmp_path, tok, tiny_model_dir):
    """The trainer's own packed batch (TRL bfd + padding-free collator) through the model, vs. each sample alone."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import sft_trainer as make_trainer

    rows = [{"messages": chat(f"question {i} " * (i + 1), f"answer {i}")} for i in range(6)]
    data = DataSection(datasets=[one_file(tmp_path, rows)], packing=True, max_length=128, cache=False)
    train, evals, stats = build_datasets(tok, data, seed=0)
    assert stats.packing["enabled"] and stats.packing["rows"] < len(train) and 0 < stats.packing["efficiency"] <= 1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    recipe = Recipe(data=data, training=TrainingSection(batch_size=2, max_steps=1), run={"output_dir": str(tmp_path)})
    batch = next(iter(make_trainer(recipe, model, tok, train).get_train_dataloader()))
    assert "attention_mask" not in batch
    starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
    assert len(starts) > 3  # several samples in the batch
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for attention in ("sdpa", "eager"):
        model.set_attn_implementation(attention)
        with torch.no_grad():
            packed = model(**inputs).logits[0]
            alone = [model(input_ids=batch["input_ids"][:, a:b]).logits[0] for a, b in zip(starts, starts[1:])]
            crossed = model(input_ids=batch["input_ids"]).logits[0]  # control: one long sequence, no boundaries
        for (a, b), logits in zip(zip(starts, starts[1:]), alone):
            torch.testing.assert_close(packed[a:b], logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(crossed[starts[1] : starts[2]], alone[1], atol=1e-3)
        contract = check_contract(tok, train, evals, stats, data, attention)
        assert {c.name: c.status for c in contract.checks}["packed samples are isolated"] == "ok"
    unknown = check_contract(tok, train, evals, stats, data, "sdpa_paged")
    assert "not known to keep packed samples apart" in unknown.checks[3].detail


# ---------------------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_reported_with_file_and_row(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = {"messages": CONVERSATION[1:3]}
    jsonl = write_jsonl(tmp_path / "a.jsonl", [good, "{not json", {"messages": [{"role": "user", "content": "no reply"}]}])
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('messages\n"' + json.dumps(good["messages"]).replace('"', '""') + '"\nnot a list\n')
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": None}]), parquet)
    specs = [DatasetSpec(path=str(p)) for p in (jsonl, csv_path, parquet)]
    with pytest.raises(UserError, match=rf"{jsonl}:2: malformed JSON.*\nhint: fix the row, or set \[data\] on_bad_row"):
        build(tok, specs)
    train, _, stats = build(tok, specs, on_bad_row="skip")
    assert len(train) == 3 and [s["bad"] for s in stats.sources] == [2, 1, 1]
    assert stats.bad_rows == [
        f"{jsonl}:2: malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"{jsonl}:3: the conversation has no assistant turn to learn from",
        f"{csv_path}:3: 'messages' is a string that is not a JSON list",
        f"{parquet}:row 2: completion must be a string (got NoneType)",
    ]
    assert stats.as_dict()["bad_rows"] == 4


def test_rows_the_template_refuses_are_bad_rows_and_all_bad_is_empty(tmp_path, tok):
    (tmp_path / "strict.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tool = {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}, {"role": "assistant", "content": "z"}]}
    spec = one_file(tmp_path, [tool])
    template = str(tmp_path / "strict.jinja")
    with pytest.raises(UserError, match=r"d\.jsonl:1: the chat template cannot render it: no tool role"):
        build(tok, [spec], template=template)
    with pytest.raises(UserError, match="empty after filtering"):
        build(tok, [spec], template=template, on_bad_row="skip")


# ---------------------------------------------------------------------------------------------- cache


def test_a_rerun_loads_the_cached_dataset_without_tokenizing(tmp_path, tok, monkeypatch):
    rows = [{"messages": CONVERSATION}, "{bad", {"prompt": "p", "completion": "c"}]
    spec = one_file(tmp_path, rows)
    first = build(tok, [spec], cache=True, on_bad_row="skip")
    assert first[2].cache == "miss" and list((tmp_path / "cache" / "datasets").iterdir())

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("re-tokenized on a cache hit")

    monkeypatch.setattr(build_module, "encode", no_tokenizing)
    second = build(tok, [spec], cache=True, on_bad_row="skip")
    assert second[2].cache == "hit"
    assert second[0][:] == first[0][:] and second[2].bad_rows == first[2].bad_rows
    assert second[2].as_dict() | {"cache": "miss"} == first[2].as_dict()
    write_jsonl(tmp_path / "d.jsonl", rows[:1])  # changed data → rebuilt
    with pytest.raises(AssertionError, match="re-tokenized"):
        build(tok, [spec], cache=True, on_bad_row="skip")
    with pytest.raises(AssertionError, match="re-tokenized"):  # changed template → rebuilt
        build(tok, [one_file(tmp_path, rows)], cache=True, on_bad_row="skip", template="chatml")


# ---------------------------------------------------------------------------------------------- contract


THINK = BUILTINS["chatml"].read_text().replace(
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
    "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}{{ '<think></think>' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>' + '\n'}}",
)
NO_END_OF_TURN = (
    "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def contract_for(tmp_path, tok, template_text: str | None = None, **settings):
    if template_text is not None:
        (tmp_path / "t.jinja").write_text(template_text)
        settings["template"] = str(tmp_path / "t.jinja")
    data = DataSection(datasets=[one_file(tmp_path, [{"messages": CONVERSATION}] * 2)], cache=False, **settings)
    train, evals, stats = build_datasets(tok, data, seed=0)
    return check_contract(tok, train, evals, stats, data, "sdpa")


def test_contract_passes_on_good_data(tmp_path, tok):
    contract = contract_for(tmp_path, tok)
    assert [(c.name, c.status) for c in contract.checks] == [
        ("every sample has supervised tokens", "ok"),
        ("end-of-turn token is supervised", "ok"),
        ("no supervised token in a prompt", "ok"),
        ("packed samples are isolated", "n/a"),
        ("saved template = training template", "ok"),
    ]
    assert "'<|im_end|>' closes 4 of 4 replies" in contract.checks[1].detail
    enforce(contract)  # no failure, no error


def test_contract_catches_supervised_template_text(tmp_path, tok):
    """A template that adds text to replies beyond its generation prompt (like <think></think>) gets it supervised."""
    contract = contract_for(tmp_path, tok, THINK)
    failed = {c.name: c.detail for c in contract.failures}
    assert list(failed) == ["no supervised token in a prompt"]
    assert "<think></think>Hello! How can I help?" in failed["no supervised token in a prompt"]
    with pytest.raises(UserError) as info:
        enforce(contract)
    assert "pre-flight data contract failed" in str(info.value) and "--skip-contract" in str(info.value)


def test_contract_catches_a_template_without_end_of_turn(tmp_path, tok):
    contract = contract_for(tmp_path, tok, NO_END_OF_TURN)
    failed = {c.name: c.detail for c in contract.failures}
    assert "never learn to stop" in failed["end-of-turn token is supervised"]
    assert contract_for(tmp_path, tok, NO_END_OF_TURN, enforce_contract=False).enforced is False


@pytest.mark.slow
def test_run_stops_on_a_contract_failure_unless_skipped(tiny_recipe, tmp_path, capsys):
    (tmp_path / "think.jinja").write_text(THINK)
    recipe = tiny_recipe()
    args = ["run", str(recipe), "--set", f'data.template="{tmp_path / "think.jinja"}"', "--set", "training.max_steps=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pre-flight data contract failed" in err and "no supervised token in a prompt" in err
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["contract"]["passed"] is False and summary["stopped"] == "pre-flight data contract"
    assert main([*args, "--overwrite", "--skip-contract"]) == 0
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["contract"]["passed"] is False and summary["contract"]["enforced"] is False
    assert (tmp_path / "runs" / "tiny" / "adapter" / "chat_template.jinja").read_text() == THINK


# ---------------------------------------------------------------------------------------------- preview


def test_preview_renders_marked_samples_stats_and_contract(tiny_recipe, capsys):
    assert main(["data", "preview", str(tiny_recipe()), "-n", "2", "--set", "data.packing=true"]) == 0
    out = capsys.readouterr().out
    assert "supervised tokens are shown between [[ and ]]" in out
    assert out.count("── sample ") == 2
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>]]\n" in out
    for fact in ("messages (detected)", "tokens per sample", "min ", "p90 ", "length histogram", "truncated", "supervised share",
                 "packing", "efficiency", "pre-flight data contract", "packed samples are isolated"):
        assert fact in out, fact
    assert "FAIL" not in out


def test_preview_colours_supervised_tokens_in_a_terminal(tok):
    sample = {"input_ids": tok("ab<|im_end|>", add_special_tokens=False)["input_ids"]}
    sample["labels"] = [IGNORE] + sample["input_ids"][1:]
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=120)
    print_sample(console, tok, sample, "sample", markers=False)
    out = console.file.getvalue()
    assert "\x1b[" in out and "[[" not in out and "<|im_end|>" in out
