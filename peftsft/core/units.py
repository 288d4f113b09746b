"""Numbers as people read them: bytes in MiB/GiB."""

from __future__ import annotations


def gib(nbytes: float) -> str:
    """`1.25 GiB`, or `512.0 MiB` under a GiB."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
