"""Unit tests of tool calling's data pieces: a conversation carrying its tools, schemas and calls normalised to
OpenAI's shapes, calls parsed back out of a reply's Hermes blocks, a call written as such a block; and rows read as
turns (formats.py): tool messages, call turns, the keys a turn list is read by."""

from __future__ import annotations

import json

import pytest

from peftsft.data.formats import Mapping, RowError, detect_format, row_tools, to_messages
from peftsft.data.tools import (
    ParsedReply, ToolChat, ToolsError, call_text, function_call_turn, normalize_tool_calls, normalize_tools,
    parse_tool_calls, template_renders_tools, tool_names, tools_of, with_tools,
)

SCHEMA = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
MESSAGES = [{"role": "user", "content": "Q?"}]


# ---------------------------------------------------------------------------------------------- a chat with tools


def test_a_tool_chat_is_its_messages_carrying_its_tools():
    chat = ToolChat(MESSAGES, [SCHEMA])
    assert list(chat) == MESSAGES and chat.tools == [SCHEMA]
    assert ToolChat(MESSAGES).tools == [] and ToolChat(MESSAGES, None).tools == []
    assert ToolChat().tools == [] and list(ToolChat()) == []


def test_the_tools_of_a_conversation_are_its_schemas_or_none():
    assert tools_of(ToolChat(MESSAGES, [SCHEMA])) == [SCHEMA]
    assert tools_of(ToolChat(MESSAGES)) is None
    assert tools_of(MESSAGES) is None and tools_of("plain text") is None


def test_messages_with_tools_are_a_tool_chat_and_without_them_a_plain_list():
    chat = with_tools(MESSAGES, [SCHEMA])
    assert isinstance(chat, ToolChat) and chat.tools == [SCHEMA] and list(chat) == MESSAGES
    for tools in (None, []):
        plain = with_tools(MESSAGES, tools)
        assert type(plain) is list and plain == MESSAGES and plain is not MESSAGES


def test_tool_names_are_each_schemas_function_name():
    other = {"type": "function", "function": {"name": "g", "parameters": {}}}
    assert tool_names([SCHEMA, other]) == ["f", "g"]
    assert tool_names(None) == [] and tool_names([]) == []


# ---------------------------------------------------------------------------------------------- schemas


