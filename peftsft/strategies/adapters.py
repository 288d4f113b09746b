"""Other weight adapters through peft: ia3, loha, lokr, vera, oft, ln_tuning (field names are peft's own)."""

from __future__ import annotations

from peft import IA3Config, LNTuningConfig, LoHaConfig, LoKrConfig, OFTConfig, VeraConfig
from pydantic import BaseModel, ConfigDict, Field, model_validator

from peftsft.strategies.peft_common import peft_strategy

Modules = str | list[str] | None  # "all-linear", a list of module names, or None: peft's default for the architecture


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IA3Params(Params):
    target_modules: Modules = None  # None: peft's default (Llama: k_proj, v_proj, down_proj)
    feedforward_modules: Modules = None  # the targets whose input (not output) is scaled; a subset of target_modules
    modules_to_save: list[str] | None = None


class LoHaParams(Params):
    r: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Modules = "all-linear"
    modules_to_save: list[str] | None = None


class LoKrParams(LoHaParams):
    decompose_both: bool = False  # also factor the left Kronecker matrix into low rank
    decompose_factor: int = -1  # -1: the most square factorisation


class VeraParams(Params):
    r: int = Field(256, ge=1)  # VeRA's shared random projections are cheap: ranks are high
    d_initial: float = Field(0.1, gt=0)
    vera_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Modules = None  # None: peft's default (Llama: q_proj, v_proj)
    projection_prng_key: int = 0  # seed of the frozen random projections (peft saves them with the adapter too)
    modules_to_save: list[str] | None = None


class OFTParams(Params):
    oft_block_size: int = Field(32, ge=0)  # the rotation's block size; must divide each target's input size
    r: int = Field(0, ge=0)  # or: the number of blocks per layer (set exactly one of r and oft_block_size)
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Modules = "all-linear"
    coft: bool = False  # constrained OFT: keep the rotation within eps of the identity
    eps: float = Field(6e-5, gt=0)
    block_share: bool = False
    modules_to_save: list[str] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> OFTParams:
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ValueError("set exactly one of r and oft_block_size (the other 0)")
        return self


class LNTuningParams(Params):
    target_modules: Modules = None  # None: peft's default (Llama: every RMSNorm)
    modules_to_save: list[str] | None = None


IA3 = peft_strategy(
    "ia3", "IA3: learned vectors rescaling keys, values and feed-forward activations (peft)", IA3Params, IA3Config
)
LOHA = peft_strategy(
    "loha", "LoHa: low-rank Hadamard-product updates (LyCORIS, peft)", LoHaParams, LoHaConfig, kbit=False
)
LOKR = peft_strategy(
    "lokr", "LoKr: low-rank Kronecker-product updates (LyCORIS, peft)", LoKrParams, LoKrConfig, kbit=False
)
VERA = peft_strategy(
    "vera",
    "VeRA: frozen shared random low-rank matrices, trained scaling vectors (peft)",
    VeraParams,
    VeraConfig,
    kbit=False,
)
OFT = peft_strategy(
    "oft", "OFT: block-diagonal orthogonal rotations of frozen weights (peft)", OFTParams, OFTConfig, kbit=False
)
LN_TUNING = peft_strategy(
    "ln_tuning", "LN tuning: train only the normalisation layers (peft)", LNTuningParams, LNTuningConfig
)
ADAPTERS = (IA3, LOHA, LOKR, VERA, OFT, LN_TUNING)
