"""The speed levers: each one module — its rule (decide), its memory term, its patch — and this, their one door.

A run decides every lever once (`decide_levers`), from its recipe, device and model; everything downstream reads the
`Levers` it returns: the trainer's arguments (`trainer_arguments`, `sft_arguments`), `training` (the model's
dtypes set around building the trainer, then every lever's patch entered on one ExitStack while it trains, each
restored after) and the memory plan (`memory_plan`, summing the levers' terms). Nothing outside this package calls
a lever's rule or applies its patch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peftsft.core.config import Recipe
from peftsft.levers import attention, batching, checkpointing, dtypes, kernel_caches, loss_head, lora_kernel
from peftsft.levers import mlp_tiling, optimizer, precision
from peftsft.levers.decision import Levers
from peftsft.levers.memory import MemoryPlan, plan
from peftsft.levers.model_skeleton import skeleton
from peftsft.levers.situation import Situation

__all__ = ["Levers", "MemoryPlan", "Situation", "applied", "build_trainer", "decide_levers", "memory_plan",
           "precision_for", "prepare_process", "sft_arguments", "skeleton", "trainer_arguments", "training"]  # fmt: skip


def decide_levers(recipe: Recipe, device: str, model, longest_sample: int | None = None,
                  available_bytes: int | None = None) -> Levers:  # fmt: skip
    """Every lever's value for this run. `model` has its strategy applied (a meta-device skeleton when planning);
    `longest_sample` (tokens) and `available_bytes` size the memory plan behind automatic checkpointing."""
    import torch

    situation = Situation(recipe, device, model, longest_sample, available_bytes)
    chosen_precision = precision.decide(situation)
    chosen_attention = attention.decide(situation)
    levers = Levers(
        precision=chosen_precision,
        attention=chosen_attention,
        batching=batching.decide(situation, chosen_attention),
        optimizer=optimizer.decide(situation),
        lora_kernel=lora_kernel.decide(situation),
        loss_head=loss_head.decide(situation),
        adapter_dtype=dtypes.decide_adapter_dtype(situation, chosen_precision),
        base_dtype=dtypes.decide_base_dtype(situation, chosen_precision),
        threads=torch.get_num_threads(),
    )
    levers = checkpointing.decide(situation, levers)
    levers.mlp_tiling = mlp_tiling.decide(situation, levers.activation_checkpointing)
    return levers


def precision_for(recipe: Recipe, device: str) -> str:
    """The precision a run of `recipe` would train in on `device`, before any model exists (launch checks)."""
    return precision.decide(Situation(recipe, device, None))


def memory_plan(recipe: Recipe, device: str, model, levers: Levers, longest_sample: int | None = None,
                available_bytes: int | None = None) -> MemoryPlan:  # fmt: skip
    """The peak memory of a run with `levers` (see memory.py)."""
    return plan(Situation(recipe, device, model, longest_sample, available_bytes), levers)


def prepare_process() -> None:
    """Process-wide settings read once by the libraries (oneDNN's cache bounds): call before any command runs."""
    kernel_caches.prepare_process()


def trainer_arguments(levers: Levers) -> dict:
    """The TrainingArguments keys the levers set (every task)."""
    return {**precision.trainer_arguments(levers.precision), **optimizer.trainer_arguments(levers.optimizer),
            **batching.trainer_arguments(levers.batching), **checkpointing.trainer_arguments(levers)}  # fmt: skip


def sft_arguments(levers: Levers, max_length: int) -> dict:
    """SFTConfig's keys the levers set beyond `trainer_arguments`."""
    return batching.sft_arguments(levers.batching, max_length)


def build_trainer(levers: Levers, model, build):
    """build() → a trainer, the model's dtypes as the levers say: the frozen base before it is built, the adapters
    after (TRL casts adapters on a quantized base to bf16 while it builds)."""
    dtypes.prepare(model, levers.base_dtype)
    trainer = build()
    dtypes.settle(trainer.model, levers.adapter_dtype)
    return trainer


@contextlib.contextmanager
def training(levers: Levers, model, build) -> Iterator:
    """`with training(levers, model, build) as trainer:` — the trainer built as `build_trainer` does, and every
    lever's patch entered while the block trains and evaluates, restored afterwards (in reverse order)."""
    trainer = build_trainer(levers, model, build)
    with applied(levers, model):
        yield trainer


@contextlib.contextmanager
def applied(levers: Levers, model) -> Iterator[None]:
    """Every lever's patch while the block runs, restored afterwards (in reverse order)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(loss_head.patch(levers.loss_head, levers.fallbacks))
        stack.enter_context(dtypes.patch(model, levers.base_dtype, levers.precision))
        stack.enter_context(attention.patch(model, levers.attention))
        stack.enter_context(lora_kernel.patch(model, levers.lora_kernel, levers.fallbacks))
        stack.enter_context(mlp_tiling.patch(model, levers.mlp_tiling))  # over the fused MLP: entered after it
        yield
