"""Encoders with a classification head: load one for training, make it trainable, load a trained one back.

A classification run dir holds `adapter/` as chat runs do (PEFT adapter, or a whole model for strategies that
train every weight) plus `labels.json`; peft saves the trained head with the adapter (`modules_to_save`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir
from peftsft.core.rundir.adapter import damaged_files_are_user_errors, load_adapter
from peftsft.tasks.classification.data import LABELS_FILE, LabelMap

HEAD_NAMES = ("classifier", "score")  # what transformers calls the head (peft adds these to modules_to_save)


def load_encoder(recipe: Recipe, labels: LabelMap, device: str):
    """(model, tokenizer, source): the recipe's base with a fresh head for `labels`."""
    from transformers import AutoModelForSequenceClassification

    from peftsft.models import load_model, quantization_config

    quantized = quantization_config(recipe.quantization, device)
    if quantized is not None:  # the new head stays in float: it trains in full (peft copies it to modules_to_save)
        quantized.llm_int8_skip_modules = list(HEAD_NAMES)
    model, tokenizer, source = load_model(
        recipe.model, recipe.quantization, device, AutoModelForSequenceClassification, quantization_config=quantized,
        num_labels=len(labels.names), id2label=labels.id2label, label2id=labels.label2id,
    )
    if model.config.pad_token_id is None:  # decoder bases classify at the last non-pad token: they must know pad
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, source


@contextmanager
def quiet_peft():
    """peft asks transformers a since-renamed question (is_gradient_checkpointing): a FutureWarning per load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def apply_strategy(model: torch.nn.Module, recipe: Recipe):
    """(model ready to train, strategy): the recipe's strategy, with the classification head trainable."""
    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    context = StrategyContext(quantized=recipe.quantization.bits is not None, task_type="SEQ_CLS")
    with quiet_peft():
        model = strategy.apply(model, params, context)
    if not _is_peft(model):  # full / freeze: the head is new, so it always trains
        for head in head_modules(model):
            head.requires_grad_(True)
    return model, strategy


def head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    heads = [getattr(model, name) for name in HEAD_NAMES if isinstance(getattr(model, name, None), torch.nn.Module)]
    if not heads:
        raise UserError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    return heads


def _is_peft(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


# ---------------------------------------------------------------------------------------------- trained models


@dataclass
class Classifier:
    """A trained classifier for inference, its tokenizer and labels, and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    labels: LabelMap
    source: str
    recipe: Recipe | None = None

    @property
    def max_length(self) -> int:
        return self.recipe.classification.max_length if self.recipe else 512


def load_classifier(source: str | Path, device: str = "cpu", dequantize: bool = False) -> Classifier:
    """A run dir (base + adapter, as trained), or a model dir with a classification head (merged export)."""
    path = Path(source)
    if RunDir.holds_run(path) and RunDir(path).adapter_dir.is_dir():
        return load_run(RunDir(path), device, dequantize)
    recipe = RunDir.recipe_beside(path) if path.is_dir() else None
    if recipe is not None and (path / "adapter_config.json").is_file():  # export --format adapter
        return load_adapter_dir(path, recipe, device, dequantize)
    if not (path / "config.json").is_file():
        raise UserError(f"{source}: neither a classification run dir nor a model dir",
                        hint="pass runs/<name> of a classification run, or a dir written by `merge`")
    return _load_model_dir(path, device, recipe)


def load_run(run: RunDir, device: str = "cpu", dequantize: bool = False) -> Classifier:
    """The base as the recipe loads it (float32 and dequantized when asked) with the trained adapter and head."""
    run.adapter_kind()
    classifier = load_adapter_dir(run.adapter_dir, run.recipe(), device, dequantize)
    classifier.source = str(run.path)
    return classifier


def load_adapter_dir(adapter: Path, recipe: Recipe, device: str = "cpu", dequantize: bool = False) -> Classifier:
    """The recipe's base + the adapter (and head) in `adapter`; a whole saved model (full / freeze) as it is."""
    if not (adapter / "adapter_config.json").is_file():
        return _load_model_dir(adapter, device, recipe)
    labels = _labels_of(adapter)
    if dequantize:  # exports fold the adapter into float weights: the model as trained, in float32
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"dtype": "float32"})})
    base, _, _ = load_encoder(recipe, labels, device)
    if dequantize and recipe.quantization.bits is not None:
        base = base.dequantize(dtype=torch.float32)
    model = load_adapter(base, adapter)
    return Classifier(model.eval(), _tokenizer(adapter), labels, str(adapter), recipe)


def _load_model_dir(directory: Path, device: str, recipe: Recipe | None) -> Classifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with damaged_files_are_user_errors(directory):
        config = AutoConfig.from_pretrained(directory)
    if not any(arch.endswith("ForSequenceClassification") for arch in config.architectures or []):
        raise UserError(f"{directory}: {config.architectures} is not a sequence classification model",
                        hint="chat models answer with `chat`/`generate`; `predict` is for classification runs")
    with damaged_files_are_user_errors(directory):
        model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).to(device)
    labels = _labels_of(directory) if (directory / LABELS_FILE).is_file() else LabelMap(
        tuple(config.id2label[i] for i in range(config.num_labels))
    )
    return Classifier(model.eval(), _tokenizer(directory), labels, str(directory), recipe)


def _labels_of(directory: Path) -> LabelMap:
    if not (directory / LABELS_FILE).is_file():
        raise UserError(f"{directory} has no {LABELS_FILE}: not a classification run", hint="retrain it")
    return LabelMap.load(directory)


def _tokenizer(directory: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def merge(classifier: Classifier) -> torch.nn.Module:
    """The adapter folded into the base: a plain *ForSequenceClassification model with the trained head."""
    from peftsft.strategies import merge_model

    if not _is_peft(classifier.model):
        return classifier.model  # a whole model already
    name = classifier.recipe.strategy.name if classifier.recipe else "lora"
    return merge_model(name, classifier.model).eval()


# ---------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def logits_for(classifier: Classifier, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """float32 logits [rows, labels], in batches padded to their longest text."""
    model, tokenizer = classifier.model, classifier.tokenizer
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=classifier.max_length,
                          padding=True, return_tensors="pt").to(device)
        out.append(model(**batch).logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0, len(classifier.labels.names))
