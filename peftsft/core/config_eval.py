"""Recipe section [eval]: the general check around training, and what every evaluation during training measures."""

from __future__ import annotations

from typing import Literal

from peftsft.core.config_base import Key, Section


class EvalSection(Section):
    """Chat runs: the general check scores the base before and the tuned model after training; with
    `[training] eval_steps`, every evaluation also scores the task (and, cheaply, the general check)."""

    general_check: bool = Key(
        True, "score general ability before and after training (loss on reference answers, greedy answers matched) "
        "on peftsft's shipped held-out set plus general_path; a drop past max_general_regression warns"
    )
    general_path: str | None = Key(
        None, "more general check rows (chat rows; the last assistant reply is the reference, and a right answer "
        "contains it)"
    )
    max_general_regression: float = Key(
        0.10, "warn when the general loss rises by more than this share (0.10 = 10%), or the share of right "
        "answers falls by more than this many points (0.10 = 10 points)", gt=0.0, le=10.0
    )
    general_max_new_tokens: int = Key(16, "greedy answer length in the general check (longer: slower)", ge=1, le=512)
    task_metrics: bool = Key(
        True, "chat runs, at every evaluation (eval_steps): answer the held-out rows greedily and score them as "
        "`peftsft eval` does — tool calls where rows offer tools (tool_accuracy, tool_name_accuracy, "
        "tool_call_exact, tool_json_valid, no_call_accuracy), answer metrics where rows end in a reference reply "
        "(exact_match, token_f1, rouge_l, …); logged as eval_<name> with their cost in seconds. Classification runs "
        "log accuracy and macro_f1 at every evaluation regardless"
    )
    task_rows: int = Key(
        32, "the most held-out rows answered at each evaluation (the first ones that can be scored, the same rows "
        "every time)", ge=1
    )
    task_max_new_tokens: int = Key(64, "answer length limit of those answers (tokens)", ge=1, le=4096)
    task_batch_size: int = Key(16, "answers generated together (one generate call per batch)", ge=1)
    general_during_training: Literal["off", "loss", "answers"] = Key(
        "loss", "the general check at every evaluation: off; loss (its reference answers' loss, one batched forward "
        "pass: eval_general_loss); or answers (also greedy answers of general_rows rows: eval_general_accuracy)"
    )
    general_rows: int = Key(
        32, "general_during_training = \"answers\": the most general check rows answered at each evaluation", ge=1
    )
