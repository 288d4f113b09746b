"""The reference chat job (issue 24): 96 generated chat rows of 30–260 tokens, always the same.

Generated rather than read from a file so that the job is fixed by this code alone: a seeded choice of plain
English words, one user turn and one assistant reply per row, lengths spread over 30–260 tokens after SmolLM2's
chat template (more long rows than short ones, like real SFT data).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROWS, SEED = 96, 24
WORDS = (
    "the model learns to answer short questions about recipes data training memory speed adapters layers tokens "
    "batch length loss value step rate order file run check plan time core machine test cache path text reply "
    "user assistant a an of to in on for with and or but not when then so because each every one two three few "
    "many more less first last next small large fast slow clear simple exact same other new old good right wrong "
    "is are was were be been has have had do does did can could should would may might will shall must"
).split()


SYSTEM = {"role": "system", "content": "Be brief."}  # short, so that the shortest rows stay near 30 tokens


def chat_rows(rows: int = ROWS, seed: int = SEED) -> list[dict]:
    """`rows` conversations; the word count of row i targets a length in 30–260 tokens, template included."""
    rng = random.Random(seed)
    targets = [30 + int(230 * ((i + 0.5) / rows) ** 0.6) for i in range(rows)]
    rng.shuffle(targets)
    out = []
    for target in targets:
        words = max(2, round((target - 25) / 1.04))  # ~23 template tokens with the short system turn, ~1.04 per word
        question = max(1, words // 4)
        user = " ".join(rng.choice(WORDS) for _ in range(question)).capitalize() + "?"
        reply = " ".join(rng.choice(WORDS) for _ in range(words - question)).capitalize() + "."
        out.append({"messages": [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return out


def write_chat_rows(path: Path, rows: int = ROWS, seed: int = SEED) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(rows, seed)), encoding="utf-8")
    return rows


# issue 24's job: LoRA r16/α32 all-linear, dropout 0, batch 4, 1 epoch of the 96 rows, lr 1e-4, max length 512
REFERENCE = {
    "full": {"arms": "lora", "batch": 4, "seq_len": 512, "warmup": 1, "steps": ROWS // 4 - 1, "budget": 3600.0},
    "quick": {"arms": "lora", "batch": 2, "seq_len": 128, "warmup": 1, "steps": 3, "budget": 600.0},
    "learning_rate": 1e-4,
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
}


def reference_rows(path: Path, count: int) -> int:
    """The first `count` rows of the job (all 96 for one epoch at batch 4)."""
    write_chat_rows(path, ROWS)
    rows = path.read_text(encoding="utf-8").splitlines()[:count]
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return len(rows)
