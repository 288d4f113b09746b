"""How this process was launched, as the launchers tell each process in its environment.

A recipe does not say how it will be launched; the launchers say it to each process in environment variables:
torchrun sets WORLD_SIZE; `accelerate launch` adds ACCELERATE_USE_FSDP (+ FSDP_VERSION, FSDP_ACTIVATION_CHECKPOINTING)
or ACCELERATE_USE_DEEPSPEED from its several-process launchers, and ACCELERATE_USE_CPU from its single-process one.
training/launch.py refuses, from this, the launches that would not do what their config says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Launch:
    engine: str  # "single" | "ddp" | "fsdp" | "deepspeed": what the launcher asked each process to run
    processes: int
    fsdp_version: int | None = None
    fsdp_checkpointing: bool = False  # the config's fsdp_activation_checkpointing
    mixed_precision: str = "no"  # the config's mixed_precision (what DeepSpeed follows)
    started_alone: bool = False  # accelerate was asked for several processes and started this one alone

    def describe(self) -> str:
        if self.engine == "fsdp":
            return f"FSDP{self.fsdp_version} over {self.processes} processes"
        if self.engine in ("ddp", "deepspeed"):
            return f"{'DDP' if self.engine == 'ddp' else 'DeepSpeed'} over {self.processes} processes"
        return "one process"


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def current_launch(env: Mapping[str, str] | None = None) -> Launch:
    """The launch as this process's environment describes it."""
    env = os.environ if env is None else env
    processes = next((int(env[name]) for name in WORLD_SIZE_VARIABLES if env.get(name, "").isdigit()), 1)
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return Launch("fsdp", processes, int(env.get("FSDP_VERSION", "1")), _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"))
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return Launch("deepspeed", processes, mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no"))
    # accelerate's single-process launcher (--cpu, distributed_type MULTI_CPU without mpirun, or no several-process
    # type) always sets ACCELERATE_USE_CPU, and MASTER_ADDR only when it was asked for more than one process
    alone = "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and processes == 1
    return Launch("ddp" if processes > 1 else "single", processes, started_alone=alone)


