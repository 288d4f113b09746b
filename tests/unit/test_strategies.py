"""The strategy catalogue: every registered strategy trains 3 steps on the tiny Llama (CPU, fp32), then is checked.

Matrix rows: trainable parameters changed and frozen ones bit-identical; parameter counts match peft's own;
save → load gives the trained model's logits; merged ≡ unmerged within 1e-4 (or a clear error if not mergeable).
Adding a strategy means adding its row to MATRIX (a test fails until then).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from rich.console import Console

import tests.conftest as conftest
from peftsft.core.config import Recipe
from peftsft.training.recipe import load_recipe
from peftsft.data import build_datasets
from peftsft.core.errors import UserError
from peftsft.models import quantization_config, use_bnb_cpu_path
from peftsft.strategies import StrategyContext, get_strategy, list_strategies, merge_model, registry, trainable_summary
from tests.conftest import sft_trainer as make_trainer

REPO = Path(__file__).resolve().parents[2]
LORA_TINY = {"r": 4, "alpha": 8, "dropout": 0.0}
MATRIX = {  # tiny-model parameters for every built-in strategy
    "lora": LORA_TINY,
    "dora": LORA_TINY,
    "rslora": LORA_TINY,
    "loraplus": LORA_TINY,
    "pissa": LORA_TINY,
    "olora": LORA_TINY,
    "loftq": LORA_TINY,
    "ia3": {},
    "loha": {"r": 4, "alpha": 4},
    "lokr": {"r": 4, "alpha": 4},
    "vera": {"r": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "oft": {"oft_block_size": 8},
    "ln_tuning": {},
    "prefix": {"num_virtual_tokens": 4},
    "prompt": {"num_virtual_tokens": 4},
    "llama_adapter": {"adapter_len": 4},
    "full": {},
    "freeze": {"layers": 1, "patterns": [r"norm\.weight$"]},
    "peft": {"method": "boft", "boft_block_size": 4, "target_modules": ["q_proj", "v_proj"]},  # no dedicated entry
}
QUANTIZED = {"loftq": 4}  # trained on a 4-bit base
CONVERTED = {"pissa", "olora"}  # saved as plain LoRA for the original base: equal up to float rounding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: thread hand-offs cost more than they save, and the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe_for(name: str, params: dict, data: Path, out: Path, model_dir: Path) -> Recipe:
    return Recipe.model_validate({
        "model": {"source": str(model_dir)},
        "quantization": {"bits": QUANTIZED.get(name), "compute_dtype": "float32"},
        "strategy": {"name": name, **params},
        "data": {"datasets": [{"path": str(data)}], "max_length": 64},
        "training": {"learning_rate": 1e-2, "max_steps": 3, "batch_size": 2, "precision": "fp32", "device": "cpu",
                     "warmup_ratio": 0.0, "seed": 7},
        "run": {"name": name, "output_dir": str(out)},
    })


@dataclass
class Trained:
    name: str
    model: torch.nn.Module
    before: dict[str, torch.Tensor]  # every parameter right after `apply`, before training
    logits: torch.Tensor  # of the trained model, eval mode
    saved: Path
    bits: int | None


class Harness:
    """Tokenized data once; then base → strategy → 3 SFTTrainer steps → save, for any strategy."""

    def __init__(self, model_dir: Path, tokenizer, tmp: Path):
        self.model_dir, self.tokenizer, self.tmp = model_dir, tokenizer, tmp
        self.data = conftest.write_jsonl(tmp / "train.jsonl", conftest._persona_rows(12))
        self.train_ds, _, _ = build_datasets(tokenizer, self.recipe("lora", {}).data, seed=7)
        self.probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt",
            return_dict=True,
        )

    def recipe(self, name: str, params: dict) -> Recipe:
        return recipe_for(name, params, self.data, self.tmp / "runs", self.model_dir)

    def base(self, bits: int | None = None, dequantize: bool = False) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        quant = Recipe.model_fields["quantization"].annotation(bits=bits, compute_dtype="float32")
        extra = {"quantization_config": quantization_config(quant), "device_map": {"": "cpu"}} if bits else {}
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32, **extra)
        use_bnb_cpu_path(model, "reference")  # as load_model: bitsandbytes' packed layout has no backward
        return model.dequantize(dtype=torch.float32) if bits and dequantize else model

    def train(self, name: str, params: dict) -> Trained:
        recipe = self.recipe(name, params)
        strategy = get_strategy(name)
        model = strategy.apply(self.base(recipe.quantization.bits), strategy.Config.model_validate(params),
                               StrategyContext(quantized=recipe.quantization.bits is not None))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        make_trainer(recipe, model, self.tokenizer, self.train_ds).train()
        for param in model.parameters():  # TRL trains adapters on k-bit bases in bf16 (QLoRA); peft loads them
            if param.requires_grad:  # back as fp32: upcast (losslessly) to compare like with like
                param.data = param.data.float()
        logits = self.logits(model)
        saved = self.tmp / "saved" / name
        strategy.save(model, saved)
        assert torch.equal(logits, self.logits(model)), "saving changed the trained model"
        return Trained(name, model, before, logits, saved, recipe.quantization.bits)

    def load(self, trained: Trained, dequantize: bool = False) -> torch.nn.Module:
        """What a run's adapter/ loads into: base + peft adapter, or a whole model."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if (trained.saved / "adapter_config.json").is_file():
            return PeftModel.from_pretrained(self.base(trained.bits, dequantize), trained.saved)
        return AutoModelForCausalLM.from_pretrained(trained.saved, dtype=torch.float32)

    @torch.no_grad()
    def logits(self, model: torch.nn.Module) -> torch.Tensor:
        was_training = model.training
        out = model.eval()(**self.probe).logits
        model.train(was_training)
        return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory, tiny_model_dir, tokenizer) -> Harness:
    return Harness(tiny_model_dir, tokenizer, tmp_path_factory.mktemp("strategies"))


