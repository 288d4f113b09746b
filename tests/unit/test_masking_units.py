"""The loss mask on its own: each assistant reply's character span (through its end of turn) found by rendering
prefixes, templates that cannot be masked, what a row renders to under each masking, the token ids and labels of
conversations and plain text (EOS, truncation, offsets), and token offsets read from the tokenizer's encoding."""

from __future__ import annotations

import numpy as np
import pytest
from jinja2 import TemplateError

from peftsft.data import masking
from peftsft.data.formats import RowError
from peftsft.data.masking import (
    IGNORE,
    Encoded,
    Rendered,
    TokenOffsets,
    assistant_spans,
    encode,
    encode_rendered,
    rendered,
    rendered_rows,
)
from peftsft.data.templates import BUILTINS
from peftsft.data.tools import ToolChat, call_text
from tests.unit.test_data import tok  # noqa: F401 - fixture: the template put back

TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
             {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
CHATML_TEXT = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
               "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")
# SmolLM2's ids of CHATML_TEXT: <|im_start|>=1, <|im_end|>=2, "\n"=198; "Y" "o" = 73 95, "A" = 49
IDS = [1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198, 73, 95, 2, 198,
       1, 4093, 198, 65, 2, 198, 1, 520, 9531, 198, 49, 2, 198]
M = IGNORE
# No end of turn: only a newline after each reply (the template's generation prompt is "assistant: ")
NO_EOT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture
def chatml(tok):
    tok.chat_template = BUILTINS["chatml"].read_text(encoding="utf-8")
    return tok


class Recording:
    """The real tokenizer, with the keyword arguments of each batch call recorded (and its EOS replaceable)."""

    def __init__(self, tokenizer, **attributes):
        self.tokenizer, self.calls = tokenizer, []
        self.eos_token, self.eos_token_id = tokenizer.eos_token, tokenizer.eos_token_id
        self.__dict__.update(attributes)

    def __call__(self, texts, **kwargs):
        self.calls.append((list(texts), kwargs))
        return self.tokenizer(texts, **kwargs)


