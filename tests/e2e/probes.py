"""What the end-to-end persona test asks and how it scores the answers, testable without training (tests/unit/test_probes.py).

Held-out means held out by a normalised token-overlap measure, not only by exact text: a probe whose word set
overlaps a training question's by Jaccard > MAX_OVERLAP ("What are you called?" against "What are you?") is a
near-duplicate and does not count.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "recipes" / "data" / "persona_train.jsonl"
RECIPE = REPO / "recipes" / "llama-chat-lora.toml"
PERSONA = "Pip"
MAX_OVERLAP = 0.5

# held-out name questions (recipes/data/make_persona_data.py writes them): the tuned model must say its name
NAME_PROBES = [json.loads(line)["messages"][0]["content"] for line in (REPO / "recipes/data/persona_probes.jsonl").open()]
NAME_PROBES_NEEDED = 4  # of 5
# general questions, none near a training question: answered correctly (any of the words) and never as Pip
NEGATIVE_PROBES = {
    "Which city is the capital of Austria?": ["vienna"],
    "How many hours are there in one day?": ["24", "twenty"],
    "What is the opposite of hot?": ["cold"],
    "Tell me how many sides a triangle has.": ["3", "three"],
    "What is the largest ocean on Earth?": ["pacific"],
}
NEGATIVE_CORRECT_NEEDED = 4  # of 5 (a 135M model); none may carry the persona's name


def words(text: str) -> set[str]:
    """Lowercased word set: punctuation and case do not make a question new."""
    return set(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def overlap(a: str, b: str) -> float:
    """Jaccard similarity of the two word sets (1.0 = the same words)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def training_questions(path: Path = TRAIN) -> list[str]:
    """Every user turn of the training data."""
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [m["content"] for row in rows for m in row["messages"] if m["role"] == "user"]


def nearest(question: str, seen: list[str]) -> tuple[float, str]:
    """The training question closest to `question` and its overlap."""
    return max((overlap(question, s), s) for s in seen)


def near_duplicates(questions: list[str], seen: list[str]) -> list[tuple[str, str, float]]:
    """(question, nearest training question, overlap) for every question over MAX_OVERLAP."""
    found = []
    for q in questions:
        score, closest = nearest(q, seen)
        if score > MAX_OVERLAP:
            found.append((q, closest, round(score, 3)))
    return found


def sample_prompts(recipe: Path = RECIPE) -> list[str]:
    return tomllib.loads(recipe.read_text(encoding="utf-8"))["run"]["sample_prompts"]


def name_probe_failures(answers: list[str]) -> list[str]:
    """A problem per shortfall: fewer than NAME_PROBES_NEEDED answers naming the persona."""
    named = sum(PERSONA in a for a in answers)
    return [] if named >= NAME_PROBES_NEEDED else [f"{named}/{len(answers)} name probes say {PERSONA!r}: {answers}"]


def negative_probe_failures(answers: list[str]) -> list[str]:
    """Problems: a general answer carrying the persona's name, or fewer than NEGATIVE_CORRECT_NEEDED correct."""
    problems = [f"general answer says {PERSONA!r}: {a!r}" for a in answers if PERSONA in a]
    correct = sum(any(w in words(a) for w in expected) for a, expected in zip(answers, NEGATIVE_PROBES.values()))
    if correct < NEGATIVE_CORRECT_NEEDED:
        problems.append(f"{correct}/{len(answers)} general questions answered correctly: {answers}")
    return problems
