"""The run directory's one owner: its paths, its files read and written, the adapter loaded, the main-process rule.

`runs/<name>/` holds recipe.resolved.toml, adapter/ (PEFT format or a whole model, with the tokenizer and chat
template), checkpoints/, metrics.jsonl, status.json, summary.json, samples.md, loss.png and exports/. Every other
module asks a `RunDir`, never the file names. Writes are atomic: a file or folder appears whole or not at all.
Reads come in two kinds: strict ones (`recipe`, `load_adapter`) raise a UserError naming the file and the fix;
lenient ones (`read_*`) return what is readable and say what is not, for the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError

CHECKPOINT_SEAL = "peftsft.complete"  # written into a checkpoint after the trainer's last file of it
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RunDir:
    path: Path

    RECIPE = "recipe.resolved.toml"
    ADAPTER = "adapter"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------------------------------------ paths
    recipe_file = property(lambda self: self.path / self.RECIPE)
    adapter_dir = property(lambda self: self.path / self.ADAPTER)
    summary_file = property(lambda self: self.path / "summary.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    samples_file = property(lambda self: self.path / "samples.md")
    loss_plot = property(lambda self: self.path / "loss.png")
    exports_dir = property(lambda self: self.path / "exports")
    card_file = property(lambda self: self.adapter_dir / "README.md")

    @property
    def name(self) -> str:
        return self.path.name

    @staticmethod
    def holds_run(path: str | Path) -> bool:
        """A run dir has a resolved recipe and no weights of its own (a merged export has both)."""
        path = Path(path)
        return (path / RunDir.RECIPE).is_file() and not (path / "config.json").is_file()

    @staticmethod
    def looks_like_run(path: str | Path) -> bool:
        """A folder a run has written into (even one that failed before its recipe was saved)."""
        path = Path(path)
        return path.is_dir() and any((path / name).exists() for name in (RunDir.RECIPE, "metrics.jsonl"))

    # ------------------------------------------------------------------------------------------------ strict reads
    def recipe(self):
        """The resolved recipe, schema-checked only (the run must load even if its data files moved)."""
        from pydantic import ValidationError

        from peftsft.core.config import Recipe

        if not self.recipe_file.is_file():
            raise UserError(f"{self.path}: not a run directory (no {self.RECIPE})",
                            hint="pass runs/<name> of a run made by `peftsft run`")
        try:
            return Recipe.model_validate(self.raw_recipe())
        except ValidationError as exc:
            raise UserError(f"{self.recipe_file}: not a valid resolved recipe: {exc.error_count()} problem(s)",
                            problems=[f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()][:10],
                            hint="was this run made by another peftsft version? retrain it") from None

    def raw_recipe(self) -> dict[str, Any]:
        """recipe.resolved.toml as a dict; a UserError when it is unreadable."""
        try:
            return tomllib.loads(self.recipe_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"{self.recipe_file}: unreadable ({_first_line(exc)})",
                            hint="the file was changed or damaged after the run; retrain, or restore it") from None

    def task(self) -> str:
        """The run's task ("chat" for anything without a readable recipe: a plain model folder)."""
        try:
            task = self.raw_recipe().get("task", "chat")
        except (OSError, UserError):
            return "chat"
        return task if isinstance(task, str) else "chat"

    def adapter_kind(self) -> str:
        """"peft" (adapter_config.json) or "model" (a whole model: full / freeze); a UserError when neither."""
        if (self.adapter_dir / "adapter_config.json").is_file():
            return "peft"
        if (self.adapter_dir / "config.json").is_file():
            return "model"
        missing = "adapter/" if not self.adapter_dir.is_dir() else "adapter/adapter_config.json"
        raise UserError(f"{self.path}: incomplete run dir, {missing} is missing",
                        hint="did the run finish? a run dir gets adapter/ only after training ends")

    def load_adapter(self, model, name: str = "default", trainable: bool = False):
        """`model` with this run's PEFT adapter: wrapped (a plain model) or added under `name` (a PeftModel)."""
        import warnings

        from peft import PeftModel

        self.adapter_kind()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a since-renamed question
                if isinstance(model, PeftModel):
                    model.load_adapter(str(self.adapter_dir), adapter_name=name, is_trainable=trainable)
                    return model
                return PeftModel.from_pretrained(model, str(self.adapter_dir), adapter_name=name,
                                                 is_trainable=trainable)  # fmt: skip
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise UserError(f"{self.adapter_dir}: the adapter cannot be loaded: {_first_line(exc)}",
                            hint="the files are damaged or incomplete (cut short?); retrain the run, or copy its "
                            "adapter/ again") from None

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (sealed), in step order: checkpoint-10 after checkpoint-9."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.iterdir()
                 if _CHECKPOINT.match(p.name) and (p / CHECKPOINT_SEAL).is_file()]  # fmt: skip
        return sorted(found, key=checkpoint_step)

    def partial_checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        return [p for p in self.checkpoints_dir.iterdir()
                if _CHECKPOINT.match(p.name) and not (p / CHECKPOINT_SEAL).is_file()]  # fmt: skip

    # ------------------------------------------------------------------------------------------------ lenient reads
    def read_summary(self, errors: list[str] | None = None) -> dict[str, Any]:
        return _read_json(self.summary_file, errors)

    def read_status(self, errors: list[str] | None = None) -> dict[str, Any]:
        return _read_json(self.status_file, errors)

    def read_recipe(self, errors: list[str] | None = None) -> dict[str, Any]:
        """The resolved recipe as a dict; {} (and a line in `errors`) when it is missing or unreadable."""
        if not self.recipe_file.is_file():
            return {}
        try:
            return self.raw_recipe()
        except (OSError, UserError) as exc:
            if errors is not None:
                errors.append(f"{self.RECIPE}: {getattr(exc, 'message', exc)}")
            return {}

    def read_metrics(self) -> Metrics:
        """metrics.jsonl's records; a broken line is reported and skipped."""
        metrics = Metrics()
        if not self.metrics_file.is_file():
            return metrics
        lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                metrics.errors.append(f"{self.metrics_file.name}:{number}: not a JSON record: {line[:80]!r}")
                continue
            if isinstance(record, dict):
                metrics.records.append(record)
            else:
                metrics.errors.append(f"{self.metrics_file.name}:{number}: not a JSON object")
        return metrics

    # ------------------------------------------------------------------------------------------------ writes
    def create(self, overwrite: bool) -> None:
        """Create the run dir; refuse an existing one unless told to overwrite it."""
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise UserError(f"run directory already exists: {self.path}",
                                hint="pass --overwrite to replace it, or --set run.name=<new name>")
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory {self.path}: {exc.strerror}",
                            hint="use --output DIR") from None
        if not os.access(self.path, os.W_OK):
            raise UserError(f"run directory is not writable: {self.path}", hint="use --output DIR")

    def write_recipe(self, text: str) -> None:
        write_text(self.recipe_file, text)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, summary)

    def write_status(self, state: str, reason: str | None = None) -> None:
        """running | done | stopped | failed, and why, for whoever watches (the dashboard); never fails the run."""
        try:
            write_json(self.status_file, {"state": state, "reason": reason, "pid": os.getpid(), "time": time.time()})
        except OSError:
            pass

    def marked_running_by_this_process(self) -> bool:
        """This process marked the run dir running (not another run's dir that this one was refused)."""
        status = self.read_status()
        return status.get("state") == "running" and status.get("pid") == os.getpid()

    def seal_checkpoint(self, folder: Path) -> None:
        """Mark a checkpoint complete (after the trainer wrote its last file)."""
        tmp = folder / f".{CHECKPOINT_SEAL}.tmp"
        tmp.write_text(str(checkpoint_step(folder)), encoding="utf-8")  # the step it holds
        tmp.replace(folder / CHECKPOINT_SEAL)


@dataclass
class Metrics:
    records: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "metrics.jsonl:7: not JSON" — shown, the rest still drawn

    def series(self, key: str) -> list[tuple[float, float]]:
        return [(r["step"], float(r[key])) for r in self.records
                if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]  # fmt: skip


def checkpoint_step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(checkpoint.name).group(1))


def is_main_process() -> bool:
    """The process that writes the run dir and talks to the user: accelerate's main process once its state exists
    (torchrun, accelerate launch), else the launcher's RANK (0 when launched alone)."""
    from peftsft.core.compat import launched_rank

    return launched_rank() == 0


def _read_json(path: Path, errors: list[str] | None) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        if errors is not None:
            errors.append(f"{path.name}: unreadable JSON ({_first_line(exc)})")
        return {}
    if not isinstance(data, dict):
        if errors is not None:
            errors.append(f"{path.name}: not a JSON object")
        return {}
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- atomic writes


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write into a temp folder beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
