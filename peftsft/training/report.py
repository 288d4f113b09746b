"""What a finished run leaves behind besides the adapter: loss.png, samples.md, summary.json."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from peftsft.core.rundir import write_text

PACKAGES = ("peftsft", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "rich")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def plot_loss(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_samples(
    path: Path, prompts: list[str], before: list[str], after: list[str], general: dict | None = None,
    start: str = "base",
) -> None:
    """The start model's (`start`: "base", or "SFT model" for a run that continued one) vs the tuned model's answers
    to the sample prompts, then the general check (when it ran)."""
    lines = [f"# Samples: {start} vs tuned model", "", "Greedy answers to the same prompts, before and after training.",
             ""]
    for prompt, old, new in zip(prompts, before, after):
        lines += [f"## {prompt}", "", f"**{start}:** {old}", "", f"**tuned:** {new}", ""]
    write_text(path, "\n".join(lines + (general_section(general) if general else [])))


def general_section(result: dict) -> list[str]:
    """samples.md's general check: the scores, then every answer that turned wrong (or right) in training."""
    base, tuned, change = result["base"], result["tuned"], result["change"]
    verdict = "**forgetting: past the limit**" if result["regressed"] else "within the limit"
    lines = [
        "# General check", "",
        f"{base['rows']} held-out general questions ({', '.join(result['sources'])}), greedy answers; "
        f"limit {result['max_general_regression']:.0%}: {verdict}.", "",
        "| | base | tuned | change |", "|---|--:|--:|--:|",
        f"| loss on reference answers | {base['loss']:.4f} | {tuned['loss']:.4f} | {change['loss_relative']:+.1%} |",
        f"| right (answer contains the expected) | {base['right']}/{base['rows']} | {tuned['right']}/{tuned['rows']} "
        f"| {change['accuracy'] * 100:+.1f} points |",
        f"| exact match | {base['exact_match']:.1%} | {tuned['exact_match']:.1%} | {change['exact_match'] * 100:+.1f} points |", "",
    ]
    for title, lost in (("Turned wrong", True), ("Turned right", False)):
        flips = [a for a in result["answers"] if a["base_right"] == lost and a["tuned_right"] != lost]
        lines += [f"## {title} ({len(flips)})", ""]
        for a in flips:
            lines += [f"- {a['prompt']} (expected: {' / '.join(a['expect'])})", f"  - base: {one_line(a['base'])}",
                      f"  - tuned: {one_line(a['tuned'])}"]
        lines += [""]
    return lines


def one_line(text: str) -> str:
    """An answer inside a markdown list item: its line breaks would end the item."""
    return " ".join(text.split())
