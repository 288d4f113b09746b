"""`eval`: held-out chat data → loss and perplexity on assistant tokens, plus answer metrics against the
reference (each row's last assistant message), for the base and the tuned model side by side.

The scoring itself (answer metrics, tool-call metrics, the held-out split) lives in the training layer
(training.scoring, training.tool_scoring, training.held_out), which the evaluations during training share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.core.errors import UserError
from peftsft.data.tools import tools_of, with_tools
from peftsft.training.held_out import EvalRow, held_out_conversations, score_answers  # noqa: F401 (shared)
from peftsft.training.scoring import ANSWER_METRICS, answer_metrics, assistant_loss, token_f1  # noqa: F401
from peftsft.training.scoring import contains_reference, exact_match, normalize  # noqa: F401 (shared)
from peftsft.training.tool_scoring import TOOL_METRICS, expected_calls

LOWER_IS_BETTER = {"eval_loss", "perplexity"}


@dataclass
class EvalRequest:
    """What `eval` was asked for (the command line's options, parsed)."""

    model: str
    data: str | None = None
    out: str | None = None
    base: str | None = None
    compare: bool = True
    max_new_tokens: int = 256
    batch_size: int = 4
    limit: int | None = None
    device: str = "auto"


# ---------------------------------------------------------------------------------------------- data


def with_system(conversations: list, system: str | None) -> list:
    if not system:
        return conversations
    head = [{"role": "system", "content": system}]
    return [c if isinstance(c, str) or c[0]["role"] == "system" else with_tools(head + c, tools_of(c))
            for c in conversations]


# ---------------------------------------------------------------------------------------------- running


def evaluate_model(model, tokenizer, rows: list[EvalRow], max_length: int, max_new_tokens: int, batch_size: int):
    """(metrics, predictions) for one model: loss over every row, answers where a reference exists."""
    from peftsft.generation import Sampling, answer_batch

    metrics = assistant_loss(model, tokenizer, [r.messages for r in rows], max_length, batch_size)
    answerable = [r for r in rows if r.answerable]
    predictions = answer_batch(
        model, tokenizer, [r.prompt for r in answerable], Sampling(max_new_tokens=max_new_tokens), batch_size
    )
    return metrics | score_answers(predictions, answerable), predictions


def run_eval(loaded, rows: list[EvalRow], compare: bool, max_length: int, max_new_tokens: int, batch_size: int,
             console: Console) -> dict:
    """Evaluate the base (when comparing) and the tuned model; the report saved as eval.json."""
    results, predictions = {}, {}
    for side in (["base", "tuned"] if compare else ["tuned"]):
        with console.status(f"evaluating {side} on {len(rows)} row(s)"), loaded.use(side) as model:
            results[side], predictions[side] = evaluate_model(
                model, loaded.tokenizer, rows, max_length, max_new_tokens, batch_size
            )
    answerable = [r for r in rows if r.answerable]
    samples = [
        {"prompt": list(r.prompt), "reference": r.reference, **_expected(r),
         **{side: predictions[side][i] for side in predictions}}
        for i, r in enumerate(answerable)
    ]
    return {"results": results, "answers": samples, "answered_rows": len(answerable)}


def _expected(row: EvalRow) -> dict:
    calls = expected_calls(row.messages)
    return {"expected_tool_calls": [{"name": n, "arguments": a} for n, a in calls]} if calls else {}


def evaluate_chat(request: EvalRequest, console: Console) -> Path:
    """Base vs tuned on held-out chat data; the report is saved as JSON (returned: where)."""
    from peftsft.core.rundir import RunDir, write_json
    from peftsft.loading import load

    if request.batch_size < 1 or request.max_new_tokens < 1 or (request.limit is not None and request.limit < 1):
        raise UserError("--batch-size, --max-new-tokens and --limit must be at least 1")
    with console.status(f"loading {request.model}"):
        loaded = load(request.model, request.device, base=request.base)
    compare = loaded.has_base and not not request.compare
    conversations, source = held_out_conversations(loaded.recipe, request.data)
    conversations = with_system(conversations[: request.limit], loaded.system_prompt)
    if not conversations:
        raise UserError(f"{source}: no rows to evaluate")
    max_length = loaded.recipe.data.max_length if loaded.recipe else 1024
    report = run_eval(loaded, [EvalRow(c) for c in conversations], compare, max_length, request.max_new_tokens,
                      request.batch_size, console)
    report = {"model": request.model, "base": loaded.base_source if compare else None, "data": source,
              "rows": len(conversations), "max_length": max_length, "max_new_tokens": request.max_new_tokens, **report}
    report["general"] = general_report(loaded, compare, console)
    default_out = RunDir(request.model).eval_file if loaded.kind == "run" else Path("eval.json")
    out = Path(request.out) if request.out else default_out
    write_json(out, report)
    console.print(results_table(report["results"], f"{source}: {len(conversations)} row(s)"))
    return out


def general_report(loaded, compare: bool, console: Console) -> dict | None:
    """The general check of training (training.general_check), on the tuned model and, when comparing, its base."""
    from peftsft.training.general_check import GeneralCheck, describe, for_summary

    check = GeneralCheck.for_recipe(loaded.recipe)
    if check is None:
        return None
    scores = {}
    for side in (["base", "tuned"] if compare else ["tuned"]):
        with console.status(f"general check: {side}"), loaded.use(side) as model:
            scores[side] = check.score(model, loaded.tokenizer)
    if not compare:
        return {"tuned": {k: v for k, v in scores["tuned"].items() if k not in ("answers", "right_answers")}}
    result = check.compare(scores["base"], scores["tuned"])
    console.print(describe(result) + (" — [bold yellow]past the limit[/]" if result["regressed"] else ""))
    return for_summary(result)


def results_table(results: dict[str, dict], title: str) -> Table:
    """Metrics as rows, models as columns, and the change from base to tuned."""
    table = Table(title=title)
    table.add_column("metric")
    for side in results:
        table.add_column(side, justify="right")
    compare = len(results) == 2
    if compare:
        table.add_column("change", justify="right")
    for metric in ("eval_loss", "perplexity", *ANSWER_METRICS, *TOOL_METRICS):
        values = [results[side].get(metric) for side in results]
        if values[0] is None:
            continue
        row = [metric + (" ↓" if metric in LOWER_IS_BETTER else " ↑"), *(f"{v:.4g}" for v in values)]
        if compare:
            row.append(_change(metric, values[0], values[1]))
        table.add_row(*row)
    return table


def _change(metric: str, base: float, tuned: float) -> str:
    better = tuned < base if metric in LOWER_IS_BETTER else tuned > base
    colour = "green" if better else ("red" if tuned != base else "dim")
    return f"[{colour}]{tuned - base:+.4g}[/]"