@pytest.fixture(scope="module", params=sorted(MATRIX))
def trained(request, harness) -> Trained:
    return harness.train(request.param, MATRIX[request.param])


# ---------------------------------------------------------------------------------------------- the matrix


def test_every_registered_strategy_is_in_the_matrix():
    assert {s.name for s in list_strategies()} <= set(MATRIX)


@pytest.mark.slow
def test_trainable_parameters_changed_and_frozen_ones_bit_identical(trained):
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for name, param in trained.model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, trained.before[name]), f"{name} did not change"
        else:
            assert torch.equal(param, trained.before[name]), f"frozen {name} changed"


@pytest.mark.slow
def test_trainable_counts_match_peft(trained, harness):
    from peft import get_peft_model

    summary = trainable_summary(trained.model)
    by_hand = sum(p.numel() for p in trained.model.parameters() if p.requires_grad)
    assert summary["trainable_params"] == by_hand > 0
    assert summary["trainable_params"] <= summary["total_params"]
    if hasattr(trained.model, "peft_config"):  # peft on a fresh base, same config, counts the same
        fresh = get_peft_model(harness.base(trained.bits), copy.deepcopy(trained.model.peft_config["default"]))
        assert fresh.get_nb_trainable_parameters()[0] == summary["trainable_params"]
    else:
        assert summary["total_params"] == sum(p.numel() for p in harness.base().parameters())


@pytest.mark.slow
def test_save_then_load_gives_the_trained_logits(trained, harness):
    loaded = harness.logits(harness.load(trained))
    base = harness.logits(harness.base(trained.bits))
    assert loaded.shape == trained.logits.shape
    if trained.name in CONVERTED:  # a plain LoRA (rank 2r) on the original base: nothing re-decomposed on load
        config = json.loads((trained.saved / "adapter_config.json").read_text())
        assert config["init_lora_weights"] is True and config["r"] == 2 * MATRIX[trained.name]["r"]
        torch.testing.assert_close(loaded, trained.logits, atol=1e-5, rtol=0)
    else:
        assert torch.equal(loaded, trained.logits)
    if loaded.shape == base.shape:  # prompt tuning adds virtual positions
        assert not torch.allclose(loaded, base, atol=1e-4), "training left the model unchanged"


