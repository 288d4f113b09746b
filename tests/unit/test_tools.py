"""Tool calling: schemas in the prompt, structured calls in the data, masks, parsing, the eval metric, recipes."""

import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from peftsft.training.tool_scoring import tool_metrics
from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data.build import DataStats, build_datasets, load_items
from peftsft.data.contract import ReplyChecks, _tool_masks, check_contract, enforce
from peftsft.data.formats import RowError, to_messages
from peftsft.data.masking import IGNORE, encode
from peftsft.data.templates import BUILTINS, end_of_turn, generation_header, render
from peftsft.data.tools import ToolChat, ToolsError, normalize_tool_calls, normalize_tools, parse_tool_calls, tool_names

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIMER = {"type": "function", "function": {"name": "set_timer", "description": "Start a countdown timer.",
                                          "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}}}}
RESULT = '{"temperature_c": 14, "condition": "cloudy"}'


def sharegpt_row(tools=json.dumps([WEATHER, TIMER])) -> dict:
    return {"tools": tools, "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
        {"from": "observation", "value": RESULT},
        {"from": "gpt", "value": "It is 14°C and cloudy in Oslo."},
    ]}


@pytest.fixture(scope="module")
def hermes(smollm_dir):
    """A fresh SmolLM2 tokenizer with the built-in hermes template (the session tokenizer stays untouched)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    tok.chat_template = BUILTINS["hermes"].read_text(encoding="utf-8")
    return tok


def supervised_text(tok, sample) -> str:
    return "".join(tok.decode([t]) for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE)


# ---------------------------------------------------------------------------------------------- data in


def test_bare_and_openai_schemas_normalise_alike():
    bare, wrapped = normalize_tools([WEATHER]), normalize_tools(json.dumps([{"type": "function", "function": WEATHER}]))
    assert bare == wrapped == [{"type": "function", "function": WEATHER}]
    assert normalize_tools(None) == [] and normalize_tools("") == []
    with pytest.raises(ToolsError, match=r"\[1\] needs a function name"):
        normalize_tools([WEATHER, "get_weather"])


def test_sharegpt_function_call_becomes_structured_tool_calls():
    messages = to_messages(sharegpt_row(), "sharegpt")
    assert isinstance(messages, ToolChat) and [t["function"]["name"] for t in messages.tools] == ["get_weather", "set_timer"]
    call = messages[1]
    assert call == {"role": "assistant", "content": "",
                    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert messages[2] == {"role": "tool", "content": RESULT}
    # a function_call turn that is not a JSON call stays the text it is
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "no json here"}]}
    assert to_messages(row, "sharegpt")[1] == {"role": "assistant", "content": "no json here"}


def test_tools_column_is_mapped_with_fields():
    row = sharegpt_row()
    row["functions"] = row.pop("tools")
    spec = DatasetSpec(path="x.jsonl", format="sharegpt", fields={"tools": "functions"})
    from peftsft.data.formats import Mapping

    assert len(to_messages(row, "sharegpt", Mapping(spec.fields)).tools) == 2


def read_failing_then_skipping(tmp_path, rows: list[dict]) -> tuple[str, int, list[str]]:
    """A file of `rows` read with on_bad_row = "fail" (its error) and "skip" (rows kept, bad rows reported)."""
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSection(datasets=[DatasetSpec(path=str(path))])
    with pytest.raises(UserError) as info:
        load_items(data.datasets[0], 0, data, DataStats())
    data = DataSection(datasets=[DatasetSpec(path=str(path))], on_bad_row="skip")
    stats = DataStats()
    kept = len(load_items(data.datasets[0], 0, data, stats))
    return str(info.value).replace(str(path), "FILE"), kept, [b.replace(str(path), "FILE") for b in stats.bad_rows]


def test_malformed_tools_stop_at_file_line_or_are_skipped(tmp_path):
    bad = sharegpt_row(tools='[{"name": "get_weather", ')
    error, kept, bad_rows = read_failing_then_skipping(tmp_path, [sharegpt_row(), bad, sharegpt_row(tools='[{"x": 1}]')])
    assert "FILE:2: 'tools' is not valid JSON" in error
    assert kept == 1 and len(bad_rows) == 2 and bad_rows[1].startswith("FILE:3: 'tools' [0] needs a function name")


def legacy_openai_row(call: dict | None = None) -> dict:
    """OpenAI's legacy function calling: `functions`, an assistant `function_call` (JSON string arguments) and a
    `function` turn holding the result."""
    call = call or {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}
    return {"functions": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "get_weather", "content": RESULT},
        {"role": "assistant", "content": "It is 14°C and cloudy in Oslo."},
    ]}


def test_openai_legacy_function_calling_reads_as_tool_calls_and_tool_turns():
    messages = to_messages(legacy_openai_row(), "auto")
    assert isinstance(messages, ToolChat) and messages.tools == normalize_tools([WEATHER])
    assert messages[1] == {"role": "assistant", "content": "",
                           "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert messages[2] == {"role": "tool", "content": RESULT, "name": "get_weather"}
    # a `tools` column wins over `functions`; a malformed `functions` column is named as such
    row = legacy_openai_row() | {"tools": [WEATHER, TIMER["function"]]}
    assert tool_names(to_messages(row, "messages").tools) == ["get_weather", "set_timer"]
    with pytest.raises(RowError, match="'functions' is not valid JSON"):
        to_messages(legacy_openai_row() | {"functions": "[{"}, "messages")
    with pytest.raises(RowError, match=r"messages\[1\].function_call: \[0\] needs a function name"):
        to_messages(legacy_openai_row({"arguments": "{}"}), "messages")


@pytest.mark.parametrize("call", [
    {"name": "get_weather", "parameters": {"city": "Oslo"}},  # Llama 3's JSON call format
    {"name": "get_weather", "parameters": '{"city": "Oslo"}'},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Oslo"}}},
    {"name": "get_weather", "arguments": {"city": "Oslo"}, "parameters": {"city": "Bergen"}},  # arguments win
])
def test_calls_written_with_parameters_are_read_as_their_arguments(call):
    expected = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert normalize_tool_calls([call]) == expected
    row = {"tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in Oslo?"},
                                            {"role": "assistant", "content": None, "tool_calls": [call]}]}
    assert to_messages(row, "messages")[1]["tool_calls"] == expected
    sharegpt = sharegpt_row()
    sharegpt["conversations"][1]["value"] = json.dumps(call)
    assert to_messages(sharegpt, "sharegpt")[1]["tool_calls"] == expected
    assert normalize_tool_calls([{"name": "get_weather"}])[0]["function"]["arguments"] == {}  # no arguments: none


def test_a_call_to_a_function_the_row_does_not_offer_is_a_bad_row(tmp_path):
    unoffered = sharegpt_row(tools=json.dumps([TIMER]))  # the reply calls get_weather; only set_timer is offered
    untooled = sharegpt_row(tools=None)  # no schemas at all: the functions may be described in the text, not judged
    misnamed = sharegpt_row()
    misnamed["conversations"][1]["value"] = json.dumps({"name": "get_time", "arguments": {}})
    error, kept, bad_rows = read_failing_then_skipping(tmp_path, [sharegpt_row(), unoffered, untooled, misnamed])
    assert "FILE:2: a reply calls 'get_weather', which the row's tools do not offer (set_timer)" in error
    assert kept == 2 and len(bad_rows) == 2 and bad_rows[1].startswith("FILE:4: a reply calls 'get_time'")
    with pytest.raises(RowError, match="calls 'get_time', which the row's tools do not offer"):  # legacy calls too
        to_messages(legacy_openai_row({"name": "get_time", "arguments": "{}"}), "messages")


# ---------------------------------------------------------------------------------------------- rendering and masks


def test_schemas_render_into_the_prompt(hermes):
    messages = to_messages(sharegpt_row(), "sharegpt")
    text = render(hermes, messages[:1], add_generation_prompt=True, tools=messages.tools)
    assert "<tools>" in text and '"name": "get_weather"' in text and "Start a countdown timer." in text
    assert "<tools>" not in render(hermes, messages[:1], add_generation_prompt=True)  # a plain list: no tools
    full = render(hermes, messages)  # a ToolChat carries its schemas into every render
    assert full.count('"name": "set_timer"') == 1
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>' in full
    assert f"<tool_response>\n{RESULT}\n</tool_response>" in full


def test_masks_supervise_calls_but_not_schemas_or_results(hermes):
    messages = to_messages(sharegpt_row(), "sharegpt")
    sample = encode(hermes, messages, "assistant", max_length=1024)
    learned = supervised_text(hermes, sample)
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
                       "It is 14°C and cloudy in Oslo.<|im_end|>")
    assert "Current weather" not in learned and "temperature_c" not in learned


def test_contract_checks_calls_supervised_and_schemas_results_not(hermes):
    messages = to_messages(sharegpt_row(), "sharegpt")
    markers = {"eot": end_of_turn(hermes), "eos": hermes.eos_token, "header": generation_header(hermes)}
    good = ReplyChecks()
    sample = encode(hermes, messages, "assistant", max_length=1024)
    good.observe(hermes, messages, sample, "assistant", markers, "d.jsonl:1")
    assert (good.tool_calls, good.calls_supervised, good.calls_missed, good.tool_text_supervised) == (1, 1, 0, 0)
    # a mask that also learns the tool result and the schemas is caught
    leaky = encode(hermes, messages, "assistant", max_length=1024)
    leaky.labels = list(leaky.input_ids)
    bad = ReplyChecks()
    bad.observe(hermes, messages, leaky, "assistant", markers, "d.jsonl:1")
    assert bad.tool_text_supervised >= 2 and any("schema or result" in e for e in bad.examples)
    assert _tool_masks(SimpleNamespace(checks=asdict(good)), "assistant").status == "ok"
    assert _tool_masks(SimpleNamespace(checks=asdict(bad)), "assistant").status == "FAIL"
    # a mask that misses the call is caught
    blind = encode(hermes, messages, "assistant", max_length=1024)
    call_end = sample.text.rindex("</tool_call>")  # the reply's (the first is in the system prompt)
    blind.labels = [IGNORE if start < call_end else label for label, (start, _) in zip(blind.labels, blind.offsets)]
    missed = ReplyChecks()
    missed.observe(hermes, messages, blind, "assistant", markers, "d.jsonl:1")
    assert missed.calls_missed == 1
    assert _tool_masks(SimpleNamespace(checks=asdict(missed)), "assistant").status == "FAIL"


def test_legacy_function_results_stay_unsupervised(hermes):
    messages = to_messages(legacy_openai_row(), "messages")
    learned = supervised_text(hermes, encode(hermes, messages, "assistant", max_length=1024))
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
                       "It is 14°C and cloudy in Oslo.<|im_end|>")
    assert f"<tool_response>\n{RESULT}\n</tool_response>" in render(hermes, messages)


def contract_of(tokenizer, *paths, **settings):
    """check_contract on the datasets build_datasets makes of `paths` with the hermes template."""
    data = DataSection(datasets=[DatasetSpec(path=str(p)) for p in paths], template="hermes", cache=False, **settings)
    train, evals, stats = build_datasets(tokenizer, data, seed=0)
    return check_contract(tokenizer, train, evals, stats, data, "sdpa")


def test_check_contract_judges_tool_masks_and_fails_on_a_supervised_tool_result(tmp_path, hermes, monkeypatch):
    from peftsft.data import masking

    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(sharegpt_row()) + "\n")
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps(legacy_openai_row()) + "\n")
    checks = {c.name: c for c in contract_of(hermes, path, legacy).checks}
    tool_check = checks["tool calls supervised, schemas and results not"]
    assert tool_check.status == "ok" and tool_check.detail.startswith("2 call(s) in 2 row(s) supervised")
    assert not contract_of(hermes, path, legacy).failures
    by_all = {c.name: c for c in contract_of(hermes, path, masking="all").checks}
    assert by_all["tool calls supervised, schemas and results not"].status == "n/a"
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}))
    assert "tool calls supervised, schemas and results not" not in {c.name for c in contract_of(hermes, plain).checks}

    spans = masking.assistant_spans

    def leaky(tokenizer, messages):  # a masking slip: the tool result is learned as if it were a reply
        text, found = spans(tokenizer, messages)
        start = text.index(RESULT)
        return text, sorted([*found, (start, start + len(RESULT))])

    monkeypatch.setattr(masking, "assistant_spans", leaky)
    contract = contract_of(hermes, path, legacy)
    failed = {c.name: c for c in contract.failures}
    assert "tool calls supervised, schemas and results not" in failed
    assert failed["tool calls supervised, schemas and results not"].detail.startswith("2 schema/result span(s) supervised")
    assert RESULT[:20] in failed["tool calls supervised, schemas and results not"].detail
    with pytest.raises(UserError, match="pre-flight data contract failed"):
        enforce(contract)


def test_build_refuses_a_template_that_drops_tools(tmp_path, hermes, tokenizer):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(sharegpt_row()) + "\n")
    hermes_template = hermes.chat_template
    hermes.chat_template = tokenizer.chat_template  # SmolLM2's own template has no `tools`
    try:
        with pytest.raises(UserError, match="does not render tool schemas") as info:
            build_datasets(hermes, DataSection(datasets=[DatasetSpec(path=str(path))], cache=False), seed=0)
        assert "hermes" in info.value.hint
        train, _, stats = build_datasets(
            hermes, DataSection(datasets=[DatasetSpec(path=str(path))], template="hermes", cache=False), seed=0
        )
    finally:
        hermes.chat_template = hermes_template
    assert len(train) == 1 and stats.checks["calls_supervised"] == 1


# ---------------------------------------------------------------------------------------------- calls out


def test_parse_tool_calls_into_openai_objects():
    reply = parse_tool_calls('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
                             '<tool_call>{"name": "set_timer", "arguments": "{\\"minutes\\": 5}"}</tool_call>')
    assert reply.content == "Sure." and reply.invalid == 0
    assert reply.tool_calls == [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_1", "type": "function", "function": {"name": "set_timer", "arguments": '{"minutes": 5}'}},
    ]
    assert reply.message()["tool_calls"] == reply.tool_calls
    calls_only = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>').message()
    assert calls_only["content"] is None and len(calls_only["tool_calls"]) == 1  # OpenAI: no text, only calls
    assert parse_tool_calls("").message() == {"role": "assistant", "content": ""}
    llama = parse_tool_calls('<tool_call>{"name": "get_weather", "parameters": {"city": "Oslo"}}</tool_call>'
                             '<tool_call>{"name": "set_timer"}</tool_call>')  # Llama 3's key; no arguments at all
    assert [c["function"]["arguments"] for c in llama.tool_calls] == ['{"city": "Oslo"}', "{}"]
    assert parse_tool_calls("<tool_call>{</tool_call> <tool_call>[1]</tool_call>").invalid == 2
    zurich = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>')
    assert zurich.tool_calls[0]["function"]["arguments"] == '{"city": "Zürich"}'  # as written, not \u00fc
    from peftsft.data.tools import call_text

    assert call_text({"name": "get_weather", "arguments": {"city": "Zürich"}}) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>')


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # broken JSON
    '<tool_call>{"arguments": {"city": "Oslo"}}</tool_call>',  # no name
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',  # arguments not an object
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Os',  # cut off by max_new_tokens
])
def test_malformed_calls_are_no_call_and_counted_invalid(text):
    reply = parse_tool_calls(text)
    assert reply.tool_calls == [] and reply.invalid == 1 and reply.attempted == 1
    assert parse_tool_calls("It is sunny.").attempted == 0


def test_tool_metrics_on_hand_made_predictions():
    tools = normalize_tools([WEATHER, TIMER])

    def row(calls=None, text=""):
        reply = {"role": "assistant", "content": text}
        if calls:
            reply["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
        return ToolChat([{"role": "user", "content": "q"}, reply], tools)

    def call(name, arguments):
        return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"

    rows = [row([("get_weather", {"city": "Oslo"})]), row([("get_weather", {"city": "Oslo"})]),
            row([("set_timer", {"minutes": 5})]), row([("set_timer", {"minutes": 5})]),
            row(text="Hello!"), row(text="Hi!"),
            [{"role": "user", "content": "no tools offered"}, {"role": "assistant", "content": "x"}]]
    predictions = [call("get_weather", {"city": "Oslo"}),  # right name, right arguments
                   call("get_weather", {"city": "Bergen"}),  # right name, wrong arguments
                   '<tool_call>{"name": "set_timer", "arguments": {"minutes": 5</tool_call>',  # invalid JSON
                   "Sure, five minutes.",  # no call at all
                   "Hello there!",  # right: no call
                   call("get_weather", {"city": "Oslo"}),  # wrong: a call where none was needed
                   call("get_weather", {})]  # a row without tools is not scored
    metrics = tool_metrics(predictions, rows)
    assert metrics == {"tool_accuracy": 0.5, "tool_name_accuracy": 0.5, "tool_call_exact": 0.25,
                       "tool_json_valid": 0.5, "no_call_accuracy": 0.5, "tool_call_rows": 4, "no_call_rows": 2}
    # the balanced score: calling on a no-call row and staying quiet on a call row both count against it
    always_call = tool_metrics([call("get_weather", {"city": "Oslo"})] * 2, rows[:1] + rows[4:5])
    assert always_call["tool_name_accuracy"] == 1.0 and always_call["tool_accuracy"] == 0.5
    assert tool_metrics(["x"], [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]]) == {}


def test_generation_prompt_carries_the_row_tools(hermes):
    from peftsft.generation import chat_inputs, reply_message

    inputs = chat_inputs(hermes, ToolChat([{"role": "user", "content": "Weather in Oslo?"}], normalize_tools([WEATHER])),
                         "cpu")
    assert "get_weather" in hermes.decode(inputs["input_ids"][0])
    assert reply_message("It is sunny.") == {"role": "assistant", "content": "It is sunny."}


def test_generate_reads_tools_per_prompt_row(tmp_path):
    from peftsft.commands.generate import _responses, read_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Weather in Oslo?", "tools": [WEATHER]}, {"prompt": "Hi"}, {"prompt": "x", "tools": "[{"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    prompts = read_prompts(str(path), None, tools=normalize_tools([TIMER]))
    assert [t["function"]["name"] for t in prompts[0].messages.tools] == ["get_weather"]
    assert [t["function"]["name"] for t in prompts[1].messages.tools] == ["set_timer"]  # --tools for rows without
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=f"{path}:3: \"tools\" is not valid JSON"):
        read_prompts(str(path), None)
    out = _responses({"tuned": ['<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>']}, 0)
    assert out["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}


# ---------------------------------------------------------------------------------------------- recipes


def test_validate_says_when_the_template_would_drop_tools(tmp_path, tiny_model_dir):
    from tests.conftest import write_tiny_recipe
    from peftsft.training.recipe import load_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, rows=[sharegpt_row()])
    (tmp_path / "recipe.toml").write_text(recipe.read_text().replace("max_length = 128", 'template = "chatml"'))
    with pytest.raises(UserError) as info:
        load_recipe(recipe)
    assert any("does not render tool schemas" in p and "train.jsonl:1" in p for p in info.value.problems)
    (tmp_path / "recipe.toml").write_text(recipe.read_text().replace('template = "chatml"', 'template = "hermes"'))
    assert load_recipe(recipe).data.template == "hermes"


def test_shipped_tool_calling_recipe_validates():
    from pathlib import Path

    from peftsft.training.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "tool-calling-lora.toml")
    assert recipe.data.template == "hermes" and recipe.data.datasets[0].format == "sharegpt"


def test_eval_scores_tool_rows_end_to_end_on_a_tiny_model(tiny_model_dir, hermes):
    from transformers import AutoModelForCausalLM

    from peftsft.artifacts.evaluate import EvalRow, evaluate_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    call_row = to_messages(sharegpt_row(), "sharegpt")[:2]
    rows = [EvalRow(ToolChat(call_row, normalize_tools([WEATHER]))),
            EvalRow(ToolChat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                             normalize_tools([TIMER])))]
    assert rows[0].reference is None and rows[0].answerable and "<tools>" in render(hermes, rows[0].prompt)
    metrics, predictions = evaluate_model(model, hermes, rows, max_length=512, max_new_tokens=4, batch_size=2)
    assert len(predictions) == 2 and metrics["tool_call_rows"] == 1 and metrics["no_call_rows"] == 1
    assert metrics["tool_name_accuracy"] == 0.0 and "eval_loss" in metrics and "exact_match" in metrics


def test_chat_keeps_parsed_calls_in_the_history_and_reads_tools_file(tmp_path, hermes, tokenizer):
    from peftsft.commands.model_args import read_tools
    from peftsft.commands.talk import Conversation, _parse_reply

    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    history, calls = _parse_reply(hermes, text)
    assert history["tool_calls"] == calls and calls[0]["function"]["name"] == "get_weather"
    assert _parse_reply(tokenizer, text)[0] == {"role": "assistant", "content": text}  # no tool support: kept as text
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([WEATHER]))
    chat = Conversation(tools=read_tools(str(path)))
    chat.add({"role": "user", "content": "Weather in Oslo?"}, history)
    prompt = chat.with_turn({"role": "tool", "content": RESULT})
    assert "<tools>" in render(hermes, prompt, add_generation_prompt=True) and prompt[-1]["role"] == "tool"
    path.write_text("[{")
    with pytest.raises(UserError, match="--tools .*not valid JSON"):
        read_tools(str(path))
