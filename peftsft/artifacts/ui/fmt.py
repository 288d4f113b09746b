"""How every dashboard page writes a value: one place, chosen by what the value is (its key says bytes, a rate...).

Registered as the templates' `human` filter and used by the charts' ticks, so a number reads the same everywhere.
"""

from __future__ import annotations

import json
import math
from typing import Any

from peftsft.core.units import scientific, significant, size

RATE_KEYS = ("learning_rate", "lr", "weight_decay")  # small by nature: always scientific (2e-4, not 0.0002)
MISSING = "–"


def human(value: Any, key: str = "") -> str:
    """`value` as a person reads it: `4.013 GiB` for a `*_bytes` key, `2e-4` for a learning rate, `1.079` for a
    float, `12,000` for an integer, `yes`/`no`, `–` for nothing; anything else as short JSON."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        name = key.rsplit(".", 1)[-1]
        if name.endswith("bytes"):
            return size(value)
        if name in RATE_KEYS and isinstance(value, float):
            return scientific(value)
        if name.endswith("seconds") or (name.endswith("_s") and not name.endswith("per_s")):
            return duration(value)
        return significant(value)
    if isinstance(value, str):
        return value
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def duration(seconds: float) -> str:
    """`8.5 s`, `2 min 5 s`, `1 h 2 min`: a time as a clock reads, not 3725.4 seconds."""
    if not math.isfinite(seconds) or seconds < 60:
        return f"{significant(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def tick_labels(ticks: list[float], step: float, key: str = "") -> list[str]:
    """Axis labels with as many significant digits as it takes (4 at least) for each to read back as its tick:
    10.825 is `10.825`, not `10.83`, and close ticks never print alike."""
    ticks = [0.0 if abs(t) < step * 1e-9 else t for t in ticks]  # 1e-17 from float steps is 0
    tiny = any(0 < abs(t) < 1e-3 for t in ticks)  # one axis, one notation: not 9.9e-4 beside 0.001
    fmt = scientific if tiny or key.rsplit(".", 1)[-1] in RATE_KEYS else significant
    for digits in range(4, 16):
        labels = [fmt(t, digits) for t in ticks]
        if all(math.isclose(float(label.replace(",", "")), t, rel_tol=0, abs_tol=step * 1e-6)
               for label, t in zip(labels, ticks)):  # fmt: skip
            return labels
    return labels
