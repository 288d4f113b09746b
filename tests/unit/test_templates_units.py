"""Chat templates on their own: which template a recipe's `[data] template` picks and the errors that say why none
fits, the template set on the tokenizer with its fingerprint and end of turn, what a template renders around a reply
(end of turn, generation header), tool support read off its source, and tool calls written out as text for a
template without it."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import jinja2
import pytest

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data import templates
from peftsft.data.templates import (
    BUILTINS,
    TemplateInfo,
    apply_template,
    dropped_tools_problem,
    end_of_turn,
    end_of_turn_tokens,
    first_row_with_tools,
    fit_messages,
    generation_header,
    render,
    supports_tool_schemas,
    supports_tools,
    template_sha,
    template_text,
)
from peftsft.data.tools import ToolChat, call_text
from tests.conftest import write_jsonl
from tests.unit.test_data import tok  # noqa: F401 - fixture: the template put back

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
NAMES = "chatml, hermes, llama3, smollm2"


class JinjaTokenizer:
    """Just what templates.py uses of a tokenizer: its template, EOS text, and a recorded `apply_chat_template`."""

    def __init__(self, chat_template: str | None, eos_token: str = "</s>"):
        self.chat_template, self.eos_token, self.calls = chat_template, eos_token, []

    def apply_chat_template(self, messages, tools=None, tokenize=True, add_generation_prompt=False):
        self.calls.append({"messages": messages, "tools": tools, "tokenize": tokenize,
                           "add_generation_prompt": add_generation_prompt})
        text = jinja2.Template(self.chat_template).render(
            messages=messages, tools=tools, eos_token=self.eos_token, add_generation_prompt=add_generation_prompt
        )
        return [ord(c) for c in text] if tokenize else text


@pytest.fixture
def no_eot_cache(monkeypatch):
    """A fresh end-of-turn cache: what earlier tests read is not reused."""
    monkeypatch.setattr(templates, "_EOT_CACHE", {})
    return templates._EOT_CACHE


# ---------------------------------------------------------------------------------------------- picking a template


def test_the_builtins_are_the_shipped_jinja_files_by_name():
    assert list(BUILTINS) == ["chatml", "hermes", "llama3", "smollm2"]
    assert all(path.suffix == ".jinja" and path.is_file() for path in BUILTINS.values())


def test_auto_is_the_tokenizers_own_template():
    assert template_text("auto", SimpleNamespace(chat_template="{{ x }}")) == ("tokenizer", "{{ x }}")


@pytest.mark.parametrize("own", [None, ""])
def test_auto_without_a_tokenizer_template_names_the_builtins_to_use_instead(own):
    with pytest.raises(UserError) as info:
        template_text("auto", SimpleNamespace(chat_template=own))
    assert info.value.message == "the tokenizer has no chat template"
    assert info.value.hint == f"set [data] template to a built-in ({NAMES}) or a path to a .jinja file"


def test_a_builtin_is_picked_by_name_with_its_files_text():
    name, text = template_text("llama3", SimpleNamespace(chat_template=None))
    assert name == "llama3"
    assert text == BUILTINS["llama3"].read_text(encoding="utf-8") and "<|eot_id|>" in text


def test_a_template_file_is_named_by_its_path(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{# é #}{{ messages }}", encoding="utf-8")
    assert template_text(str(path), SimpleNamespace(chat_template="own")) == (str(path), "{# é #}{{ messages }}")


@pytest.mark.parametrize("setting", ["nope", "missing.jinja"])
def test_a_template_that_is_neither_a_builtin_nor_a_file_says_what_would_do(tmp_path, setting):
    missing = str(tmp_path / setting)
    with pytest.raises(UserError) as info:
        template_text(missing, SimpleNamespace(chat_template="own"))
    assert info.value.message == f"[data] template: {missing!r} is neither a built-in template nor a file"
    assert info.value.hint == f"use auto, one of {NAMES}, or a path to a .jinja file"


def test_a_directory_is_not_a_template_file(tmp_path):
    with pytest.raises(UserError, match="is neither a built-in template nor a file"):
        template_text(str(tmp_path), SimpleNamespace(chat_template="own"))


def test_a_templates_fingerprint_is_the_sha256_of_its_utf8_text():
    assert template_sha("{{ é }}") == hashlib.sha256("{{ é }}".encode()).hexdigest()
    assert template_sha(None) == template_sha("") == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------------------------------------- setting it


def test_the_picked_template_is_set_on_the_tokenizer_with_its_fingerprint_and_end_of_turn(no_eot_cache):
    tokenizer = JinjaTokenizer("{{ 'own' }}")
    info = apply_template(tokenizer, SimpleNamespace(template="chatml"))
    text = BUILTINS["chatml"].read_text(encoding="utf-8")
    assert tokenizer.chat_template == text
    assert info == TemplateInfo("chatml", hashlib.sha256(text.encode()).hexdigest(), "<|im_end|>")
    assert info.as_dict() == {"name": "chatml", "sha256": info.sha256, "end_of_turn": "<|im_end|>"}


def test_auto_sets_the_tokenizers_own_template_back_on_it(no_eot_cache):
    own = "{% for m in messages %}{{ m['content'] }}<end>{% endfor %}"
    tokenizer = JinjaTokenizer(own)
    assert apply_template(tokenizer, SimpleNamespace(template="auto")) == TemplateInfo("tokenizer", template_sha(own),
                                                                                         "<end>")
    assert tokenizer.chat_template == own


def test_a_template_that_cannot_render_a_conversation_is_one_clear_error(tmp_path, no_eot_cache):
    path = tmp_path / "broken.jinja"
    path.write_text("{{ messages[0]['content'] | no_such_filter }}", encoding="utf-8")
    with pytest.raises(UserError) as info:
        apply_template(JinjaTokenizer(None), SimpleNamespace(template=str(path)))
    assert info.value.message.startswith(f"[data] template {path}: cannot render a simple conversation: ")
    assert "no_such_filter" in info.value.message
    assert info.value.hint is None and info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------------------------------------- rendering


def test_render_gives_text_with_the_tool_schemas_the_conversation_carries():
    tokenizer = JinjaTokenizer("{{ messages | length }}{{ tools | length if tools else '-' }}")
    assert render(tokenizer, ToolChat(CHAT, TOOLS)) == "21"
    call = tokenizer.calls[-1]
    assert call == {"messages": CHAT, "tools": TOOLS, "tokenize": False, "add_generation_prompt": False}
    assert type(call["messages"]) is list  # a copy of the conversation, not the ToolChat


def test_render_without_tools_passes_none_and_explicit_tools_win():
    tokenizer = JinjaTokenizer("{{ tools | length if tools is not none else 'none' }}")
    assert render(tokenizer, CHAT) == "none"
    assert render(tokenizer, ToolChat(CHAT, TOOLS), tools=[]) == "none"  # no tools: never an empty list
    other = TOOLS * 3
    assert render(tokenizer, CHAT, tools=other) == "3"
    assert render(tokenizer, CHAT, add_generation_prompt=True) == "none"
    assert tokenizer.calls[-1]["add_generation_prompt"] is True and tokenizer.calls[-1]["tokenize"] is False


def test_the_end_of_turn_is_what_the_template_writes_after_a_reply(tok, no_eot_cache):
    tok.chat_template = BUILTINS["chatml"].read_text()
    assert end_of_turn(tok) == "<|im_end|>"
    tok.chat_template = BUILTINS["llama3"].read_text()
    assert end_of_turn(tok) == "<|eot_id|>"


def test_a_template_with_only_whitespace_after_a_reply_has_no_end_of_turn(no_eot_cache):
    assert end_of_turn(JinjaTokenizer("{% for m in messages %}{{ m['content'] }}\n  \n{% endfor %}")) is None


def test_the_end_of_turn_is_everything_after_the_first_rendering_of_the_reply(no_eot_cache):
    # a template that echoes the reply: what follows its first copy closes the turn
    template = "{% for m in messages %}{{ m['content'] }} [{{ m['content'] }}] {{ eos_token }}{% endfor %}"
    assert end_of_turn(JinjaTokenizer(template, "<end>")) == f"[{templates._REPLY}] <end>"


def test_the_end_of_turn_is_read_once_per_template_and_eos(no_eot_cache):
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    first = JinjaTokenizer(template, "</s>")
    assert end_of_turn(first) == "</s>" and end_of_turn(first) == "</s>"
    assert len(first.calls) == 1
    assert first.calls[0]["messages"] == [{"role": "user", "content": templates._USER},
                                          {"role": "assistant", "content": templates._REPLY}]
    assert end_of_turn(JinjaTokenizer(template, "<|end|>")) == "<|end|>"  # another EOS: read again
    assert end_of_turn(JinjaTokenizer(template + " ", "</s>")) == "</s>"
    assert set(no_eot_cache) == {(template, "</s>"), (template, "<|end|>"), (template + " ", "</s>")}


def test_a_tokenizer_without_a_template_is_cached_under_the_empty_text(no_eot_cache):
    tokenizer = JinjaTokenizer(None)
    no_eot_cache[("", "</s>")] = "<cached>"
    assert end_of_turn(tokenizer) == "<cached>" and tokenizer.calls == []


def test_the_generation_header_is_what_the_prompt_gains_for_the_reply(tok):
    tok.chat_template = BUILTINS["chatml"].read_text()
    assert generation_header(tok) == "<|im_start|>assistant\n"
    tok.chat_template = BUILTINS["llama3"].read_text()
    assert generation_header(tok) == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_the_generation_header_renders_the_one_prompt_with_and_without_it():
    tokenizer = JinjaTokenizer("{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
                               "{% if add_generation_prompt %}[reply]{% endif %}")
    assert generation_header(tokenizer) == "[reply]"
    assert [call["add_generation_prompt"] for call in tokenizer.calls] == [True, False]
    assert all(call["messages"] == [{"role": "user", "content": templates._USER}] for call in tokenizer.calls)


def test_the_end_of_turn_takes_one_token_when_it_is_in_the_vocabulary(tok):
    assert end_of_turn_tokens(tok, "<|im_end|>") == 1
    assert end_of_turn_tokens(tok, "<|eot_id|>") == len(tok("<|eot_id|>", add_special_tokens=False)["input_ids"]) > 1


# ---------------------------------------------------------------------------------------------- tool support


def test_tool_support_is_read_off_the_templates_source():
    assert supports_tools(SimpleNamespace(chat_template=BUILTINS["hermes"].read_text()))
    assert not supports_tools(SimpleNamespace(chat_template=BUILTINS["chatml"].read_text()))
    assert not supports_tools(SimpleNamespace(chat_template=None))
    assert supports_tools(SimpleNamespace(chat_template="{{ m.tool_calls }}"))
    assert supports_tool_schemas(SimpleNamespace(chat_template=BUILTINS["hermes"].read_text()))
    assert not supports_tool_schemas(SimpleNamespace(chat_template=BUILTINS["chatml"].read_text()))


def with_tools_file(tmp_path, name="d.jsonl"):
    return DatasetSpec(path=str(write_jsonl(tmp_path / name, [{"text": "x"}, {"text": "y", "tools": TOOLS}])))


def test_a_builtin_template_without_tool_schemas_is_a_problem_when_a_row_offers_tools(tmp_path):
    spec = with_tools_file(tmp_path)
    problem = dropped_tools_problem(DataSection(datasets=[spec], template="chatml"))
    assert problem == (
        f"[data] template: 'chatml' does not render tool schemas, but {spec.path}:2 offers tools — they would be "
        'dropped from every prompt; use template = "hermes" (ChatML with <tool_call> blocks) or a template using `tools`'
    )


def test_a_template_file_without_tool_schemas_is_judged_from_its_source(tmp_path):
    spec = with_tools_file(tmp_path)
    plain = tmp_path / "plain.jinja"
    plain.write_text(BUILTINS["chatml"].read_text(encoding="utf-8"), encoding="utf-8")
    assert dropped_tools_problem(DataSection(datasets=[spec], template=str(plain))).startswith(
        f"[data] template: {str(plain)!r} does not render tool schemas, but {spec.path}:2 offers tools"
    )
    schemas = tmp_path / "schemas.jinja"
    schemas.write_text("{{ tools }}", encoding="utf-8")
    assert dropped_tools_problem(DataSection(datasets=[spec], template=str(schemas))) is None


@pytest.mark.parametrize("template", ["auto", "hermes", "missing.jinja"])
def test_auto_a_template_with_schemas_or_a_missing_file_are_no_tools_problem(tmp_path, template, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "auto").write_text("{{ messages }}", encoding="utf-8")  # "auto" is never read as a file
    assert dropped_tools_problem(DataSection(datasets=[with_tools_file(tmp_path)], template=template)) is None


def test_rows_without_tools_are_no_tools_problem(tmp_path):
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "tools": []}])))
    assert dropped_tools_problem(DataSection(datasets=[spec], template="chatml")) is None


@pytest.mark.parametrize("empty", [None, "", "[]", []])
def test_an_empty_tools_value_is_no_tools(tmp_path, empty):
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "tools": empty}, {"tools": "t"}])))
    assert first_row_with_tools(DataSection(datasets=[spec])) == f"{spec.path}:2"


def test_the_tools_column_is_the_mapped_one(tmp_path):
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "d.jsonl", [{"tools": TOOLS}, {"functions": TOOLS}])),
                       fields={"tools": "functions"})
    assert first_row_with_tools(DataSection(datasets=[spec])) == f"{spec.path}:2"


def test_files_of_other_suffixes_and_directories_are_not_searched_for_tools(tmp_path):
    (tmp_path / "rows.txt").write_text('{"tools": "t"}\n', encoding="utf-8")
    (tmp_path / "dir.jsonl").mkdir()
    specs = [DatasetSpec(path=str(tmp_path / "rows.txt")), DatasetSpec(path=str(tmp_path / "dir.jsonl"))]
    assert first_row_with_tools(DataSection(datasets=specs)) is None


def test_the_search_stops_after_limit_rows_past_the_first(tmp_path):
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}] * 3 + [{"tools": "t"}])))
    assert first_row_with_tools(DataSection(datasets=[spec]), limit=2) is None
    assert first_row_with_tools(DataSection(datasets=[spec]), limit=3) == f"{spec.path}:4"


def test_bad_rows_are_skipped_while_searching_for_tools(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": \n{"tools": "t"}\n', encoding="utf-8")
    assert first_row_with_tools(DataSection(datasets=[DatasetSpec(path=str(path))])) == f"{path}:2"


# ---------------------------------------------------------------------------------------------- fitting messages


CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}


def test_a_template_with_tool_support_gets_the_messages_unchanged():
    messages = [{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]
    assert fit_messages(SimpleNamespace(chat_template="{{ tool_calls }}"), messages) is messages


def test_plain_role_and_content_messages_are_unchanged():
    assert fit_messages(SimpleNamespace(chat_template="{{ messages }}"), CHAT) is CHAT


def test_calls_alone_become_the_reply_and_the_schemas_stay_with_the_conversation():
    messages = ToolChat([{"role": "user", "content": "Oslo?"},
                         {"role": "assistant", "content": "", "tool_calls": [CALL]}], TOOLS)
    fitted = fit_messages(SimpleNamespace(chat_template=None), messages)
    assert list(fitted) == [{"role": "user", "content": "Oslo?"},
                            {"role": "assistant", "content": call_text(CALL["function"])}]
    assert isinstance(fitted, ToolChat) and fitted.tools == TOOLS


def test_a_message_with_extra_keys_is_reduced_to_role_and_content():
    messages = [{"role": "user", "content": "Oslo?"}, {"role": "tool", "content": "sunny", "name": "weather"}]
    fitted = fit_messages(SimpleNamespace(chat_template=None), messages)
    assert fitted == [{"role": "user", "content": "Oslo?"}, {"role": "tool", "content": "sunny"}]
    assert type(fitted) is list


def test_empty_tool_calls_add_nothing_to_the_text():
    messages = [{"role": "assistant", "content": "done", "tool_calls": None, "x": 1}]
    assert fit_messages(SimpleNamespace(chat_template=None), messages) == [{"role": "assistant", "content": "done"}]


def test_a_replys_text_comes_first_then_each_call_on_its_own_line():
    messages = [{"role": "assistant", "content": "Checking.", "tool_calls": [CALL]}]
    assert fit_messages(SimpleNamespace(chat_template=None), messages) == [
        {"role": "assistant", "content": "Checking.\n" + call_text(CALL["function"])}]
