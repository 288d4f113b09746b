"""The run directory's one owner: its paths, its files read and written, the adapter loaded, the main-process rule.

`runs/<name>/` holds recipe.resolved.toml, adapter/ (PEFT format or a whole model, with the tokenizer and chat
template), checkpoints/, metrics.jsonl, status.json, summary.json, samples.md, loss.png and exports/. Every other
module asks a `RunDir`, never the file names. Writes are atomic: a file or folder appears whole or not at all.
Reads come in two kinds: strict ones (`recipe`, `load_adapter`) raise a UserError naming the file and the fix;
lenient ones (`read_*`) return what is readable and say what is not, for the dashboard. An export that carries the
resolved recipe beside its weights is read through `RunDir.recipe_beside`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError
from peftsft.core.rundir import adapter
from peftsft.core.rundir.files import (  # noqa: F401 (the atomic writes are part of this package's API)
    first_line,
    read_json_object,
    read_text_or_empty,
    require_parent_folders,
    write_dir,
    write_json,
    write_text,
)

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
    eval_file = property(lambda self: self.path / "eval.json")
    exports_dir = property(lambda self: self.path / "exports")
    push_dir = property(lambda self: self.path / "push")
    trackers_dir = property(lambda self: self.path / "trackers")  # TensorBoard, MLflow, W&B ([training] report_to)
    card_file = property(lambda self: self.adapter_dir / "README.md")
    chat_template_file = property(lambda self: self.adapter_dir / "chat_template.jinja")

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
            return tomllib.loads(self.recipe_file.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"{self.recipe_file}: unreadable ({first_line(exc)})",
                            hint="the file was changed or damaged after the run; retrain, or restore it") from None

    def task(self) -> str:
        """The run's task ("chat" for anything without a readable recipe: a plain model folder)."""
        try:
            task = self.raw_recipe().get("task", "chat")
        except (OSError, UserError):
            return "chat"
        return task if isinstance(task, str) else "chat"

    def recipe_text(self) -> str:
        """recipe.resolved.toml as written (the model card quotes it)."""
        self.raw_recipe()  # unreadable: the same UserError as every strict read
        return self.recipe_file.read_text(encoding="utf-8-sig")

    @staticmethod
    def recipe_beside(folder: str | Path):
        """The resolved recipe an export carries beside its weights (merge/export copy it); None without one."""
        path = Path(folder).expanduser()
        folder = path if path.is_dir() else path.parent
        return RunDir(folder).recipe() if path.exists() and (folder / RunDir.RECIPE).is_file() else None

    def copy_recipe(self, folder: Path) -> None:
        """Put the resolved recipe beside an export's weights (it names the base and the template)."""
        shutil.copy2(self.recipe_file, folder / self.RECIPE)

    def adapter_kind(self) -> str:
        """"peft" (adapter_config.json) or "model" (a whole model: full / freeze); a UserError when neither."""
        return adapter.adapter_kind(self.adapter_dir, self.path)

    def adapter_config(self) -> dict[str, Any]:
        """adapter/adapter_config.json; a UserError naming the file when it is damaged."""
        return adapter.adapter_config(self.adapter_dir)

    def load_adapter(self, model, name: str = "default", trainable: bool = False):
        """`model` with this run's PEFT adapter: wrapped (a plain model) or added under `name` (a PeftModel)."""
        self.adapter_kind()
        return adapter.load_adapter(model, self.adapter_dir, name, trainable)

    def reading_adapter(self):
        """A context for loading anything from adapter/ (a whole model too): a damaged file is a UserError."""
        return adapter.damaged_files_are_user_errors(self.adapter_dir)

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
        return read_json_object(self.summary_file, errors)

    def read_status(self, errors: list[str] | None = None) -> dict[str, Any]:
        return read_json_object(self.status_file, errors)

    def read_eval(self, errors: list[str] | None = None) -> dict[str, Any]:
        """eval.json, written by `peftsft eval RUN`."""
        return read_json_object(self.eval_file, errors)

    def read_samples(self, errors: list[str] | None = None) -> str:
        return read_text_or_empty(self.samples_file, errors)

    def read_card(self, errors: list[str] | None = None) -> str:
        return read_text_or_empty(self.card_file, errors)

    def exports(self) -> list[Path]:
        """What `export` wrote into exports/ (dirs, .gguf files, Modelfiles), without temporaries or records."""
        if not self.exports_dir.is_dir():
            return []
        return [p for p in sorted(self.exports_dir.iterdir())
                if not p.name.startswith(".") and not p.name.endswith(".verification.json")]  # fmt: skip

    def last_write(self) -> float:
        """When training last wrote progress (metrics or status), as a timestamp; 0 before it did."""
        stamps = []
        for path in (self.metrics_file, self.status_file):
            try:
                stamps.append(path.stat().st_mtime)
            except OSError:
                pass
        return max(stamps, default=0.0)

    def read_recipe(self, errors: list[str] | None = None) -> dict[str, Any]:
        """The resolved recipe as a dict; {} (and a line in `errors`) when it is missing or unreadable."""
        if not self.recipe_file.exists():
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
        lines = read_text_or_empty(self.metrics_file, metrics.errors).splitlines()
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
