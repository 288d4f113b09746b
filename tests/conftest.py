"""Shared fixtures: the embedded SmolLM2 (converted once, cached) and a tiny Llama with its real tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run tiny models: one thread each is as fast and avoids oversubscribing a shared 2-core machine
# (subprocesses inherit it; the SmolLM2 end-to-end test lifts it for its own run).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from peftsft.core.config import DEFAULT_MODEL  # noqa: E402
from peftsft.models import materialize, resolve_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PERSONA_TRAIN = REPO / "recipes" / "data" / "persona_train.jsonl"


torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# `make mutation` (mutmut) runs each mutant's tests in a process forked from one that collected the tests once.
# Three things keep a mutant's run short (scripts/mutation.py, docs/tests.md): the session fixtures that involve no
# peftsft code (the tokenizer, the tiny model) are built once in that process instead of once per mutant; a mutant's
# tests run fastest first (mutmut stops at the first failure), by their whole measured time; and with
# MUTATION_TEST_BUDGET set, only the fastest of them that fit in that many measured seconds run (a mutant that only a
# slower test would kill then counts as survived: the score can only come out lower).
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ
DURATIONS = Path("mutation-test-durations.json")  # written by mutmut's stats run, in mutants/ (its working dir)
_PREBUILT: dict = {}  # built once before forking: what no mutant can change


def pytest_sessionstart(session):
    if UNDER_MUTMUT:
        release_inherited_signals()


def release_inherited_signals() -> None:
    """Give SIGTERM and SIGCHLD back their default actions in a mutant's test process.

    mutmut 3.8's fork server forks each mutant's test process after installing its own handlers, and the process keeps
    them: on SIGTERM the server's handler SIGKILLs every test process the server had running. The data build's worker
    processes (forked from a test) inherit it too, so stopping one (run_sharded terminates the shards after an error, and
    any still alive at its end) killed the mutant checked beside it, which mutmut then filed as "segfault".
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def pytest_collection_finish(session):
    if UNDER_MUTMUT and session.config.option.collectonly and not _PREBUILT:
        import tempfile

        from transformers import AutoTokenizer

        _PREBUILT["smollm_dir"] = Path(materialize(resolve_source(DEFAULT_MODEL)))
        _PREBUILT["tokenizer"] = AutoTokenizer.from_pretrained(_PREBUILT["smollm_dir"])
        out = Path(tempfile.mkdtemp(prefix="peftsft-mutation-tiny-llama-"))
        _PREBUILT["tiny_model_dir"] = _build_tiny_model(out, _PREBUILT["tokenizer"])


_TIMES: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if UNDER_MUTMUT and os.environ.get("MUTANT_UNDER_TEST") == "stats":  # setup, call and teardown
        _TIMES[report.nodeid] = _TIMES.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    if _TIMES:
        DURATIONS.write_text(json.dumps({**_read_durations(), **_TIMES}))


def _read_durations() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


def _fastest_first(config, items) -> None:
    durations = _read_durations()
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))  # a test too new to be measured goes first
    budget, spent, keep = float(os.environ.get("MUTATION_TEST_BUDGET", "inf")), 0.0, 0
    for item in items:
        spent += durations.get(item.nodeid, 0.0)
        if keep and spent > budget:
            break
        keep += 1
    if keep < len(items):
        config.hook.pytest_deselected(items=items[keep:])
        del items[keep:]


