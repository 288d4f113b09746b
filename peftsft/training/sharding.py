"""FSDP2 through accelerate and the Trainer, on GPU and CPU processes alike, and what a sharded model changes after
training: the adapter is gathered from the shards before the main process saves it, and forward passes (samples,
general check) run on every process, since each one gathers the layers from all the others."""

from __future__ import annotations

import contextlib
from typing import Callable

from peftsft.core.compat import deepspeed_zero3_enabled, fsdp_on_cpu_processes
from peftsft.core.errors import UserError
from peftsft.core.launch import Launch, current_launch


def trainer_for_launch(make: Callable[[], object], device: str, launch: Launch | None = None):
    """`make()` (the trainer) set up for this launch: under FSDP, sharding that engages on CPU processes too and
    gradients reduced in fp32 (autocast casts as in one process); a launch that did not engage fails loudly."""
    launch = launch or current_launch()
    if launch.engine != "fsdp":
        return make()
    if device == "cpu":
        fsdp_on_cpu_processes()
    trainer = make()
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not trainer.is_fsdp_enabled or plugin is None:
        raise UserError(f"the launch asked for {launch.describe()}, but the trainer did not enable FSDP",
                        hint="launch with recipes/accelerate/ddp-cpu.yaml (or ddp.yaml on GPUs) instead")
    plugin.mixed_precision_policy = _precision_policy(plugin)
    return trainer


def _precision_policy(plugin):
    """No cast by FSDP (each weight keeps its dtype: a bf16 frozen base, fp32 adapters; autocast does the products
    as in one process) and gradients reduced across processes in fp32, so two processes sum what one would."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if plugin.fsdp_version != 2:
        return plugin.mixed_precision_policy  # FSDP1 (GPU configs) keeps accelerate's policy
    return MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)


def is_sharded(model) -> bool:
    """The model's weights are split across processes (FSDP2 shards, DeepSpeed ZeRO-3 partitions): its forward
    passes need every process."""
    from torch.distributed.fsdp import FSDPModule

    return deepspeed_zero3_enabled() or any(isinstance(module, FSDPModule) for module in model.modules())


def gathered_state(model) -> dict | None:
    """Every process calls it: the split weights gathered into whole tensors on the main process (None elsewhere,
    and for a model that is not split). An adapter's trainable weights only; a whole model's every weight."""
    if not is_sharded(model):
        return None
    adapter = hasattr(model, "peft_config")  # the frozen base is not part of what an adapter run saves
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(module, FSDPModule) for module in model.modules()):
        return _gathered_zero3(model, adapter)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter)
    return get_model_state_dict(model, options=options) or None  # cpu_offload: whole tensors on rank 0 only


def _gathered_zero3(model, adapter: bool) -> dict | None:
    import deepspeed
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad or not adapter]
    with deepspeed.zero.GatheredParameters(params):  # whole on every process inside the block
        if dist.get_rank() != 0:
            return None
        gathered = {name for name, p in model.named_parameters() if p.requires_grad or not adapter}
        frozen = {name for name, _ in model.named_parameters()} - gathered  # empty partitions: left out
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


@contextlib.contextmanager
def saving_from(model, state: dict | None):
    """While the main process saves: `model.state_dict()` answers the gathered tensors, so peft's (and every
    strategy's) own save writes whole tensors rather than this process's shards."""
    if state is None:
        yield
        return
    model.state_dict = lambda *args, **kwargs: dict(state)
    try:
        yield
    finally:
        del model.state_dict  # the class's method again


def engine_summary(trainer) -> str:
    """What ran: 'fsdp2', 'deepspeed-zero2', 'ddp' or 'single' (summary.json's `engine`)."""
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled and getattr(state, "fsdp_plugin", None) is not None:
        return f"fsdp{state.fsdp_plugin.fsdp_version}"
    if trainer.is_deepspeed_enabled:
        return f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
    return "ddp" if trainer.accelerator.num_processes > 1 else "single"