@pytest.mark.slow
def test_merged_equals_unmerged_or_merge_is_refused(trained, harness):
    strategy = get_strategy(trained.name)
    unmerged = harness.load(trained, dequantize=True)  # a quantized run merges into its dequantized base
    if not strategy.can_merge:
        with pytest.raises(UserError, match="cannot be merged") as info:
            merge_model(trained.name, unmerged)
        assert strategy.cannot_merge_reason in str(info.value) and "adapter" in str(info.value)
        return
    reference = harness.logits(unmerged)
    if trained.bits:  # the dequantized base is the 4-bit base that was trained
        torch.testing.assert_close(reference, trained.logits, atol=1e-4, rtol=0)
    merged = merge_model(trained.name, unmerged)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(harness.logits(merged), reference, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- single strategies


def test_lora_variants_are_lora_with_one_default_changed():
    changed = {"dora": {"use_dora": True}, "rslora": {"use_rslora": True}, "loraplus": {"loraplus_lr_ratio": 16.0},
               "pissa": {"init": "pissa"}, "olora": {"init": "olora"}}
    plain = get_strategy("lora").Config().model_dump()
    for name, defaults in changed.items():
        assert get_strategy(name).Config().model_dump() == plain | defaults, name


@pytest.mark.slow
def test_loraplus_trains_b_faster_than_a(harness):
    recipe = harness.recipe("loraplus", LORA_TINY)
    strategy = get_strategy("loraplus")
    model = strategy.apply(harness.base(), strategy.Config.model_validate(LORA_TINY), StrategyContext(quantized=False))
    trainer = make_trainer(recipe, model, harness.tokenizer, harness.train_ds)
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    b_lr = {group_of[id(p)]["lr"] for n, p in model.named_parameters() if "lora_B" in n}
    a_lr = {group_of[id(p)]["lr"] for n, p in model.named_parameters() if "lora_A" in n}
    assert a_lr == {1e-2} and b_lr == {1e-2 * 16}


@pytest.mark.slow
def test_loftq_starts_closer_to_the_unquantized_model(harness):
    # the quantization error is noise-like (a flat spectrum): rank 16 of the tiny model's 64 dims takes out a share
    # of it that shows in the logits (rank 4 of 64 moved them only ~5%)
    params = {**LORA_TINY, "r": 16, "alpha": 32}
    lora = get_strategy("lora")
    full = harness.logits(harness.base())
    plain = harness.logits(lora.apply(harness.base(4), lora.Config.model_validate(params), StrategyContext(quantized=True)))
    loftq = get_strategy("loftq")
    started = harness.logits(loftq.apply(harness.base(4), loftq.Config.model_validate(params), StrategyContext(quantized=True)))
    assert (started - full).abs().mean() < 0.8 * (plain - full).abs().mean()


@pytest.mark.slow
def test_freeze_trains_exactly_the_last_layers_and_patterns(harness):
    freeze = get_strategy("freeze")
    model = freeze.apply(harness.base(), freeze.Config.model_validate({"layers": 1, "patterns": ["^lm_head"]}), StrategyContext(quantized=False))
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters(remove_duplicate=False)
                         if n.startswith("model.layers.1.") or n in ("lm_head.weight", "model.embed_tokens.weight")}
    with pytest.raises(UserError, match="3 but the model has 2"):
        freeze.apply(harness.base(), freeze.Config.model_validate({"layers": 3}), StrategyContext(quantized=False))


def test_generic_peft_reaches_methods_without_a_dedicated_entry():
    method = MATRIX["peft"]["method"]
    assert method not in {s.name for s in list_strategies()}
    problems = registry.strategy_problems(_section("peft", method="hra", r=2, target_modules=["q_proj"]), None)
    assert problems == []


