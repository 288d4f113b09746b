"""The consoles commands print to: results on stdout, errors on stderr (rich, soft-wrapped for long paths)."""

from __future__ import annotations

from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
