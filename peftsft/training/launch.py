"""The launches refused before a model loads: what a launcher asked for (core/launch.py) against what the recipe
and this machine can do, so `validate` and `run` stop a launch that would not do what its config says, with the reason.
"""

from __future__ import annotations

from peftsft.core.launch import Launch, current_launch


def launch_problems(recipe, launch: Launch | None = None, device: str | None = None) -> list[str]:
    """Why this launch cannot train this recipe as its config says (empty: it can); `device`: the recipe's."""
    from peftsft.models import pick_device

    launch = launch or current_launch()
    if launch.engine == "single" and not launch.started_alone:
        return []
    device = device or pick_device(recipe.training.device)
    if launch.started_alone:
        return [
            "accelerate launch started this process alone although it was asked for several: with --cpu (or "
            "distributed_type MULTI_CPU without mpirun) accelerate runs ONE process and the config's FSDP/DeepSpeed/"
            "num_processes are ignored — drop --cpu and pick a config that says use_cpu: true itself "
            "(recipes/accelerate/ddp-cpu.yaml or fsdp-cpu.yaml), or launch with torchrun --nproc_per_node N"
        ]
    if launch.engine == "deepspeed":
        return deepspeed_problems(recipe, device, launch)
    if launch.engine == "fsdp":
        return fsdp_problems(recipe, device, launch)
    return []


def deepspeed_problems(recipe, device: str, launch: Launch) -> list[str]:
    """DeepSpeed takes its precision from the accelerate config, peftsft from [training] precision: they must agree
    (the trainer stops on a mismatch only after the model has loaded); on CPU processes only fp32 trains like one
    process."""
    from peftsft.levers import precision_for

    precision = precision_for(recipe, device)
    config = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(launch.mixed_precision, launch.mixed_precision)
    if config != precision:
        return [f"DeepSpeed: the accelerate config's mixed_precision ({launch.mixed_precision!r}) and this run's "
                f"precision ({precision}, [training] precision = {recipe.training.precision!r} on {device}) differ — "
                f"set mixed_precision: {_accelerate_name(precision)!r} in the config, or [training] precision = "
                f"{config!r}"]
    if device == "cpu" and precision != "fp32":
        return [DEEPSPEED_BF16_ON_CPU]
    return []


def _accelerate_name(precision: str) -> str:
    return "no" if precision == "fp32" else precision


# Measured (deepspeed 0.19.8 on CPU, gloo): ZeRO-2 and ZeRO-3 at fp32 end with the adapter one process trains,
# exactly; at bf16, DeepSpeed's own bf16 mode (bf16 weights, gradients reduced in bf16) does not (measured: docs/distributed.md).
DEEPSPEED_BF16_ON_CPU = (
    "DeepSpeed on CPU processes at bf16: DeepSpeed's bf16 mode keeps bf16 weights and reduces gradients in bf16, so "
    "two processes do not train like one (the adapter ended 4% away from one process's after 6 steps; at fp32 it "
    "is the same) — set [training] precision = \"fp32\" and mixed_precision: 'no', or use "
    "recipes/accelerate/fsdp-cpu.yaml, which autocasts to bf16 and reduces in fp32"
)


def fsdp_problems(recipe, device: str, launch: Launch) -> list[str]:
    """FSDP's limits as run and measured here: FSDP2 on CPU; the chat task; optimizers the trainer builds."""
    from peftsft.strategies import get_strategy

    problems = []
    if device == "cpu" and launch.fsdp_version != 2:
        problems.append(f"FSDP{launch.fsdp_version} on CPU processes: only FSDP2 runs on CPU here — set "
                        "fsdp_version: 2 (recipes/accelerate/fsdp-cpu.yaml)")
    if device == "cpu" and recipe.quantization.bits is not None:
        problems.append(QUANTIZED_ON_CPU)
    if recipe.task != "chat":
        problems.append(f"task = {recipe.task!r} under FSDP: only the chat task has been run sharded — launch it "
                        "with recipes/accelerate/ddp-cpu.yaml (or ddp.yaml on GPUs)")
    if get_strategy(recipe.strategy.name).make_optimizer is not None and _builds_optimizer(recipe):
        problems.append(f"strategy {recipe.strategy.name!r} builds its own optimizer (LoRA+), which the trainer "
                        "refuses under FSDP — drop loraplus_lr_ratio, or launch with DDP")
    if launch.fsdp_checkpointing and recipe.training.activation_checkpointing is True:
        problems.append("[training] activation_checkpointing = true and the config's fsdp_activation_checkpointing "
                        "both recompute activations; the trainer accepts one — set activation_checkpointing = false")
    return problems


QUANTIZED_ON_CPU = (
    "[quantization] under FSDP on CPU processes: bitsandbytes' CPU backend repacks each 4-bit weight at its first "
    "use (a uint8 tensor of another shape, its quant_state marked packed), which FSDP's flat shards do not follow — "
    "two processes computed another 4-bit base than one process from the first step. Train the unquantized base "
    "sharded (FSDP shards it), or the 4-bit one with recipes/accelerate/ddp-cpu.yaml"
)


def _builds_optimizer(recipe) -> bool:
    return recipe.strategy.params.get("loraplus_lr_ratio") is not None
