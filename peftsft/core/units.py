"""Numbers as people read them: bytes in MiB/GiB, 4 significant digits, small rates in short scientific notation."""

from __future__ import annotations

import math

BINARY_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def gib(nbytes: float) -> str:
    """`1.25 GiB`, or `512.0 MiB` under a GiB."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def size(nbytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number ≥ 1, 4 significant digits: `4.013 GiB`, `812 B`."""
    for factor, unit in BINARY_UNITS:
        if abs(nbytes) >= factor:
            return f"{significant(nbytes / factor)} {unit}"
    return f"{significant(nbytes)} B"


def significant(value: float, digits: int = 4) -> str:
    """`1.079` for 1.078574299812317, `12,346` for 12345.6, `1.903e-6` for 1.90312e-06: `digits` significant digits,
    thousands grouped, scientific only for very small or very large magnitudes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-3 or magnitude >= 1e15:
        return scientific(value, digits)
    if magnitude >= 10 ** (digits - 1) or float(value).is_integer():
        return f"{round(value):,}"
    return f"{value:.{digits}g}"


def scientific(value: float, digits: int = 4) -> str:
    """`2e-4`, `1.5e-3`, `1.903e-6`: the mantissa without trailing zeros, the exponent without padding or `+`."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return significant(value, digits)
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