def pytest_collection_modifyitems(config, items):
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        _fastest_first(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The embedded SmolLM2, dequantized from its GGUF into the peftsft cache (once per machine)."""
    return _PREBUILT.get("smollm_dir") or Path(materialize(resolve_source(DEFAULT_MODEL)))


@pytest.fixture(scope="session")
def tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    return _PREBUILT.get("tokenizer") or AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_dir, tokenizer) -> Path:
    return _PREBUILT.get("tiny_model_dir") or _build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def _build_tiny_model(out: Path, tokenizer) -> Path:
    """A 2-layer, hidden-64 Llama with SmolLM2's real tokenizer and chat template, saved as a local model dir.

    Hidden 64, MLP 128, 2 KV heads of 16: every linear layer has in_features a multiple of bitsandbytes' 64-weight
    block and out_features a multiple of 32, the shapes its packed CPU 4-bit layout (AVX-512-BF16) accepts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # no pad_token_id: SmolLM2 pads with its end-of-turn token, and a padding_idx embedding starts at zero
        # (tied to the LM head), so the model could never learn to stop
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """A fast recipe on the tiny model; returns a writer taking extra TOML text appended to it."""

    def make(extra: str = "", rows: list | None = None) -> Path:
        return write_tiny_recipe(tmp_path, tiny_model_dir, extra, rows)

    return make


def lora_recipe_head(model_dir, data, r: int = 8) -> str:
    """A test recipe's [model], [strategy] (LoRA r, alpha 2r, no dropout) and [[data.datasets]] tables."""
    return f"""
[model]
source = "{model_dir}"
[strategy]
name = "lora"
r = {r}
alpha = {2 * r}
dropout = 0.0
[[data.datasets]]
path = "{data}"
"""


def write_tiny_recipe(directory: Path, model_dir: Path, extra: str = "", rows: list | None = None) -> Path:
    """directory/recipe.toml (+ train.jsonl): LoRA on `model_dir`, 3 steps, outputs in directory/runs."""
    data = write_jsonl(directory / "train.jsonl", rows or _persona_rows(24))
    recipe = directory / "recipe.toml"
    recipe.write_text(
        lora_recipe_head(model_dir, data, r=4)
        + f"""
[data]
max_length = 128

[training]
learning_rate = 1e-2
max_steps = 3
batch_size = 4
logging_steps = 1
seed = 7

[run]
name = "tiny"
output_dir = "{directory / 'runs'}"
{extra}
""",
        encoding="utf-8",
    )
    return recipe


def _persona_rows(n: int) -> list[str]:
    return PERSONA_TRAIN.read_text(encoding="utf-8").splitlines()[:n]


TINY_BASE_ID = "peftsft-test/tiny-llama"  # the tiny model's stand-in public id (cards, push, Hub-cache loading)


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished 3-step LoRA run on the tiny model with verified adapter and merged exports in <run>/exports/."""
    from rich.console import Console

    from peftsft.artifacts.tasks import run
    from peftsft.training.recipe import load_recipe

    extra = ('sample_prompts = ["What is your name?"]\nsample_max_new_tokens = 4\n'
             '[export]\nformats = ["adapter", "merged"]')
    recipe = write_tiny_recipe(tmp_path_factory.mktemp("exported-run"), tiny_model_dir, extra)
    overrides = [f'model.base_id="{TINY_BASE_ID}"', 'model.license="apache-2.0"', "data.eval_fraction=0.25"]
    return Path(run(load_recipe(recipe, overrides), Console(quiet=True))["run_dir"])


def decide(recipe, device: str = "cpu", longest: int | None = 64, model=None):
    """The run's levers for `recipe` on `device`, decided on `model` (default: a meta-device skeleton of it)."""
    from peftsft.levers import decide_levers
    from peftsft.levers import skeleton

    model = model if model is not None else skeleton(recipe, device, [])[0]
    return decide_levers(recipe, device, model, longest)


def sft_trainer(recipe, model, tokenizer, train_ds, eval_ds=None, callbacks=(), levers=None):
    """TRL's SFTTrainer as a chat run builds it: the levers decided on the model, its dtypes set around the build
    (the patches are not applied: `peftsft.levers.applied` does that while training)."""
    from peftsft.tasks.chat import sft_trainer as build
    from peftsft.levers import build_trainer as with_levers

    longest = max(len(ids) for ids in train_ds["input_ids"])
    levers = levers or decide(recipe, "cpu", longest, model)
    return with_levers(levers, model, lambda: build(recipe, model, tokenizer, train_ds, eval_ds, "cpu",
                                                    list(callbacks), levers))