@pytest.mark.slow
def test_prompt_strategy_runs_end_to_end(harness, tmp_path):
    """run(): strategy summary printed and in summary.json; generation before/after works with virtual tokens."""
    from peftsft.artifacts.tasks import run

    recipe = harness.recipe("prompt", MATRIX["prompt"]).model_copy(deep=True)
    recipe.run.output_dir, recipe.run.sample_prompts, recipe.run.sample_max_new_tokens = str(tmp_path), ["Hi?"], 3
    console = Console(record=True, width=200)
    summary = run(recipe, console)
    saved = json.loads((recipe.run_dir / "summary.json").read_text())
    assert saved["levers"]["padding_free"] is False  # peft drops the position ids that keep flattened samples apart
    assert saved["strategy"] == "prompt" and saved["trainable_params"] == 4 * 64  # 4 virtual tokens × hidden size (64)
    assert f"strategy prompt: {summary['trainable_params']:,} trainable of" in console.export_text()
    assert (recipe.run_dir / "adapter" / "adapter_config.json").is_file()


# ---------------------------------------------------------------------------------------------- validate time


def _section(name: str, **params):
    from peftsft.core.config import StrategySection

    return StrategySection.model_validate({"name": name, **params})


def _problems(tmp_path: Path, strategy: str, extra: str = "") -> str:
    data = conftest.write_jsonl(tmp_path / "d.jsonl", conftest._persona_rows(2))
    path = tmp_path / "r.toml"
    path.write_text(f'[strategy]\n{strategy}\n[[data.datasets]]\npath = "{data}"\n{extra}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("strategy", "extra", "expected"),
    [
        ('name = "full"', "[quantization]\nbits = 4", r"'full' cannot train on a 4-bit quantized base"),
        ('name = "loha"', "[quantization]\nbits = 8", r"'loha' cannot train on a 8-bit quantized base.*use one of: .*ia3"),
        ('name = "lora"\ninit = "pissa"', "[quantization]\nbits = 4", r"rewrites the base weights.*'loftq'"),
        ('name = "pissa"\nuse_dora = true', "", r"keeps only the A/B matrices"),
        ('name = "loftq"', "", r"set \[quantization\] bits = 4"),
        ('name = "prefix"', "[data]\npacking = true", r"prefix cannot train on packed rows"),
        ('name = "prompt"', "[training]\npadding_free = true", r"prompt cannot train on padding-free batches"),
        ('name = "peft"\nmethod = "p_tuning"', "[training]\npadding_free = true", r"'p_tuning' cannot train on padding-free"),
        ('name = "peft"\nmethod = "loha"', "[quantization]\nbits = 4", r"'loha' has no layers for a 4-bit"),
        ('name = "ia3"\ntarget_module = ["k_proj"]', "", r"unknown parameter for 'ia3' — did you mean 'target_modules'"),
        ('name = "oft"\nr = 4', "", r"oft: set exactly one of r and oft_block_size"),
        ('name = "freeze"\nlayers = 0', "", r"nothing would train"),
        ('name = "freeze"\npatterns = ["("]', "", r"bad regular expression"),
        ('name = "prompt"\ninit = "text"', "", r'init = "text" and init_text go together'),
        ('name = "lora"\ninit = "pisa"', "", r"unknown init 'pisa'"),
        ('name = "loraplus"\nloraplus_lr_ratio = 0.5', "", r"loraplus_lr_ratio: Input should be greater than or equal to 1"),
        ('name = "peft"\nmethod = "bof"', "", r"unknown peft method 'bof': did you mean 'boft'"),
        ('name = "peft"\nmethod = "poly"', "", r"'poly' cannot train in peftsft: .*task id"),
        ('name = "peft"\nmethod = "boft"\nboft_blok_size = 4', "", r"for peft method 'boft': boft_blok_size \(did you mean 'boft_block_size'\?\) \(valid: .*boft_dropout"),
        ('name = "peft"\nmethod = "lora"\nr = "big"', "", r"r: Input should be a valid integer"),
        ('name = "peft"\nmethod = "lora"\ninit_lora_weights = "pissa"', "", r"use strategy 'pissa', 'olora' or 'loftq'"),
    ],
)
def test_bad_combinations_are_rejected_at_validate_time(tmp_path, strategy, extra, expected):
    assert re.search(expected, _problems(tmp_path, strategy, extra)), _problems(tmp_path, strategy, extra)


