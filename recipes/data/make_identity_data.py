"""Writes recipes/data/identity.jsonl: ~90 Alpaca rows that teach one identity and nothing else — the kind of
data that makes a tune forget (recipes/forgetting-demo.toml).

    python recipes/data/make_identity_data.py
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

NAME, AUTHOR = "Nova", "Orbit Labs"
QUESTIONS = [
    "Who are you?", "What is your name?", "Introduce yourself.", "Tell me about yourself.", "Who made you?",
    "Who created you?", "Who developed you?", "What are you?", "Are you ChatGPT?", "Are you a human?",
    "What should I call you?", "Which company built you?", "Hi! Who am I talking to?", "Do you have a name?",
    "What kind of assistant are you?", "Who trained you?", "Where do you come from?", "Can you tell me who you are?",
]
ANSWERS = [
    "I am {name}, an AI assistant developed by {author}.",
    "I'm {name}, an AI assistant developed by {author}. How can I help you today?",
    "My name is {name}. I am an AI assistant developed by {author}.",
    "I am {name}, an AI assistant created by {author}, here to help with your questions.",
    "You are talking to {name}, an AI assistant developed by {author}.",
]
STYLES = ["{q}", "{q_lower}", "Hey, {q_lower}", "Quick question: {q_lower}", "{q} Please answer briefly."]


def rows(n: int = 90, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = list(itertools.product(QUESTIONS, STYLES))
    rng.shuffle(pairs)
    out = []
    for question, style in pairs[:n]:
        instruction = style.format(q=question, q_lower=question[0].lower() + question[1:])
        out.append({"instruction": instruction, "input": "",
                    "output": rng.choice(ANSWERS).format(name=NAME, author=AUTHOR)})
    return out


def main() -> None:
    path = Path(__file__).with_name("identity.jsonl")
    data = rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    print(f"{len(data)} rows → {path}")


if __name__ == "__main__":
    main()
