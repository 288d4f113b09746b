"""`eval`: held-out chat data → loss and perplexity on assistant tokens, plus answer metrics against the
reference (each row's last assistant message), for the base and the tuned model side by side.

Answer metrics compare texts normalised the usual (SQuAD) way: lowercase, punctuation removed, whitespace
collapsed. ROUGE-L (F-measure, `rouge-score`) and BLEU (corpus-level, 0-100, `sacrebleu`, effective n-gram
order) use the raw texts. Rows that offer tools are also scored on their tool calls (evaluate_tools.py).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.artifacts.evaluate_tools import TOOL_METRICS, expected_calls, tool_metrics
from peftsft.core.errors import UserError
from peftsft.data.tools import tools_of, with_tools
from peftsft.training.scoring import assistant_loss, contains_reference, exact_match, normalize  # noqa: F401 (shared)

ANSWER_METRICS = ("exact_match", "contains_reference", "token_f1", "rouge_l", "bleu")
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


# ---------------------------------------------------------------------------------------------- metrics


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean per-answer scores, ROUGE-L F-measure, and corpus BLEU (0-100)."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    if not references:
        return {}
    n = len(references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(predictions, references))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "contains_reference": sum(contains_reference(p, r) for p, r in pairs) / n,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / n,
        # effective order: short answers have no 4-grams, which would make plain BLEU 0 even for exact copies
        "bleu": BLEU(effective_order=True).corpus_score(predictions, [references]).score,
    }


# ---------------------------------------------------------------------------------------------- data


@dataclass
class EvalRow:
    messages: list[dict] | str  # a conversation, or plain text (format "text": loss only)

    @property
    def reference(self) -> str | None:
        last = self.messages[-1] if isinstance(self.messages, list) else None
        if last and last.get("tool_calls"):  # a tool call is scored by evaluate_tools, not as text
            return None
        return last["content"] if last and last["role"] == "assistant" and isinstance(last["content"], str) else None

    @property
    def answerable(self) -> bool:
        return bool(self.prompt) and (self.reference is not None or bool(expected_calls(self.messages)))

    @property
    def prompt(self) -> list[dict]:
        return with_tools(self.messages[:-1], tools_of(self.messages)) if isinstance(self.messages, list) else []


def held_out_conversations(recipe, data_path: str | None) -> tuple[list, str]:
    """(conversations, where they came from): --data, else the recipe's eval_path, else its eval split."""
    from peftsft.core.config import DataSection, DatasetSpec
    from peftsft.data.build import DataStats, load_conversations

    if data_path:
        on_bad_row = recipe.data.on_bad_row if recipe else "fail"
        data = DataSection(datasets=[DatasetSpec(path=data_path)], on_bad_row=on_bad_row)
        return load_conversations([data_path], data, DataStats()), data_path
    if recipe is None or not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        raise UserError(
            "no held-out data to evaluate on", hint="pass --data FILE.jsonl (chat rows with a reference answer)"
        )
    if recipe.data.eval_path:
        path = Path(recipe.data.eval_path)
        if path.suffix and not path.exists():  # a file that moved (a Hub dataset id has no suffix)
            raise UserError(f"the run's eval_path is gone: {path}", hint="pass --data FILE.jsonl")
        return load_conversations([recipe.data.eval_path], recipe.data, DataStats()), recipe.data.eval_path
    # the same split as data.build.build_datasets: shuffle the training rows with the seed, eval first
    conversations = load_conversations([spec.path for spec in recipe.data.datasets], recipe.data, DataStats())
    random.Random(recipe.training.seed).shuffle(conversations)
    n_eval = max(1, round(len(conversations) * recipe.data.eval_fraction))
    return conversations[:n_eval], f"eval_fraction {recipe.data.eval_fraction} of the training data"


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
    texts = [(p, r.reference) for p, r in zip(predictions, answerable) if r.reference is not None]
    metrics |= answer_metrics([p for p, _ in texts], [ref for _, ref in texts])
    metrics |= tool_metrics(predictions, [r.messages for r in answerable])
    return metrics, predictions


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
    console.print(f"[green]saved[/] → {out}")
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