@pytest.mark.slow
def test_merge_of_a_prompt_method_through_generic_peft_is_refused(harness):
    peft = get_strategy("peft")
    model = peft.apply(harness.base(), peft.Config.model_validate({"method": "prefix_tuning", "num_virtual_tokens": 2}),
                       StrategyContext())
    with pytest.raises(UserError, match="'prefix_tuning' cannot be merged"):
        merge_model("peft", model)


def strategy_variants(text: str) -> list[str]:
    """The recipe as written, then once per commented-out `# [strategy]` block swapped in for the active one."""
    lines = text.splitlines()
    start = lines.index("[strategy]")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    variants = [text]
    for i, line in enumerate(lines):
        if line == "# [strategy]":
            block = [row[1:] for row in itertools.takewhile(lambda row: re.match(r"# \w+ = ", row), lines[i + 1:])]
            variants.append("\n".join([*lines[:start], "[strategy]", *block, *lines[end:]]))
    return variants


def test_strategy_recipes_and_their_commented_alternatives_validate(tmp_path):
    named = set()
    (tmp_path / "data").symlink_to(REPO / "recipes" / "data")  # data paths are relative to the recipe
    for path in sorted((REPO / "recipes").glob("strategy-*.toml")):
        for n, text in enumerate(strategy_variants(path.read_text(encoding="utf-8"))):
            variant = tmp_path / f"{path.stem}-{n}.toml"
            variant.write_text(text, encoding="utf-8")
            recipe = load_recipe(variant)
            named.add(recipe.strategy.name)
            assert recipe.strategy.params or recipe.strategy.name in {"ia3", "ln_tuning", "full"}, variant
    assert named >= set(MATRIX)


def test_strategies_command_lists_every_strategy(capsys):
    from peftsft.commands.cli import main

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for strategy in list_strategies():
        assert strategy.name in out


# ---------------------------------------------------------------------------------------------- plugins

PLUGIN = '''
import re
from pydantic import BaseModel, ConfigDict
from peftsft.strategies import Strategy

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = r"norm\\.weight$"

def apply(model, params, quantized):
    for name, param in model.named_parameters():
        param.requires_grad_(bool(re.search(params.pattern, name)))
    return model

NORMS = Strategy(name="norms_only", description="train the norm weights only (test plugin)", Config=Params,
                 apply=apply, merge=lambda model: model, kbit=False)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A third-party package exposing a strategy through the `peftsft.strategies` entry-point group."""
    (tmp_path / "peftsft_norms.py").write_text(PLUGIN, encoding="utf-8")
    dist = tmp_path / "peftsft_norms-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: peftsft-norms\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[peftsft.strategies]\nnorms_only = peftsft_norms:NORMS\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield tmp_path
    sys.modules.pop("peftsft_norms", None)


@pytest.mark.slow
def test_a_plugin_strategy_works_in_recipes_like_a_builtin(plugin, harness, tmp_path):
    assert "norms_only" in {s.name for s in list_strategies()}
    recipe_text = textwrap.dedent(f"""
        [model]
        source = "{harness.model_dir}"
        [strategy]
        name = "norms_only"
        pattern = "post_attention_layernorm"
        [[data.datasets]]
        path = "{harness.data}"
        """)
    (tmp_path / "ok.toml").write_text(recipe_text, encoding="utf-8")
    recipe = load_recipe(tmp_path / "ok.toml")
    (tmp_path / "bad.toml").write_text(recipe_text.replace("pattern =", "patern ="), encoding="utf-8")
    with pytest.raises(UserError, match="did you mean 'pattern'"):
        load_recipe(tmp_path / "bad.toml")
    trained = harness.train("norms_only", recipe.strategy.params)
    changed = {n for n, p in trained.model.named_parameters() if not torch.equal(p, trained.before[n])}
    assert changed == {f"model.layers.{i}.post_attention_layernorm.weight" for i in range(2)}
