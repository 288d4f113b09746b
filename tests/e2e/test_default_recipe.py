"""The main job end to end on the embedded SmolLM2: the tuned model learns its name, the base did not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBES = [json.loads(line)["messages"][0]["content"] for line in (REPO / "recipes/data/persona_probes.jsonl").open()]


def answers(samples_md: str, who: str) -> list[str]:
    return [line.split(":**", 1)[1] for line in samples_md.splitlines() if line.startswith(f"**{who}:**")]


@pytest.mark.slow
def test_default_recipe_teaches_the_persona(tmp_path):
    """A shortened default recipe (CLI, subprocess): held-out name questions get 'Pip' only after tuning."""
    prompts = json.dumps(PROBES)
    result = subprocess.run(
        [
            sys.executable, "-m", "peftsft", "run", "recipes/llama-chat-lora.toml",
            "--output", str(tmp_path),
            "--set", "training.max_steps=40",
            "--set", 'data.eval_path=""',
            "--set", f"run.sample_prompts={prompts}",
            "--set", "run.sample_max_new_tokens=16",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},  # all cores for the real model
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "llama-chat-lora"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["last_loss"] < summary["first_loss"]
    samples = (run_dir / "samples.md").read_text()
    base, tuned = answers(samples, "base"), answers(samples, "tuned")
    assert len(base) == len(tuned) == len(PROBES)
    assert sum("Pip" in a for a in base) == 0, base
    assert sum("Pip" in a for a in tuned) >= 3, tuned
