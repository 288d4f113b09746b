"""Answer chat prompts with a model, using its tokenizer's chat template: one reply, a stream, or a batch.

Every entry point takes the tool schemas to offer (`tools=`, default: those a `data.tools.ToolChat` carries);
`reply_message(text)` turns a reply into an OpenAI assistant message with `tool_calls` (for chat, generate, serve).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from peftsft.data.templates import render
from peftsft.data.tools import ParsedReply, parse_tool_calls, tools_of

__all__ = [
    "ParsedReply", "Sampling", "answer", "answer_batch", "answer_prompts", "chat_inputs", "context_length",
    "inference_mode", "parse_tool_calls", "reply_message", "stream_answer",
]
DEFAULT_CONTEXT = 2048  # when neither the model config nor the tokenizer states one


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0

    def generate_kwargs(self, tokenizer) -> dict:
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
        )
        if self.temperature <= 0:
            return kwargs | dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs | dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


def chat_inputs(tokenizer, messages: list[dict], device, tools: list[dict] | None = None) -> dict:
    """Token ids of a conversation rendered with the chat template (and its tools), ending in the assistant's turn."""
    return tokenizer.apply_chat_template(
        list(messages), tools=tools or tools_of(messages), add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    ).to(device)


def context_length(model, tokenizer) -> int:
    """Tokens the model attends over: its config's position limit, else the tokenizer's, else a default."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    known = [n for n in limits if isinstance(n, int) and 0 < n < 10**7]  # tokenizers say 1e30 when they do not know
    return min(known) if known else DEFAULT_CONTEXT


def reply_message(text: str) -> dict:
    """A model's reply as an OpenAI assistant message: `<tool_call>` blocks parsed into `tool_calls`."""
    return parse_tool_calls(text).message()


@contextmanager
def inference_mode(model):
    """eval() and no_grad for the block, the output head fed contiguous inputs; all restored afterwards."""
    was_training = model.training
    model.eval()
    hook = _contiguous_head_inputs(model)
    try:
        with torch.no_grad():
            yield model
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)


def _contiguous_head_inputs(model):
    """A hook making the output head's input contiguous (None for a model without one).

    Scoring and generation ask for the logits of the last positions only (`logits_to_keep`), so the head gets a slice
    of the hidden states, which is not contiguous. torch's matmul folds a batched input into one product only when
    that needs no copy of the input or when the weight requires grad; for a frozen weight (the base under adapters)
    it takes a batched product that copies the weight once per row: a batch of answers held that many copies of the
    vocabulary matrix at once (docs/memory-plan.md, "The whole run"). A contiguous slice costs a copy of a few rows."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    return head.register_forward_pre_hook(
        lambda module, args: tuple(arg.contiguous() if torch.is_tensor(arg) else arg for arg in args))


def answer(
    model, tokenizer, messages: list[dict], max_new_tokens: int = 64, sampling: Sampling | None = None,
    tools: list[dict] | None = None,
) -> str:
    """Reply to a conversation (greedy unless `sampling` says otherwise), without special tokens."""
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    inputs = chat_inputs(tokenizer, messages, model.device, tools)
    with inference_mode(model):
        output = model.generate(**inputs, **sampling.generate_kwargs(tokenizer))
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def answer_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    return [answer(model, tokenizer, [{"role": "user", "content": p}], max_new_tokens) for p in prompts]


def answer_batch(
    model, tokenizer, conversations: list[list[dict[str, str]]], sampling: Sampling, batch_size: int = 8
) -> list[str]:
    """Replies to many conversations, `batch_size` at a time (left-padded so every reply starts aligned)."""
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        replies += _answer_padded(model, tokenizer, conversations[start : start + batch_size], sampling)
    return replies


def _answer_padded(model, tokenizer, conversations, sampling: Sampling) -> list[str]:
    # rendered one by one: apply_chat_template takes one `tools` list per batch, and each row has its own
    texts = [render(tokenizer, messages, add_generation_prompt=True) for messages in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    finally:
        tokenizer.padding_side = side
    with inference_mode(model):
        output = model.generate(**inputs, **sampling.generate_kwargs(tokenizer))
    new = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


class _StopWhenSet:
    """A stopping criterion that ends generation once `event` is set (Ctrl-C, or the reader went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(
    model, tokenizer, messages: list[dict], sampling: Sampling, tools: list[dict] | None = None
) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated (generation runs in a worker thread)."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    inputs = chat_inputs(tokenizer, messages, model.device, tools)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop, failure = threading.Event(), []

    def work() -> None:
        try:
            with inference_mode(model):
                model.generate(
                    **inputs, **sampling.generate_kwargs(tokenizer), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                )
        except Exception as exc:  # handed to the reading thread, which re-raises it
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        yield from (text for text in streamer if text)
    finally:
        stop.set()  # the reader stopped early (Ctrl-C, closed pipe): end generation at the next token
        worker.join()
    if failure:
        raise failure[0]
