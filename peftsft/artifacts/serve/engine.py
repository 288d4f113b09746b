"""The serving engine: requests are checked, queued, and generated one at a time on the shared base.

All adapters live on one base model and peft switches them globally (`set_adapter`), so two generations at
once could mix adapters; one worker thread therefore takes jobs from a FIFO queue and generates them in turn.
A reader that goes away (`Generation.cancel()`, or leaving the iteration) stops its job at the next token, or
before it starts if it is still queued, so the slot is freed at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteriaList, TextStreamer

from peftsft.artifacts.serve.adapters import BASE, ServedModel, load_models
from peftsft.artifacts.serve.stops import StopTrimmer
from peftsft.data.tools import call_text
from peftsft.generation import Sampling, chat_inputs, context_length, inference_mode

log = logging.getLogger("peftsft.serve")
_END = object()


class ServeError(Exception):
    """A request the engine refuses; the HTTP app answers it as OpenAI does: status + error JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) | "length" (max_tokens) | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Stats:
    """Counters of finished jobs (never their contents)."""

    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    completion_tokens: int = 0


class Generation:
    """One reply as it is generated: iterate it (or `async for` when made by `astream`) for text pieces;
    `result` holds the Completion once the pieces end; `cancel()` stops it."""

    def __init__(self, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None):
        self.prompt_tokens = prompt_tokens
        self.result: Completion | None = None
        self.halt = threading.Event()  # set by cancel() or a stop string: generation ends at the next token
        self.cancelled = False
        self._loop = loop
        self._queue: Any = asyncio.Queue() if loop else queue.Queue()
        self._pieces: list[str] = []  # what was handed out, for `result.text`

    def cancel(self) -> None:
        if self.result is None:
            self.cancelled = True
            self.halt.set()

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise TypeError("this Generation was made by Engine.astream: use `async for`")
        try:
            while (item := self._queue.get()) is not _END:
                yield _piece(item)
        finally:
            self.cancel()  # a no-op when finished; else the reader left early

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while (item := await self._queue.get()) is not _END:
                yield _piece(item)
        finally:
            self.cancel()

    # the worker thread's side
    def _text(self, piece: str) -> None:
        self._pieces.append(piece)
        self._emit(piece)

    def _emit(self, item: Any) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading any more
            self.cancel()

    def _finish(self, result: Completion) -> None:
        self.result = result
        self._emit(_END)


def _piece(item: Any) -> str:
    if isinstance(item, BaseException):
        raise item
    return item


@dataclass
class _Job:
    served: ServedModel
    inputs: Any
    sampling: Sampling
    stops: list[str]
    seed: int | None
    generation: Generation
    opening: str = ""  # text the reply was made to start with (a forced tool call's opening): part of its text
    stop_hit: bool = field(default=False)