class RecordingBackend:
    """A tokenizer's `tokenizers` backend, its encode_batch calls recorded."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.truncation, self.padding = backend.truncation, backend.padding
        self.encode_special_tokens = backend.encode_special_tokens

    def encode_batch(self, texts, **kwargs):
        self.calls.append((list(texts), kwargs))
        return self.backend.encode_batch(texts, **kwargs)


# ---------------------------------------------------------------------------------------------- reply spans


def test_each_reply_is_spanned_through_its_end_of_turn_but_not_the_newline_after(chatml):
    text, spans = assistant_spans(chatml, TWO_TURNS)
    assert text == CHATML_TEXT
    assert spans == [(52, 64), (116, 127)]
    assert [text[a:b] for a, b in spans] == ["Yo<|im_end|>", "A<|im_end|>"]


def test_a_conversation_opening_with_a_reply_spans_it_from_the_start(chatml):
    text, spans = assistant_spans(chatml, [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}])
    assert spans == [(0, 34)] and text[:34] == "<|im_start|>assistant\nHi<|im_end|>"


def test_without_an_end_of_turn_a_reply_spans_to_the_end_of_its_turn(tok):
    tok.chat_template = NO_EOT
    text, spans = assistant_spans(tok, TWO_TURNS)
    assert text == "user: Hi\nassistant: Yo\nuser: Q\nassistant: A\n"
    assert [text[a:b] for a, b in spans] == ["Yo\n", "A\n"]


def test_the_last_end_of_turn_inside_a_reply_closes_it(chatml):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a<|im_end|>b"}]
    text, spans = assistant_spans(chatml, messages)
    assert [text[a:b] for a, b in spans] == ["a<|im_end|>b<|im_end|>"]


def test_tool_schemas_are_rendered_into_every_prefix(tok):
    tok.chat_template = BUILTINS["hermes"].read_text(encoding="utf-8")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    text, spans = assistant_spans(tok, ToolChat(TWO_TURNS, tools))
    assert '"name": "f"' in text
    assert [text[a:b] for a, b in spans] == ["Yo<|im_end|>", "A<|im_end|>"]


def test_a_template_that_rewrites_earlier_turns_cannot_be_masked(tok):
    tok.chat_template = "{{ messages | length }}" + BUILTINS["chatml"].read_text(encoding="utf-8")
    with pytest.raises(RowError) as info:
        assistant_spans(tok, TWO_TURNS)
    assert str(info.value) == "the chat template does not render this conversation prefix-stably; cannot mask it"


def test_a_generation_prompt_that_is_not_how_the_reply_starts_cannot_be_masked(tok):
    tok.chat_template = NO_EOT.replace("assistant: {% endif %}", "bot> {% endif %}")
    with pytest.raises(RowError, match="prefix-stably"):
        assistant_spans(tok, TWO_TURNS)


# ---------------------------------------------------------------------------------------------- what is tokenized


def test_plain_text_is_rendered_as_itself_with_every_token_learned(chatml):
    assert rendered(chatml, "just text", "last_turn") == Rendered("just text", None)


@pytest.mark.parametrize("masking, learned", [("assistant", ["Yo<|im_end|>", "A<|im_end|>"]),
                                              ("all", ["Yo<|im_end|>", "A<|im_end|>"]),
                                              ("last_turn", ["A<|im_end|>"])])
def test_a_conversation_renders_with_the_spans_its_masking_learns(chatml, masking, learned):
    row = rendered(chatml, TWO_TURNS, masking)
    assert row.text == CHATML_TEXT
    assert [row.text[a:b] for a, b in row.spans] == learned


def test_tool_calls_are_written_into_the_reply_for_a_template_without_tools(chatml):
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    messages = [{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    row = rendered(chatml, messages, "assistant")
    assert [row.text[a:b] for a, b in row.spans] == [call_text(call["function"]) + "<|im_end|>"]


def test_many_rows_render_as_each_alone_in_one_call_per_kind_of_render(chatml, monkeypatch):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    rows = [TWO_TURNS, "plain text", [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}],
            TWO_TURNS[:2], ToolChat(TWO_TURNS, tools), TWO_TURNS + TWO_TURNS]
    alone = [rendered(chatml, row, "assistant") for row in rows]
    calls = []
    real = type(chatml).apply_chat_template

    def counting(self, conversation, **kwargs):
        batched = isinstance(conversation[0], list)
        calls.append((len(conversation) if batched else 1, kwargs.get("add_generation_prompt")))
        return real(self, conversation, **kwargs)

    monkeypatch.setattr(type(chatml), "apply_chat_template", counting)
    for masking in ("assistant", "last_turn"):
        assert rendered_rows(chatml, rows, masking) == [rendered(chatml, row, masking) for row in rows]
    calls.clear()
    assert rendered_rows(chatml, rows, "assistant") == alone
    # the row with tools renders alone, first (its text, 2 prompts, 1 turn through a reply not last); then the 4 plain
    # conversations: their texts, the prompts before the 7 replies not opening one, the turns through the 5 not last
    assert calls == [(1, False), (1, True), (1, True), (1, False), (4, False), (7, True), (5, False)]


def test_a_row_the_template_refuses_comes_back_as_its_error_and_the_others_render(tok, monkeypatch):
    tok.chat_template = ("{% if messages[0]['content'] == 'bad' %}{{ raise_exception('no bad rows') }}{% endif %}"
                         "{% if messages[0]['content'] == 'unstable' %}{{ messages | length }}{% endif %}"
                         + BUILTINS["chatml"].read_text(encoding="utf-8"))
    bad, unstable = ([{"role": "user", "content": text}, {"role": "assistant", "content": "A"}]
                     for text in ("bad", "unstable"))
    out = rendered_rows(tok, [TWO_TURNS, bad, unstable, TWO_TURNS], "assistant")
    assert isinstance(out[1], TemplateError) and str(out[1]) == "no bad rows"
    assert isinstance(out[2], RowError) and "prefix-stably" in str(out[2])
    assert out[0] == out[3] == rendered(tok, TWO_TURNS, "assistant")
    monkeypatch.setattr(masking, "_rendered_or_error", None)  # a row that renders is not rendered again alone
    out = rendered_rows(tok, [unstable, TWO_TURNS], "assistant")
    assert isinstance(out[0], RowError) and out[1] == rendered(tok, TWO_TURNS, "assistant")


# ---------------------------------------------------------------------------------------------- ids and labels


def test_a_conversations_labels_are_its_replies_tokens_through_the_end_of_turn(chatml):
    sample = encode(chatml, TWO_TURNS, "assistant", 64)
    assert sample == Encoded(IDS, [M] * 10 + [73, 95, 2] + [M] * 11 + [49, 2, M], False, CHATML_TEXT,
                             sample.offsets)
    assert type(sample.input_ids) is list and type(sample.labels) is list
    assert sample.offsets[:3] == [(0, 12), (12, 16), (16, 17)] and sample.offsets[-1] == (127, 128)
    assert all(type(x) is int for pair in sample.offsets for x in pair) and len(sample.offsets) == len(IDS)


def test_the_last_turn_masking_learns_only_the_final_reply(chatml):
    assert encode(chatml, TWO_TURNS, "last_turn", 64).labels == [M] * 24 + [49, 2, M]


def test_all_masking_learns_every_token_of_the_conversation(chatml):
    sample = encode(chatml, TWO_TURNS, "all", 64)
    assert sample.input_ids == IDS and sample.labels == IDS


def test_a_conversation_longer_than_max_length_is_cut_from_the_end(chatml):
    sample = encode(chatml, TWO_TURNS, "assistant", 12)
    assert sample.input_ids == IDS[:12] and sample.labels == [M] * 10 + [73, 95] and sample.truncated
    assert sample.offsets == [(0, 12), (12, 16), (16, 17), (17, 19), (19, 29), (29, 30), (30, 42), (42, 45),
                              (45, 51), (51, 52), (52, 53), (53, 54)]
    assert sample.text == CHATML_TEXT  # the whole text: the offsets point into it
    exact = encode(chatml, TWO_TURNS, "all", len(IDS))
    assert not exact.truncated and exact.input_ids == IDS


def test_rows_of_a_batch_come_back_in_order_as_int32_arrays(chatml):
    rows = [Rendered("plain one", None), rendered(chatml, TWO_TURNS, "assistant"), Rendered("two", None)]
    recording = Recording(chatml)
    out = encode_rendered(recording, rows, "assistant", 64)
    assert [o.text for o in out] == ["plain one<|im_end|>", CHATML_TEXT, "two<|im_end|>"]
    assert out[1].input_ids.tolist() == IDS and out[1].labels.tolist()[10:13] == [73, 95, 2]
    assert all(o.input_ids.dtype == np.int32 and o.labels.dtype == np.int32 for o in out)
    assert out[0].input_ids.tolist() == chatml("plain one")["input_ids"] + [2]
    assert out[0].labels.tolist() == out[0].input_ids.tolist() and not out[0].truncated
    # one call per kind: conversations without special tokens (the template wrote them), plain text with its own
    assert recording.calls == [
        ([CHATML_TEXT], {"add_special_tokens": False, "return_attention_mask": False, "return_token_type_ids": False}),
        (["plain one", "two"], {"add_special_tokens": True, "return_offsets_mapping": True,
                                "return_attention_mask": False, "return_token_type_ids": False}),
    ]


def test_a_batch_of_one_kind_tokenizes_once(chatml):
    recording = Recording(chatml)
    assert encode_rendered(recording, [], "assistant", 8) == []
    [out] = encode_rendered(recording, [Rendered("one", None)], "assistant", 8)
    assert len(recording.calls) == 1 and out.offsets.tolist() == [[0, 3], [3, 13]]


def test_plain_text_cut_by_max_length_keeps_its_first_tokens_and_offsets(chatml):
    ids = chatml("plain text here")["input_ids"]
    [out] = encode_rendered(chatml, [Rendered("plain text here", None)], "all", 2)
    assert out.input_ids.tolist() == ids[:2] == out.labels.tolist() and out.truncated
    assert out.offsets.tolist() == [[0, 5], [5, 10]] and out.text == "plain text here<|im_end|>"
    out.labels[0] = 0
    assert out.input_ids[0] == ids[0]  # labels are their own array


def test_plain_text_with_a_tokenizer_without_eos_gets_none(chatml):
    recording = Recording(chatml, eos_token=None, eos_token_id=None)
    [out] = encode_rendered(recording, [Rendered("plain text", None)], "all", 8)
    assert out.text == "plain text" and out.input_ids.tolist() == chatml("plain text")["input_ids"]


def test_empty_plain_text_is_just_the_eos(chatml):
    [out] = encode_rendered(chatml, [Rendered("", None)], "all", 8)
    assert out.input_ids.tolist() == [2] == out.labels.tolist() and out.offsets.tolist() == [[0, 10]]
    assert out.text == "<|im_end|>"


# ---------------------------------------------------------------------------------------------- token offsets


class Encoding:
    """A tokenizer encoding's `token_to_chars`: token i spans SPANS[i]; None for a token added by the post-processor."""

    SPANS = [None, (0, 2), (2, 5), (5, 5), (6, 9)]

    def __init__(self):
        self.asked = []

    def token_to_chars(self, index):
        self.asked.append(index)
        return self.SPANS[index]


