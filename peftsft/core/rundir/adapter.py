"""An adapter folder (a run's adapter/, or an adapter export): what it holds, and the one place peft loads it.

Damaged files are the user's to fix (a copy cut short, an edit gone wrong): each becomes a UserError naming the
file, never a traceback from deep inside peft or safetensors.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError
from peftsft.core.rundir.files import first_line

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_CONFIG = "config.json"  # a whole model saved in the folder (strategies that train every weight)
DAMAGED_HINT = "the file is damaged or incomplete (a copy cut short?): copy the run's adapter/ again, or retrain"
UNLOADABLE_HINT = ("its files are damaged or incomplete, or it was trained on another base model: copy the run's "
                   "adapter/ again, or retrain")


def adapter_kind(folder: Path, run: Path | None = None) -> str:
    """"peft" (adapter_config.json) or "model" (a whole model: full / freeze); a UserError when neither."""
    if (folder / CONFIG).is_file():
        return "peft"
    if (folder / MODEL_CONFIG).is_file():
        return "model"
    where = run or folder.parent
    missing = folder.name if not folder.is_dir() else f"{folder.name}/{CONFIG}"
    raise UserError(f"{where}: incomplete run dir, {missing} is missing",
                    hint="did the run finish? a run dir gets adapter/ only after training ends")


def adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json as a dict; a UserError naming the file when it is not a JSON object."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({first_line(exc)})", hint=DAMAGED_HINT) from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise UserError(f"{path}: not a PEFT adapter config (no \"peft_type\")", hint=DAMAGED_HINT)
    return config


def load_adapter(model, folder: Path, name: str = "default", trainable: bool = False):
    """`model` with the adapter in `folder`: wrapped (a plain model) or added under `name` (a PeftModel)."""
    from peft import PeftModel

    adapter_config(folder)  # a config cut short names its file (peft's JSONDecodeError would not)
    with damaged_files_are_user_errors(folder), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a since-renamed question
        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=trainable)


@contextmanager
def damaged_files_are_user_errors(folder: Path) -> Iterator[None]:
    """Loading weights from `folder`: an unreadable file becomes a UserError that names it."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        weights = next((folder / n for n in (*WEIGHTS, "model.safetensors") if (folder / n).is_file()), folder)
        raise UserError(f"{weights}: cannot be read ({first_line(exc)})", hint=DAMAGED_HINT) from None
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise UserError(f"{folder}: cannot be loaded: {first_line(exc)}", hint=UNLOADABLE_HINT) from None
