"""[preference] (task = "preference"): the method and its parameters, each key checked against the method.

A key belongs to the methods named at the start of its help; setting it for another method is an error rather
than a silently ignored value. `beta` left out becomes the method's usual value (DEFAULT_BETA).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from peftsft.core.config_base import Key, Section

METHODS = ("dpo", "orpo", "kto", "simpo")
# The keys each method reads besides `method` and `beta`.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "dpo": ("loss_type", "label_smoothing", "sft_weight", "precompute_reference"),
    "orpo": (),
    "kto": ("desirable_weight", "undesirable_weight", "precompute_reference"),
    "simpo": ("gamma", "sft_weight"),
}
# beta as each method's paper and TRL use it: DPO/KTO's KL strength, ORPO's odds-ratio weight λ, SimPO's reward scale.
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}
PAIRED = ("dpo", "orpo", "simpo")  # methods that need chosen/rejected pairs; kto also takes unpaired rows


class PreferenceSection(Section):
    """Used by `task = "preference"`: pairs (or kto's unpaired rows) from [data], tuned by `method`."""

    method: Literal["dpo", "orpo", "kto", "simpo"] = Key(
        "dpo", "dpo: against a frozen reference (the model before this run); orpo: SFT loss plus an odds-ratio term, "
        "no reference; kto: desirable/undesirable answers, paired or not; simpo: length-normalised margin, no reference"
    )
    beta: float = Key(
        0.1, "the method's strength; left out: its usual value (dpo 0.1, orpo 0.1 = λ, kto 0.1, simpo 2.0). dpo/kto: "
        "higher keeps the model closer to the reference", gt=0.0
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm"] = Key(
        "sigmoid", "dpo: sigmoid (the DPO paper), ipo, hinge (SLiC), robust (noisy labels: set label_smoothing), "
        "sigmoid_norm (log-ratios averaged per token)"
    )
    label_smoothing: float = Key(
        0.0, "dpo with loss_type = \"robust\": the share of pairs assumed mislabelled", ge=0.0, lt=0.5
    )
    sft_weight: float = Key(
        0.0, "dpo, simpo: weight of an SFT (negative log-likelihood) loss on the chosen answer added to the "
        "preference loss (RPO; CPO-SimPO); 0: none", ge=0.0
    )
    gamma: float = Key(0.5, "simpo: the target margin γ between chosen and rejected rewards", ge=0.0)
    desirable_weight: float = Key(
        1.0, "kto: weight of desirable answers' loss (raise it when they are fewer than undesirable ones)", gt=0.0
    )
    undesirable_weight: float = Key(1.0, "kto: weight of undesirable answers' loss", gt=0.0)
    precompute_reference: bool = Key(
        False, "dpo, kto: score the training data with the reference once before training, then free it"
    )

    @model_validator(mode="before")
    @classmethod
    def _method_beta(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("beta") is None and data.get("method", "dpo") in DEFAULT_BETA:
            data = {**data, "beta": DEFAULT_BETA[data.get("method", "dpo")]}
        return data

    @model_validator(mode="after")
    def _keys_fit_the_method(self) -> PreferenceSection:
        problems = []
        foreign = [k for k in sorted(self.model_fields_set) if k not in ("method", "beta", *METHOD_KEYS[self.method])]
        if foreign:
            owners = {k: [m for m, keys in METHOD_KEYS.items() if k in keys] for k in foreign}
            said = "; ".join(f"{k} is for method {' or '.join(map(repr, m))}" for k, m in owners.items())
            problems.append(f"method = {self.method!r} does not use {', '.join(foreign)} ({said}): remove it")
        if self.label_smoothing and self.loss_type != "robust":
            problems.append(f'label_smoothing needs loss_type = "robust" (got {self.loss_type!r})')
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def keys_in_use(self) -> list[str]:
        """The keys this method reads, in schema order (what the resolved recipe writes)."""
        return [k for k in type(self).model_fields if k in ("method", "beta", *METHOD_KEYS[self.method])]

    @property
    def paired(self) -> bool:
        """Whether the method trains on chosen/rejected pairs (kto unpairs them)."""
        return self.method in PAIRED
