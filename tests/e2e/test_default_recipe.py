"""The main job end to end on the embedded SmolLM2: the tuned model learns its name on held-out questions, still
answers general questions (without the name), and its eval loss beats the base's on the same eval data.

The probes and their scoring live in probes.py and are tested without training in tests/unit/test_probes.py.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.probes import (
    NAME_PROBES, NEGATIVE_PROBES, REPO, name_probe_failures, near_duplicates, negative_probe_failures,
    training_questions,
)

STEPS = 40
ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # all cores for the real model


def answers(samples_md: str, who: str) -> list[str]:
    return [line.split(":**", 1)[1] for line in samples_md.splitlines() if line.startswith(f"**{who}:**")]


def peftsft(*args: str, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "peftsft", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_recipe_teaches_the_persona(tmp_path):
    """A shortened default recipe (CLI, subprocess), its eval data on: names on held-out probes, general answers
    right and nameless, tuned eval loss below the base's."""
    prompts = [*NAME_PROBES, *NEGATIVE_PROBES]
    assert not near_duplicates(prompts, training_questions())  # held out, not only verbatim
    peftsft(
        "run", "recipes/llama-chat-lora.toml", "--output", str(tmp_path),
        "--set", f"training.max_steps={STEPS}",
        "--set", f"run.sample_prompts={json.dumps(prompts)}",
        "--set", "run.sample_max_new_tokens=24",
        timeout=3000,
    )
    run_dir = tmp_path / "llama-chat-lora"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["last_loss"] < summary["first_loss"]

    samples = (run_dir / "samples.md").read_text()
    base, tuned = answers(samples, "base"), answers(samples, "tuned")
    assert len(base) == len(tuned) == len(prompts)
    n = len(NAME_PROBES)
    assert not any("Pip" in a for a in base[:n]), base  # the base does not already know the name
    problems = name_probe_failures(tuned[:n]) + negative_probe_failures(tuned[n:])
    assert not problems, problems

    # the base model's loss on the same eval data (persona_eval.jsonl), through `peftsft eval`; 1 new token:
    # only the losses are wanted here, not the answer metrics
    out = tmp_path / "eval.json"
    peftsft("eval", str(run_dir), "--max-new-tokens", "1", "--out", str(out), timeout=1200)
    results = json.loads(out.read_text())["results"]
    assert summary["eval_loss"] is not None
    assert results["tuned"]["eval_loss"] < results["base"]["eval_loss"], results
    assert summary["eval_loss"] < results["base"]["eval_loss"], (summary["eval_loss"], results)

    # the general-ability check ran before and after, and the persona did not cost general ability
    general = summary["general"]
    assert general["base"]["rows"] == 32 and general["seconds"] > 0
    assert general["regressed"] is False and general["change"]["loss_relative"] <= 0.10, general
    assert general["tuned"]["right"] >= general["base"]["right"] - 3, general
    assert "# General check" in samples
