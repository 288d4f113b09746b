"""Write a merged model as a standard Hugging Face model dir that plain `from_pretrained` loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from peftsft.artifacts.export.template import stop_tokens
from peftsft.core.rundir import write_json


def save_merged(model: torch.nn.Module, tokenizer, directory: Path, dtype: str) -> None:
    """safetensors weights in `dtype`, config, tokenizer with the training chat template, and a generation
    config that stops on the template's end-of-turn token as well as EOS."""
    target = getattr(torch, dtype)
    model = model if model.dtype == target else copy.deepcopy(model).to(target)
    model.config.dtype = target
    model.generation_config = generation_config(model, tokenizer)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def name_base_model(directory: Path, base_id: str | None) -> None:
    """The merged config names the base's public id (`base_model_name_or_path`, as an adapter config does)."""
    config_file = directory / "config.json"
    if base_id is not None and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        write_json(config_file, config | {"base_model_name_or_path": base_id})


def generation_config(model, tokenizer):
    """The base's generation settings, with the stop tokens and special ids of the training tokenizer."""
    config = copy.deepcopy(model.generation_config)
    stops = [i for i, _ in stop_tokens(tokenizer)]
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config
