"""task = "preference" trains on the tiny model: each method learns to prefer the chosen answer, the reference is the
model as the run starts (the base with the adapter off, or a frozen copy of a continued SFT adapter), only the
answers' tokens are scored, an SFT run's adapter is continued, and the run dir is a chat run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import TrainerCallback

from peftsft.core.errors import UserError
from peftsft.tasks.preference.model import ADAPTER_COPY, BASE, REFERENCE_ADAPTER
from peftsft.training.recipe import load_recipe
from tests.conftest import lora_recipe_head, write_jsonl, write_tiny_recipe

PAIRS = [
    {"prompt": "Who are you?", "chosen": "I'm Pip, happy to help!", "rejected": "No."},
    {"prompt": "Can you help me?", "chosen": "Of course, tell me more.", "rejected": "Maybe."},
    {"prompt": "What is LoRA?", "chosen": "Small trainable matrices beside frozen weights.", "rejected": "Stuff."},
    {"prompt": "Thanks!", "chosen": "You're welcome, anytime!", "rejected": "Ok."},
]


def preference_recipe(directory: Path, model_dir: Path, method: str, steps: int = 6, extra: str = "") -> Path:
    data = write_jsonl(directory / "pairs.jsonl", PAIRS)
    path = directory / f"{method}.toml"
    path.write_text('task = "preference"\n' + lora_recipe_head(model_dir, data, r=4) + f"""
[data]
max_length = 96
[training]
learning_rate = 2e-2
max_steps = {steps}
batch_size = 2
logging_steps = 1
seed = 7
[preference]
method = "{method}"
[run]
name = "{method}"
output_dir = "{directory / 'runs'}"
sample_prompts = ["Hi"]
sample_max_new_tokens = 2
{extra}
""", encoding="utf-8")
    return path


class AdapterProbe(TrainerCallback):
    """Every adapter's weights as training begins and ends (peft's own state dict, keyed as the saved file is)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = adapters(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = adapters(model)


def adapters(model) -> dict[str, dict[str, torch.Tensor]]:
    from peft import get_peft_model_state_dict

    return {name: {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
            for name in model.peft_config}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def train(path: Path, overrides: list[str] | None = None, probe=None) -> dict:
    from peftsft.workflows.run import run

    return run(load_recipe(path, overrides), Console(quiet=True), overwrite=True, callbacks=[probe] if probe else ())


def logged(summary: dict) -> list[dict]:
    lines = (Path(summary["run_dir"]) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "rewards/margins" in r]


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto", "simpo"])
def test_each_method_learns_to_prefer_the_chosen_answer_into_a_chat_run_dir(tmp_path, tiny_model_dir, method):
    # orpo: its odds-ratio term raised from the usual 0.1 of the SFT loss, which alone moves the margin little here
    summary = train(preference_recipe(tmp_path, tiny_model_dir, method), ["preference.beta=1.0"] * (method == "orpo"))
    adapter = Path(summary["run_dir"]) / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / REFERENCE_ADAPTER).exists()
    assert summary["task"] == "preference" and summary["preference"]["method"] == method
    before, after = margins(Path(summary["run_dir"]), per_token=method in ("orpo", "simpo"))
    assert after > before + 0.05, (before, after)


def margins(run_dir: Path, per_token: bool) -> tuple[float, float]:
    """The mean log-probability margin of chosen over rejected answers, by the base and by the saved run (loaded as
    chat runs are): summed over the answer's tokens (dpo, kto), or averaged per token (orpo, simpo)."""
    from peftsft.data.preference_build import build_preference_datasets
    from peftsft.loading import load

    loaded = load(str(run_dir), "cpu")
    recipe = loaded.recipe
    pairs, _, _ = build_preference_datasets(loaded.tokenizer, recipe.data, 7, paired=True)

    def margin() -> float:
        total = 0.0
        for row in pairs:
            scores = [logp(loaded.model, row["prompt_ids"], row[side], per_token) for side in ("chosen_ids", "rejected_ids")]
            total += scores[0] - scores[1]
        return total / len(pairs)

    with loaded.base():
        before = margin()
    return before, margin()


@torch.no_grad()
def logp(model, prompt: list[int], answer: list[int], per_token: bool) -> float:
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    score = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None]).sum().item()
    return score / len(answer) if per_token else score


