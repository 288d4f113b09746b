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
    from peftsft.loading import load

    loaded = load(str(run_dir), "cpu")
    tokenizer = loaded.tokenizer

    def ids(pair: dict, side: str) -> tuple[list[int], list[int]]:
        """The prompt's ids and the answer's through its end-of-turn, by the chat template alone (not peftsft's data
        code, which a planted bug could share with training)."""
        prompt = [{"role": "user", "content": pair["prompt"]}]
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": pair[side]}], tokenize=True,
                                             return_dict=False)  # fmt: skip
        answer = list(full[len(head):])
        return list(head), answer[: answer.index(tokenizer.convert_tokens_to_ids("<|im_end|>")) + 1]

    def margin() -> float:
        total = 0.0
        for pair in PAIRS:
            scores = [logp(loaded.model, *ids(pair, side), per_token) for side in ("chosen", "rejected")]
            total += scores[0] - scores[1]
        return total / len(PAIRS)

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
    assert same(probe.begin["default"], sft), "training did not start from the SFT adapter"
    assert summary["preference"]["reference"] == ADAPTER_COPY
    assert same(probe.begin[REFERENCE_ADAPTER], sft) and same(probe.end[REFERENCE_ADAPTER], sft), "reference moved"
    assert not same(probe.end["default"], sft)
    saved = load_file(Path(summary["run_dir"]) / "adapter" / "adapter_model.safetensors")
    assert same(saved, probe.end["default"])
    # step 1: the policy is the SFT model and so is the reference (the base alone would give non-zero rewards)
    assert abs(logged(summary)[0]["rewards/chosen"]) < 1e-2
    samples = (Path(summary["run_dir"]) / "samples.md").read_text(encoding="utf-8")
    assert samples.startswith("# Samples: SFT model (") and f"**SFT model ({sft_run}):**" in samples  # not "base"


def test_a_resumed_run_continues_its_checkpoint_against_the_sft_reference(tmp_path, tiny_model_dir, sft_run):
    from peftsft.workflows.run import run

    sft = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    path = preference_recipe(tmp_path, tiny_model_dir, "dpo", steps=3)
    overrides = [f'model.adapter="{sft_run}"', "training.save_steps=3"]
    run_dir = Path(train(path, overrides)["run_dir"])
    saved = load_file(run_dir / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    probe = AdapterProbe()
    summary = run(load_recipe(path, [*overrides, "training.max_steps=6"]), Console(quiet=True), resume=True,
                  force=True, callbacks=[probe])  # fmt: skip
    assert summary["steps"] == 6
    assert same(probe.begin["default"], saved) and not same(saved, sft)  # the checkpoint's adapter, not the SFT one
    assert same(probe.begin[REFERENCE_ADAPTER], sft) and same(probe.end[REFERENCE_ADAPTER], sft)


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


def test_a_preference_run_exports_merges_and_serves_as_a_chat_run(tmp_path, tiny_model_dir):
    from peftsft.artifacts.serve.adapters import _read_run
    from peftsft.commands.cli import main

    path = preference_recipe(tmp_path, tiny_model_dir, "dpo", steps=2)
    assert main(["run", str(path), "--set", 'export.formats=["merged"]', "--set", 'model.base_id="org/tiny"']) == 0
    run_dir = tmp_path / "runs" / "dpo"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exports"] == [str(run_dir / "exports" / "merged")]  # verified against base + adapter
    assert "preference tuning with DPO" in (run_dir / "adapter" / "README.md").read_text()
    assert _read_run(run_dir).recipe.task == "preference"  # served beside chat runs


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_the_dashboards_data_view_shows_each_answer_after_its_prompt_with_only_the_answer_marked(tmp_path, tiny_model_dir,
                                                                                                 tokenizer, method):
    """`ui`'s data page of a preference run: chosen and rejected (KTO: the one answer) per row, the marked text
    being exactly that answer's tokens and nothing of the prompt."""
    import re
    from html import unescape

    from peftsft.artifacts.ui.data_view import data_view
    from peftsft.core.rundir import RunDir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.joinpath(RunDir.RECIPE).write_text(preference_recipe(tmp_path, tiny_model_dir, method).read_text())
    view = data_view(RunDir(run_dir), count=2)
    sides = ["chosen", "rejected"] if method == "dpo" else ["desirable", "undesirable"]
    titles = [title for title, _ in view.samples]
    assert titles[:2] == ([f"row 1: {s}" for s in sides] if method == "dpo" else titles[:2]) and len(titles) >= 2
    assert all(t.split(": ")[1] in sides for t in titles) and view.contract["passed"], view.contract
    answers = {p[k] for p in PAIRS for k in ("chosen", "rejected")}
    for title, html in view.samples:
        marked = unescape("".join(re.findall(r'<mark class="sup">(.*?)</mark>', html, flags=re.S)))
        unmarked = unescape("".join(re.findall(r"<span>(.*?)</span>", html, flags=re.S)))
        assert marked.split("<|im_end|>")[0].strip() in answers, (title, marked)
        assert any(p["prompt"] in unmarked for p in PAIRS) and not any(p["prompt"] in marked for p in PAIRS)
