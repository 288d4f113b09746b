"""Third-party noise, silenced in one place: known harmless library messages stay off a normal run's console and
show again with --debug. Only the messages listed here are dropped; our own output and any other library warning
(an unknown one may matter) still reach the user.

The CLI installs this before anything imports the libraries: bitsandbytes logs its message while being imported.
"""

from __future__ import annotations

import logging
import warnings

# (logger, start of the message, why it is harmless)
NOISY_LOGS = [
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        "logged at import on AVX-512-BF16 CPUs: an optional Hub kernel for bitsandbytes' packed inference layout, "
        "which peftsft does not use (models.BNB_CPU_PATHS); bitsandbytes falls back to its own kernel anyway",
    ),
    (
        "kernels._internals.hf_hub",
        "Skipping publisher trust check for 'kernels-community/",
        "logged by `kernels` (0.19+) on AVX-512-BF16 CPUs offline, on the way to the message above: the same optional "
        "Hub kernel, not found in the cache and not used",
    ),
]
# (category, regex matching the start of the message, why it is harmless)
NOISY_WARNINGS = [
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "peft reads a property transformers 5 renamed; nothing a user can change",
    ),
]


class _DropKnownMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_libraries(debug: bool = False) -> None:
    """Drop the known noise (nothing with `debug`), and the libraries' progress bars and info chatter (our own
    display replaces them)."""
    if not debug:
        _drop_known_noise()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning() if debug else hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass


def _drop_known_noise() -> None:
    for name, start, _why in NOISY_LOGS:
        logger = logging.getLogger(name)  # exists before its module is imported: the filter is in place in time
        if not any(isinstance(f, _DropKnownMessages) for f in logger.filters):
            logger.addFilter(_DropKnownMessages((start,)))
    for category, message, _why in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
