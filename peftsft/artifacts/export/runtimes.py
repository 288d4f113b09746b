"""What an exported artifact is checked *in*: transformers (model dirs; GGUF through its reader as a fallback) or
llama.cpp itself (GGUF, base + LoRA GGUF), through llama-cpp-python. Each gives the verifier the same four things:
tokenize rendered text, logits over a sequence, a greedy reply, the chat template it carries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from peftsft.core.errors import UserError


@torch.no_grad()
def greedy_reply(model, ids: list[int], stops: list[int], pad_id: int | None, new_tokens: int) -> torch.Tensor:
    inputs = torch.tensor([ids], device=model.device)
    out = model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=stops or None,
        pad_token_id=pad_id if pad_id is not None else (stops or [0])[0],
    )
    return out[0].cpu()


class TransformersRuntime:
    """A transformers model + tokenizer (a model dir, base + adapter, or a GGUF dequantized by its reader)."""

    def __init__(self, model, tokenizer, runtime: str = "transformers"):
        self.model, self.tokenizer, self.runtime = model.eval(), tokenizer, runtime

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def logits(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=sequence[None].to(self.model.device)).logits[0].float().cpu()

    def greedy(self, ids: list[int], stops: list[int], new_tokens: int) -> torch.Tensor:
        return greedy_reply(self.model, ids, stops, None, new_tokens)

    def close(self) -> None:
        del self.model


class LlamaCppRuntime:
    """A GGUF (and optionally a LoRA GGUF over it) loaded in llama.cpp, on the CPU, as users run it."""

    runtime = "llama.cpp"

    def __init__(self, path: Path, lora: Path | None = None, n_ctx: int = 512):
        from llama_cpp import Llama

        threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
        try:
            self.llm = Llama(
                model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx, n_batch=n_ctx,
                logits_all=True, n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, verbose=False,
            )  # fmt: skip
        except (ValueError, RuntimeError) as exc:  # "Failed to load model from file", "… LoRA adapter …"
            raise UserError(f"llama.cpp cannot load {path.name}{f' + {lora.name}' if lora else ''}: {exc}") from None

    @property
    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template")

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(self, sequence: torch.Tensor) -> torch.Tensor:
        ids = sequence.tolist()
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

    def greedy(self, ids: list[int], stops: list[int], new_tokens: int) -> torch.Tensor:
        tokens = list(ids)
        self.llm.reset()
        self.llm.eval(tokens)
        for _ in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            tokens.append(token)
            if token in stops:
                break
            self.llm.eval([token])
        return torch.tensor(tokens)

    def close(self) -> None:
        self.llm.close()


def llama_cpp_importable() -> bool:
    from peftsft.artifacts.export.gguf.quants import llama_cpp_importable as importable

    return importable()


def gguf_runtime(path: Path, n_ctx: int):
    """llama.cpp when llama-cpp-python is installed; transformers' GGUF reader (dequantized) otherwise."""
    if llama_cpp_importable():
        return LlamaCppRuntime(path, n_ctx=n_ctx)
    return load_gguf_file(path)


def load_gguf_file(path: Path) -> TransformersRuntime:
    """The GGUF through transformers' own GGUF loader (dequantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return TransformersRuntime(model, tokenizer, runtime="transformers (GGUF reader)")