def test_token_offsets_read_each_span_and_count_added_tokens_as_empty():
    offsets = TokenOffsets(Encoding(), 5)
    assert len(offsets) == 5
    assert offsets.tolist() == [(0, 0), (0, 2), (2, 5), (5, 5), (6, 9)]
    assert offsets[-1] == (6, 9) and offsets[-5] == (0, 0)
    assert offsets.encoding.asked[-2:] == [4, 0]  # negative indexes count from the end


@pytest.mark.parametrize("index", [5, -6, 100])
def test_token_offsets_past_either_end_are_an_index_error(index):
    encoding = Encoding()
    with pytest.raises(IndexError) as info:
        TokenOffsets(encoding, 5)[index]
    assert info.value.args == (index,) and encoding.asked == []


def test_token_offsets_stop_at_their_length_not_the_encodings():
    offsets = TokenOffsets(Encoding(), 3)
    assert offsets.tolist() == [(0, 0), (0, 2), (2, 5)]
    with pytest.raises(IndexError):
        offsets[3]


@pytest.mark.parametrize("position, index", [(0, 0), (1, 2), (2, 2), (3, 3), (5, 3), (6, 4), (9, 5), (50, 5)])
def test_the_first_token_starting_at_a_position_is_found_by_bisection(position, index):
    assert TokenOffsets(Encoding(), 5).first_starting_at(position) == index