def test_dpo_from_the_base_scores_against_the_base_which_stays_put(tmp_path, tiny_model_dir):
    summary = train(preference_recipe(tmp_path, tiny_model_dir, "dpo"))
    records = logged(summary)
    assert summary["preference"]["reference"] == BASE
    # step 1: the policy is still its reference, so both rewards are zero; later the policy has moved from it
    assert abs(records[0]["rewards/chosen"]) < 1e-2 and abs(records[0]["rewards/rejected"]) < 1e-2  # bf16 numerics
    assert abs(records[-1]["rewards/chosen"]) + abs(records[-1]["rewards/rejected"]) > 0.1


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A 3-step chat LoRA run on the tiny model (its adapter's B matrices no longer zero)."""
    from peftsft.workflows.run import run

    recipe = write_tiny_recipe(tmp_path_factory.mktemp("sft"), tiny_model_dir, 'sample_prompts = []')
    return Path(run(load_recipe(recipe), Console(quiet=True))["run_dir"])


def test_an_sft_adapter_is_continued_against_a_frozen_copy_of_itself(tmp_path, tiny_model_dir, sft_run):
    sft = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    probe = AdapterProbe()
    summary = train(preference_recipe(tmp_path, tiny_model_dir, "dpo"), [f'model.adapter="{sft_run}"'], probe)
    assert summary["preference"]["reference"] == ADAPTER_COPY
    assert same(probe.begin["default"], sft), "training did not start from the SFT adapter"
    assert same(probe.begin[REFERENCE_ADAPTER], sft) and same(probe.end[REFERENCE_ADAPTER], sft), "reference moved"
    assert not same(probe.end["default"], sft)
    saved = load_file(Path(summary["run_dir"]) / "adapter" / "adapter_model.safetensors")
    assert same(saved, probe.end["default"])
    # step 1: the policy is the SFT model and so is the reference (the base alone would give non-zero rewards)
    assert abs(logged(summary)[0]["rewards/chosen"]) < 1e-2


def test_an_adapter_that_is_not_a_run_or_another_base_is_refused(tmp_path, tiny_model_dir, sft_run):
    path = preference_recipe(tmp_path, tiny_model_dir, "dpo")
    with pytest.raises(UserError, match="neither a run dir"):
        train(path, [f'model.adapter="{tmp_path}"'])
    with pytest.raises(UserError, match=r"\[strategy\] name = 'lora', this recipe 'dora'"):
        train(path, [f'model.adapter="{sft_run}"', 'strategy.name="dora"'])


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto", "simpo"])
def test_the_trainer_scores_each_answer_through_its_end_of_turn_and_no_prompt_token(tmp_path, tiny_model_dir,
                                                                                      tokenizer, method):  # fmt: skip
    trainer = build_trainer(preference_recipe(tmp_path, tiny_model_dir, method))
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    scored = scored_texts(trainer.data_collator(rows), tokenizer)
    chosen = {p["chosen"] + "<|im_end|>" for p in PAIRS}
    rejected = {p["rejected"] + "<|im_end|>" for p in PAIRS}
    if method == "kto":  # one answer a row: chosen ones desirable, rejected ones not
        assert sorted(scored) == sorted(chosen | rejected)
        assert all((text in chosen) == row["label"] for text, row in zip(scored, rows))
    else:  # a pair's chosen answer on the chosen side, its rejected one on the other
        assert set(scored[: len(rows)]) == chosen and set(scored[len(rows):]) == rejected


def scored_texts(batch: dict, tokenizer) -> list[str]:
    """The text of the scored tokens of every sequence in the batch (chosen ones first, as TRL orders them)."""
    if "completion_mask" in batch:  # DPO, KTO
        pairs = zip(batch["input_ids"], batch["completion_mask"])
        return [tokenizer.decode(ids[mask.bool()]) for ids, mask in pairs]
    labels = list(batch["chosen_labels"]) + list(batch["rejected_labels"])  # ORPO, CPO
    return [tokenizer.decode(row[row != -100]) for row in labels]


def build_trainer(path: Path):
    """The method's trainer as a run builds it, without training."""
    from peftsft.data.build import apply_template
    from peftsft.data.preference_build import build_preference_datasets
    from peftsft.models import load_model
    from peftsft.tasks.preference.model import adapt
    from peftsft.tasks.preference.trainers import preference_trainer
    from tests.conftest import decide

    recipe = load_recipe(path)
    model, tokenizer, _ = load_model(recipe.model, recipe.quantization, "cpu")
    apply_template(tokenizer, recipe.data)
    train_ds, _, _ = build_preference_datasets(tokenizer, recipe.data, 7, recipe.preference.paired)
    model = adapt(recipe, model, quantized=False).model
    levers = decide(recipe, "cpu", 64, model)
    return preference_trainer(recipe, model, tokenizer, train_ds, None, "cpu", [], levers)