def test_a_json_string_of_schemas_is_read_and_a_missing_parameters_gets_an_empty_object():
    assert normalize_tools('[{"name": "f", "description": "does f"}, {"function": {"name": "g"}}]') == [
        {"type": "function", "function": {"name": "f", "description": "does f",
                                          "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}]
    assert normalize_tools('{"name": "h", "parameters": "{\\"type\\": \\"object\\"}"}') == [
        {"type": "function", "function": {"name": "h", "parameters": {"type": "object"}}}]
    assert normalize_tools("[]") == [] and normalize_tools([]) == []


def test_a_schemas_description_and_parameters_are_kept_as_they_are():
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert normalize_tools([{"type": "function", "function": {"name": "w", "description": "",
                                                              "parameters": parameters}}]) == [
        {"type": "function", "function": {"name": "w", "description": "", "parameters": parameters}}]


@pytest.mark.parametrize(("value", "message"), [
    ("{'name': 'f'}", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("7", "must be a list of tool schemas (got int)"),
    ('"f"', "must be a list of tool schemas (got str)"),
    ([{"name": "f"}, {"name": "g"}, {"description": "no name"}],
     '[2] needs a function name ({"name": ..., "parameters": {...}})'),
    ([{"name": "f"}, {"name": "g", "parameters": "{x"}], "[1].parameters is a string that is not JSON"),
    ([{"name": "f"}, {"name": "g", "parameters": 3}], "[1].parameters must be a JSON schema object"),
    ([{"name": "f", "parameters": "[1]"}], "[0].parameters must be a JSON schema object"),
    ([{"function": None, "name": "f"}], '[0] needs a function name ({"name": ..., "parameters": {...}})'),
])
def test_a_bad_schema_says_which_item_and_what_is_wrong(value, message):
    with pytest.raises(ToolsError) as caught:
        normalize_tools(value)
    assert str(caught.value) == message


# ---------------------------------------------------------------------------------------------- calls in data


def test_a_call_keeps_its_name_and_its_arguments_objects_or_unparsed_text():
    assert normalize_tool_calls({"function": {"name": "f", "arguments": {"x": 1}, "parameters": {"y": 2}}}) == [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert normalize_tool_calls('[{"name": "f", "arguments": "[1, 2]"}, {"name": "g", "parameters": "{\\"z\\": 3}"}]') == [
        {"type": "function", "function": {"name": "f", "arguments": [1, 2]}},
        {"type": "function", "function": {"name": "g", "arguments": {"z": 3}}}]
    assert normalize_tool_calls([{"name": "", "arguments": "x = 1"}]) == [
        {"type": "function", "function": {"name": "", "arguments": "x = 1"}}]


@pytest.mark.parametrize(("calls", "message"), [
    ("nope", "is a string that is not JSON"),
    ("[]", "must be a non-empty list of calls"),
    ('"f"', "must be a non-empty list of calls"),
    (None, "must be a non-empty list of calls"),
    ([{"name": "f"}, {"name": "g"}, {"function": {"name": 3}}], "[2] needs a function name"),
    ([{"function": "f"}], "[0] needs a function name"),
])
def test_a_bad_call_says_which_and_what(calls, message):
    with pytest.raises(ToolsError) as caught:
        normalize_tool_calls(calls)
    assert str(caught.value) == message


def test_a_sharegpt_function_call_turn_is_its_calls_or_none_when_it_is_text():
    assert function_call_turn('{"name": "f", "arguments": {"x": 1}}') == [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert function_call_turn("I will look it up.") is None
    assert function_call_turn('{"arguments": {}}') is None
    assert function_call_turn("[]") is None


# ---------------------------------------------------------------------------------------------- calls out of a reply


def test_call_blocks_become_openai_calls_with_ids_in_order_and_the_rest_is_the_content():
    text = ('Let me check. <tool_call>\n{"name": "weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
            '<tool_call>{"name": "time", "parameters": {"tz": "CET"}}</tool_call> done ')
    reply = parse_tool_calls(text)
    assert reply == ParsedReply("Let me check. \n done", [
        {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Zürich"}'}},
        {"id": "call_1", "type": "function", "function": {"name": "time", "arguments": '{"tz": "CET"}'}}], 0)
    assert reply.attempted == 2


def test_a_call_without_arguments_has_an_empty_object_and_double_encoded_arguments_are_read():
    reply = parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')
    assert reply.tool_calls == [{"id": "call_0", "type": "function", "function": {"name": "now", "arguments": "{}"}}]
    assert reply.content == "" and reply.invalid == 0
    reply = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": [1]}"}</tool_call>')
    assert reply.tool_calls[0]["function"] == {"name": "f", "arguments": '{"a": [1]}'}


def test_an_unclosed_last_block_is_still_a_call():
    reply = parse_tool_calls('Sure.<tool_call>{"name": "f", "arguments": {}}')
    assert reply == ParsedReply("Sure.", [{"id": "call_0", "type": "function",
                                           "function": {"name": "f", "arguments": "{}"}}], 0)


@pytest.mark.parametrize("body", [
    "{not json", '["f"]', '{"name": ""}', '{"name": 3}', '{"arguments": {}}', '{"name": "f", "arguments": "x"}',
    '{"name": "f", "arguments": "[1]"}', '{"name": "f", "arguments": [1]}',
])
def test_a_block_that_is_no_call_is_counted_invalid_and_left_out(body):
    reply = parse_tool_calls(f'Hi <tool_call>{body}</tool_call><tool_call>{{"name": "g"}}</tool_call>')
    assert reply == ParsedReply("Hi", [{"id": "call_0", "type": "function",
                                        "function": {"name": "g", "arguments": "{}"}}], 1)
    assert reply.attempted == 2


def test_every_block_that_is_no_call_is_counted():
    reply = parse_tool_calls("<tool_call>{</tool_call> and <tool_call>[]</tool_call> and <tool_call>x</tool_call>")
    assert reply == ParsedReply("and  and", [], 3) and reply.attempted == 3


def test_a_reply_without_blocks_is_its_stripped_text():
    assert parse_tool_calls("  just words \n") == ParsedReply("just words", [], 0)
    assert parse_tool_calls("").attempted == 0


def test_a_parsed_reply_is_an_openai_assistant_message():
    call = {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert ParsedReply("", [call]).message() == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert ParsedReply("Sure.", [call]).message() == {"role": "assistant", "content": "Sure.", "tool_calls": [call]}
    assert ParsedReply("Hi").message() == {"role": "assistant", "content": "Hi"}
    assert ParsedReply("", [], 2).message() == {"role": "assistant", "content": ""}
    assert ParsedReply("x").tool_calls == [] and ParsedReply("x").invalid == 0


def test_a_call_as_text_is_a_hermes_block_of_its_name_and_arguments_only():
    text = call_text({"name": "weather", "arguments": {"city": "Zürich"}, "id": "x"})
    assert text == '<tool_call>\n{"name": "weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
    assert parse_tool_calls(text).tool_calls[0]["function"] == {"name": "weather",
                                                                "arguments": json.dumps({"city": "Zürich"},
                                                                                        ensure_ascii=False)}


# ---------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(("template", "renders"), [
    ("{% if tools %}{{ tools | tojson }}{% endif %}", True),
    ("{%- for tool in tools -%}", True),
    ("{{ messages }}", False),
    ("{{ my_tools_list }}", False),
    ("", False),
    (None, False),
])
def test_a_template_renders_tools_when_it_names_the_tools_variable(template, renders):
    assert template_renders_tools(template) is renders


# ---------------------------------------------------------------------------------------------- rows read as turns
# (formats.py: the turns and tool messages a row gives)

USER, REPLY = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}


def test_a_tool_turn_keeps_its_string_name_and_call_id_and_other_turns_keep_neither():
    row = {"messages": [{"role": "user", "content": "Q?", "name": "bob", "tool_call_id": "x"},
                        {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]},
                        {"role": "tool", "content": "out", "name": "f", "tool_call_id": "call_0"}, REPLY]}
    chat = to_messages(row, "messages")
    assert chat[0] == USER
    assert chat[2] == {"role": "tool", "content": "out", "name": "f", "tool_call_id": "call_0"}


def test_a_reply_with_calls_keeps_its_text():
    row = {"messages": [USER, {"role": "assistant", "content": "Let me look.", "tool_calls": [{"name": "f"}]}]}
    assert to_messages(row, "messages")[1] == {
        "role": "assistant", "content": "Let me look.",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}


def test_only_a_function_call_turn_is_read_as_a_call_and_json_text_elsewhere_stays_text():
    call = '{"name": "f", "arguments": {}}'
    row = {"conversations": [{"from": "human", "value": call}, {"from": "gpt", "value": call}]}
    assert to_messages(row, "sharegpt") == [{"role": "user", "content": call}, {"role": "assistant", "content": call}]


def test_sharegpt_keys_are_read_under_a_messages_column_and_openai_keys_under_conversations():
    row = {"messages": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    assert to_messages(row, "messages") == [USER, REPLY]
    assert to_messages({"conversations": [USER, REPLY]}, "sharegpt") == [USER, REPLY]
    row = {"messages": [{"role": "user", "content": "Q?", "value": "other"}, REPLY]}
    assert to_messages(row, "messages") == [USER, REPLY]


@pytest.mark.parametrize(("row", "fmt", "message"), [
    ({"conversations": [{"content": "Q?"}]}, "sharegpt", "conversations[0].from: unknown role None"),
    ({"messages": [{"value": "Q?"}]}, "messages", "messages[0].role: unknown role None"),
    ({"conversations": [5, REPLY]}, "sharegpt", "conversations[0] is not an object"),
    ({"messages": {"role": "user"}}, "messages", "'messages' must be a non-empty list"),
])
def test_turns_without_known_keys_are_refused_naming_the_key_the_column_implies(row, fmt, message):
    with pytest.raises(RowError) as caught:
        to_messages(row, fmt)
    assert str(caught.value).split(";")[0] == message


def test_a_recipes_roles_override_the_known_ones():
    row = {"conversations": [{"from": "gpt", "value": "Q?"}, {"from": "narrator", "value": "A."}]}
    assert to_messages(row, "sharegpt", Mapping(roles={"gpt": "user", "narrator": "assistant"})) == [USER, REPLY]
    with pytest.raises(RowError, match=r"^conversations\[0\]\.from: unknown role 5; expected one of system, user, "):
        to_messages({"conversations": [{"from": 5, "value": "Q?"}]}, "sharegpt")


def test_content_parts_must_all_be_text_and_a_part_without_text_adds_nothing():
    parts = [{"type": "text", "text": "Q"}, {"type": "text"}, {"type": "text", "text": "?"}]
    assert to_messages({"messages": [{"role": "user", "content": parts}, REPLY]}, "messages")[0] == USER
    with pytest.raises(RowError, match=r"^messages\[0\]\.content must be a string \(got list\)$"):
        to_messages({"messages": [{"role": "user", "content": [*parts, {"type": "image_url"}]}, REPLY]}, "messages")


def test_the_format_of_a_row_ignores_a_label_unless_it_is_prompt_completion_data():
    assert detect_format({"instruction": "i", "output": "o", "label": True}) == "alpaca"
    assert detect_format({"conversations": ["role"]}) == "sharegpt"
    assert detect_format({"messages": [{"role": "user", "value": "Q?"}]}) == "messages"
    with pytest.raises(RowError, match=r"^cannot tell the format of a row with keys \['rejected'\]; "):
        detect_format({"rejected": "b"})


def test_a_mapped_tools_column_that_is_missing_means_no_tools_even_with_a_functions_column():
    assert row_tools({"functions": [{"name": "f"}]}, Mapping(fields={"tools": "fns"})) == []
    assert row_tools({"tools": None, "functions": [{"name": "f"}]}) == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def test_an_alpaca_row_with_a_null_input_and_tuple_history():
    row = {"instruction": "Do", "input": None, "output": "Done.", "history": [("Hi", "Hello")]}
    assert to_messages(row, "alpaca") == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                          {"role": "user", "content": "Do"}, {"role": "assistant", "content": "Done."}]
    for pair in (["a", "b", "c"], "ab"):
        with pytest.raises(RowError, match=r"^history\[0\] must be a \[instruction, output\] pair$"):
            to_messages({"instruction": "Do", "output": "Done.", "history": [pair]}, "alpaca")


def test_turns_stored_as_a_numpy_array_are_read_as_a_list():
    import numpy as np

    assert to_messages({"messages": np.array([USER, REPLY])}, "messages") == [USER, REPLY]


def test_text_that_is_not_a_string_names_its_column():
    with pytest.raises(RowError, match=r"^text must be a string \(got int\)$"):
        to_messages({"text": 5}, "text")