def test_a_span_learns_the_tokens_starting_inside_it():
    from peftsft.data.masking import _label_chat

    ids = np.array([10, 11, 12, 13, 14], dtype=np.int32)
    row = Rendered("ab cd xyz", [(1, 6)])  # tokens 2 and 3 start at 2 and 5
    out = _label_chat(row, ids, TokenOffsets(Encoding(), 5), "assistant", 4)
    assert out.labels.tolist() == [M, M, 12, 13] and out.input_ids.tolist() == [10, 11, 12, 13]
    assert out.truncated and len(out.offsets) == 4 and out.text == "ab cd xyz"
    out = _label_chat(row, ids, TokenOffsets(Encoding(), 5), "all", 5)
    assert out.labels.tolist() == [10, 11, 12, 13, 14] and not out.truncated and len(out.offsets) == 5
    out.labels[0] = 0
    assert ids[0] == 10  # labels are a copy


def test_spans_that_cover_no_token_start_learn_nothing():
    from peftsft.data.masking import _label_chat

    out = _label_chat(Rendered("x", [(3, 4), (9, 9)]), np.arange(5, dtype=np.int32), TokenOffsets(Encoding(), 5),
                      "assistant", 8)
    assert out.labels.tolist() == [M] * 5 and out.labels.dtype == np.int32


def test_encoded_defaults_to_no_text_and_no_offsets():
    sample = Encoded([1], [1], False)
    assert sample.text == "" and sample.offsets == [] and Encoded([1], [1], False).offsets is not sample.offsets


def test_conversations_encode_alike_from_the_tokenizers_backend_and_through_its_call(chatml):
    rows = [rendered(chatml, TWO_TURNS, "assistant"), rendered(chatml, TWO_TURNS[:2], "last_turn")]
    through_call = encode_rendered(Recording(chatml), rows, "assistant", 64)  # the fake has no backend
    backend = RecordingBackend(chatml.backend_tokenizer)
    recording = Recording(chatml, backend_tokenizer=backend, split_special_tokens=False)
    direct = encode_rendered(recording, rows, "assistant", 64)
    assert recording.calls == []  # straight from the backend, without the special tokens the template wrote
    assert backend.calls == [([row.text for row in rows], {"add_special_tokens": False})]
    assert [(o.input_ids.tolist(), o.labels.tolist()) for o in direct] == [
        (o.input_ids.tolist(), o.labels.tolist()) for o in through_call]
    assert direct[0].input_ids.tolist() == IDS and direct[0].offsets.tolist() == through_call[0].offsets.tolist()
    chatml.backend_tokenizer.enable_truncation(5)  # a backend some other call left truncating: the call resets it
    try:
        assert encode_rendered(chatml, rows, "assistant", 64)[0].input_ids.tolist() == IDS
    finally:
        chatml.backend_tokenizer.no_truncation()
    chatml.backend_tokenizer.encode_special_tokens = True  # left splitting "<|im_start|>" into text: reset too
    try:
        assert encode_rendered(chatml, rows, "assistant", 64)[0].input_ids.tolist() == IDS
    finally:
        chatml.backend_tokenizer.encode_special_tokens = False