class Engine:
    """Answers chat requests for every served model id; see the package docstring for the API."""

    def __init__(self, model, served: dict[str, ServedModel], default_max_tokens: int = 512):
        self.model = model
        self.served = served
        self.default_max_tokens = default_max_tokens
        self.context = context_length(model, served[BASE].tokenizer)
        self.stats = Stats()
        self.busy = False
        self._jobs: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="peftsft-serve", daemon=True)
        self._worker.start()

    @classmethod
    def load(cls, run_dirs: list[str | Path], device: str = "auto", default_max_tokens: int = 512) -> Engine:
        from peftsft.models import pick_device

        model, served = load_models(run_dirs, pick_device(device))
        return cls(model, served, default_max_tokens)

    @property
    def model_ids(self) -> list[str]:
        return list(self.served)

    # ------------------------------------------------------------------------------------------ requests

    def stream(self, model: str, messages: list[dict], **options) -> Generation:
        """Queue a reply; iterate the returned Generation for its text. Options: max_tokens, temperature (0 =
        greedy; default 1.0 as OpenAI), top_p, stop (str or list), seed, tools (OpenAI function schemas, rendered
        by the run's chat template), call (the reply starts with a call: of this function, or of any with "").
        Raises ServeError for a bad request."""
        return self._submit(self._job(model, messages, None, **options))

    def astream(self, model: str, messages: list[dict], **options) -> Generation:
        """As `stream`, for `async for` inside a running event loop (no thread is blocked while waiting)."""
        return self._submit(self._job(model, messages, asyncio.get_running_loop(), **options))

    def complete(self, model: str, messages: list[dict], **options) -> Completion:
        """The whole reply at once (the same path as `stream`, so the same text)."""
        generation = self.stream(model, messages, **options)
        for _ in generation:
            pass
        return generation.result

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join()

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes of weights held: the base once (counted by storage, so shared tensors count once), and each
        adapter's own weights."""
        sizes: dict[str, int] = {}
        seen: set[int] = set()
        owner = {m.adapter: m.id for m in self.served.values() if m.adapter}
        for name, tensor in self.model.named_parameters():
            if tensor.untyped_storage().data_ptr() in seen:
                continue
            seen.add(tensor.untyped_storage().data_ptr())
            key = next((mid for adapter, mid in owner.items() if f".{adapter}." in f".{name}."), BASE)
            sizes[key] = sizes.get(key, 0) + tensor.untyped_storage().nbytes()
        return sizes

    def _job(self, model: str, messages: list[dict], loop, max_tokens: int | None = None,
             temperature: float = 1.0, top_p: float = 1.0, stop: str | list[str] | None = None,
             seed: int | None = None, tools: list[dict] | None = None, call: str | None = None) -> _Job:
        served = self.served.get(model)
        if served is None:
            raise ServeError(404, f"The model '{model}' does not exist; this server has: {', '.join(self.served)}",
                             param="model", code="model_not_found")
        _check_sampling(temperature, top_p)
        stops = _stop_list(stop)
        inputs = self._inputs(served, messages, tools)
        opening = call_opening(call)
        if opening:  # the reply is generated after the opening of the call, as if the model had written it
            inputs = _extended(inputs, served.tokenizer(opening, add_special_tokens=False)["input_ids"])
        prompt_tokens = inputs["input_ids"].shape[1]
        max_tokens = self._max_tokens(prompt_tokens, max_tokens)
        sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return _Job(served, inputs, sampling, stops, seed, Generation(prompt_tokens, loop), opening)

    def _inputs(self, served: ServedModel, messages: list[dict], tools: list[dict] | None = None):
        if not messages:
            raise ServeError(400, "messages: at least one message is required", param="messages")
        if served.system_prompt and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": served.system_prompt}, *messages]
        try:
            return chat_inputs(served.tokenizer, messages, self.model.device, tools)
        except Exception as exc:  # the template's own checks (roles must alternate, ...); their text, not ours
            raise ServeError(400, f"the chat template of '{served.id}' cannot render these messages: "
                                  f"{type(exc).__name__}: {exc}", param="messages") from None

    def _max_tokens(self, prompt_tokens: int, requested: int | None) -> int:
        room = self.context - prompt_tokens
        if room < 1:
            raise ServeError(400, f"This model's maximum context length is {self.context} tokens, but the messages "
                                  f"take {prompt_tokens} tokens. Please shorten them.",
                             param="messages", code="context_length_exceeded")
        if requested is None:
            return min(self.default_max_tokens, room)
        if not 1 <= requested <= self.context:
            raise ServeError(400, f"max_tokens must be between 1 and {self.context} (the context length); "
                                  f"got {requested}", param="max_tokens", code="invalid_value")
        if requested > room:
            raise ServeError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                  f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, "
                                  f"{requested} in the completion). Please reduce max_tokens or the messages.",
                             param="max_tokens", code="context_length_exceeded")
        return requested

    def _submit(self, job: _Job) -> Generation:
        self._jobs.put(job)
        return job.generation

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            generation = job.generation
            if generation.halt.is_set():  # cancelled while queued: never started
                self.stats.cancelled += 1
                generation._finish(Completion("", "cancelled", generation.prompt_tokens, 0))
                continue
            self.busy = True
            try:
                result = self._generate(job)
                self.stats.cancelled += result.finish_reason == "cancelled"
                self.stats.completed += result.finish_reason != "cancelled"
                self.stats.completion_tokens += result.completion_tokens
                generation._finish(result)
            except Exception as exc:  # reported to the reader; the server goes on (the type only: no contents)
                log.error("generation failed: %s", type(exc).__name__)
                self.stats.failed += 1
                generation._emit(exc)
                generation._finish(Completion("", "error", generation.prompt_tokens, 0))
            finally:
                self.busy = False

    def _generate(self, job: _Job) -> Completion:
        served, generation = job.served, job.generation
        trimmer = StopTrimmer(job.stops)

        def show(text: str) -> None:
            shown = trimmer.feed(text)
            if shown:
                generation._text(shown)
            if trimmer.hit:
                job.stop_hit = True
                generation.halt.set()

        kwargs = job.sampling.generate_kwargs(served.tokenizer) | {"eos_token_id": list(served.stop_ids)}
        if job.opening:
            generation._text(job.opening)
        with self._selected(served), inference_mode(self.model):
            if job.seed is not None:
                torch.manual_seed(job.seed)
            output = self.model.generate(
                **job.inputs, **kwargs, streamer=_PieceStreamer(served.tokenizer, show),
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(generation.halt)]),
            )
        tail = trimmer.flush()
        if tail:
            generation._text(tail)
        new_tokens = output[0, generation.prompt_tokens:].tolist()
        return Completion("".join(generation._pieces), self._finish_reason(job, new_tokens),
                          generation.prompt_tokens, len(new_tokens))

    @staticmethod
    def _finish_reason(job: _Job, new_tokens: list[int]) -> str:
        if job.stop_hit or (new_tokens and new_tokens[-1] in job.served.stop_ids):
            return "stop"
        if job.generation.cancelled:
            return "cancelled"
        return "length" if len(new_tokens) >= job.sampling.max_new_tokens else "stop"

    @contextmanager
    def _selected(self, served: ServedModel):
        """The served model's adapter switched on (all of them off for `base`) while generating."""
        if served.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(served.adapter)
            yield


class _StopWhenSet:
    """A stopping criterion that ends generation once `event` is set (the reader left, or a stop string)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _PieceStreamer(TextStreamer):
    """transformers' incremental decoding (whole words, no special tokens), handing each piece to `on_text`."""

    def __init__(self, tokenizer, on_text):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def call_opening(call: str | None) -> str:
    """The start of a reply that calls `call` ("" : any function): a `<tool_call>` block as data.tools writes one,
    up to where the model takes over (the arguments, or the whole call). None: no call forced."""
    if call is None:
        return ""
    block = call_text({"name": call or "NAME", "arguments": {}})
    return block[: block.index('"arguments": ') + len('"arguments": ')] if call else block[: block.index("{")]


def _extended(inputs, ids: list[int]):
    """The tokenized prompt with `ids` appended (and attended to)."""
    extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device)
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    if "attention_mask" in inputs:
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    return out


def _check_sampling(temperature: float, top_p: float) -> None:
    if not 0 <= temperature <= 2:
        raise ServeError(400, f"temperature must be between 0 and 2; got {temperature}", param="temperature")
    if not 0 < top_p <= 1:
        raise ServeError(400, f"top_p must be greater than 0 and at most 1; got {top_p}", param="top_p")


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ServeError(400, "stop: up to 4 non-empty strings", param="stop")
    return stops
