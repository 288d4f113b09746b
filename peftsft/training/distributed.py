"""Several processes (torchrun / accelerate launch): one writes outputs and talks, all train."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console

from peftsft.core.rundir import is_main_process


def process_state(device: str):
    """accelerate's view of this process; sets up the process group (gloo on CPU) when launched distributed."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")  # without cpu=True, CPU processes would each think they are alone


def console_for(state, console: Console) -> Console:
    """The real console on the main process; a silent one elsewhere, so the display appears once."""
    return console if is_main_process() else Console(quiet=True)


def on_main(state, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the main process only and hand its result (or its exception) to every process."""
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if is_main_process():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # re-raised on every process below, so no process waits forever
            box[0] = ("error", exc)
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
