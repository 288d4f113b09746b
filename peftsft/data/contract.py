"""The pre-flight data contract: checks that catch the silent data bugs before any training step.

Every kept sample has supervised tokens; every reply's end-of-turn token is supervised; no supervised
token lies in a prompt; tool calls are supervised while tool schemas and tool results are not; packed samples
cannot attend to each other; the template saved with the adapter is the one the data was rendered with. The per-reply checks read the rendered text back through the
token offsets, independently of how the mask was built (masking.py), as each sample is encoded.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, fields
from itertools import zip_longest
from typing import Any

import numpy as np

from peftsft.core.errors import UserError
from peftsft.data.formats import Content
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.templates import end_of_turn_tokens, fit_messages, template_sha
from peftsft.data.tools import tools_of

MAX_EXAMPLES = 5


@dataclass
class Run:
    """Consecutive supervised tokens, as the text they cover."""

    text: str
    at_cut: bool  # the run reaches the end of a truncated sample


def supervised_runs(enc: Encoded) -> list[Run]:
    learned = np.asarray(enc.labels) != IGNORE
    edges = np.flatnonzero(np.diff(np.concatenate(([False], learned, [False])).astype(np.int8)))
    offsets = enc.offsets
    return [
        Run(enc.text[offsets[start][0] : offsets[end - 1][1]], enc.truncated and end == len(learned))
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist())
    ]


@dataclass
class ReplyChecks:
    """Counts over every encoded sample: replies whose end-of-turn is (not) supervised, supervised prompt text."""

    samples: int = 0
    replies: int = 0
    closed: int = 0
    unclosed: int = 0
    prompt_runs: int = 0
    tool_rows: int = 0  # conversations with tool schemas, calls or results
    tool_calls: int = 0
    calls_supervised: int = 0
    calls_missed: int = 0  # calls whose function name has no supervised token (truncated samples excepted)
    tool_text_supervised: int = 0  # supervised runs holding a schema or a tool result
    examples: list[str] = field(default_factory=list)

    def observe(self, tokenizer, content: Content, enc: Encoded, masking: str, markers: dict, where: str) -> None:
        self.samples += 1
        if isinstance(content, str):  # plain text: everything is learned, closed by the EOS
            self._close(supervised_runs(enc)[-1:], markers["eos"], where)
            return
        replies = [m for m in fit_messages(tokenizer, content) if m["role"] == "assistant"]
        if masking == "all":  # tool rows are counted, so the report says why their masks are not judged
            self.tool_rows += bool(_tool_texts(content) or any(reply.get("tool_calls") for reply in replies))
            self._close_all(enc, replies, markers["eot"], where)
            return
        replies = replies[-1:] if masking == "last_turn" else replies
        runs = supervised_runs(enc)
        self._observe_tools(content, replies, runs, enc.truncated, where)
        for reply, run in zip_longest(replies, runs):
            if reply is None:
                self._note("prompt_runs", f"{where}: supervised text outside any reply: {run.text[:80]!r}")
            elif run is None:
                self.replies += 1
                if not enc.truncated:
                    self._note("unclosed", f"{where}: a reply has no supervised token at all")
            else:
                self._check_reply(reply, run, markers, where)

    def _check_reply(self, reply: dict[str, Any], run: Run, markers: dict, where: str) -> None:
        self.replies += 1
        body, eot = run.text.rstrip(), markers["eot"]
        if eot and body.endswith(eot):
            self.closed += 1
            body = body[: -len(eot)]
        elif not run.at_cut:
            self._note("unclosed", f"{where}: reply ends {run.text[-40:]!r} without a supervised {eot!r}")
        if not _is_reply(body.strip(), reply, markers["header"]):
            self._note("prompt_runs", f"{where}: supervised text is not the reply: {run.text[:80]!r}")

    def _observe_tools(self, content: list, replies: list, runs: list[Run], truncated: bool, where: str) -> None:
        """Every call's function name is supervised; no supervised run holds a schema or a tool result."""
        hidden = _tool_texts(content)
        calls = [call["function"]["name"] for reply in replies for call in reply.get("tool_calls") or []]
        if not (hidden or calls):
            return
        self.tool_rows += 1
        supervised = "".join(run.text for run in runs)
        for name in calls:
            self.tool_calls += 1
            if name in supervised:
                self.calls_supervised += 1
            elif not truncated:
                self._note("calls_missed", f"{where}: the call to {name!r} is not supervised")
        for text in hidden:
            if text in supervised:
                self._note("tool_text_supervised", f"{where}: a tool schema or result is supervised: {text[:60]!r}")

    def _close(self, runs: list[Run], closer: str | None, where: str) -> None:
        self.replies += 1
        if runs and closer and runs[-1].text.endswith(closer):
            self.closed += 1
        elif not (runs and runs[-1].at_cut):
            self._note("unclosed", f"{where}: the text does not end with a supervised {closer!r}")

    def _close_all(self, enc: Encoded, replies: list, eot: str | None, where: str) -> None:
        """masking = "all": every token is learned; each reply still needs its end-of-turn in the text."""
        self.replies += len(replies)
        found = min(len(replies), enc.text[: enc.offsets[-1][1]].count(eot)) if eot and len(enc.offsets) else 0
        self.closed += found
        if found < len(replies) and not enc.truncated:
            self._note("unclosed", f"{where}: {len(replies) - found} reply(ies) without {eot!r}", len(replies) - found)

    def merge(self, later: ReplyChecks) -> None:
        """Add the counts of samples observed after these (in another process), keeping the first examples."""
        for name in (f.name for f in fields(self) if f.name != "examples"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        self.examples += later.examples[: MAX_EXAMPLES - len(self.examples)]

    def _note(self, counter: str, example: str, n: int = 1) -> None:
        setattr(self, counter, getattr(self, counter) + n)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)


def _tool_texts(content: list) -> list[str]:
    """Text that must never be learned: each schema's parameters (as the template's tojson writes them) and
    each tool result long enough not to recur in a reply by chance."""
    import json

    schemas = [json.dumps(tool["function"]["parameters"], ensure_ascii=False) for tool in tools_of(content) or []]
    results = [m["content"].strip() for m in content if m["role"] == "tool" and len(m["content"].strip()) >= 8]
    return schemas + results


def _is_reply(body: str, reply: dict[str, Any], header: str) -> bool:
    """Whether a supervised run (minus its end-of-turn) is the reply's own text."""
    if reply.get("tool_calls"):  # the template renders the calls itself: at least no prompt scaffolding inside
        return not (header.strip() and header.strip() in body)
    return body in reply["content"]


# ---------------------------------------------------------------------------------------------- the contract


@dataclass
class Check:
    name: str
    status: str  # ok | FAIL | warn | n/a
    detail: str


@dataclass
class Contract:
    checks: list[Check]
    enforced: bool

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    def as_dict(self) -> dict:
        return {"passed": not self.failures, "enforced": self.enforced, "checks": [asdict(c) for c in self.checks]}


def check_contract(tokenizer, train_ds, eval_ds, stats, data, attention: str) -> Contract:
    """Run every check on the tokenized datasets and the build's findings (`stats`)."""
    checks = [
        _every_sample_supervised([ds for ds in (train_ds, eval_ds) if ds is not None]),
        end_of_turn_supervised(stats),
        no_prompt_supervised(stats, data.masking),
        _packing_isolated(train_ds, data, attention),
        template_saved_identically(tokenizer, stats),
    ]
    if stats.checks.get("tool_rows"):  # shown only for data with tools
        checks.append(_tool_masks(stats, data.masking))
    eot = stats.template.get("end_of_turn")
    if eot and (n := end_of_turn_tokens(tokenizer, eot)) > 1:
        checks.append(
            Check("end-of-turn is one token", "warn", f"{eot!r} is {n} tokens in this tokenizer (not a special token)")
        )
    return Contract(checks, data.enforce_contract)


def _every_sample_supervised(datasets: list) -> Check:
    """Streamed over each dataset in Arrow batches, so that a million samples are checked in bounded memory."""
    from peftsft.data.arrow import scan

    name = "every sample has supervised tokens"
    total = 0
    for ds in datasets:
        index = 0
        for batch in scan(ds, ["input_ids", "labels"], batch_rows=4096):
            if problem := _first_problem(batch):
                row, reason = problem
                return Check(name, "FAIL", f"sample {index + row}{reason}")
            index += batch.num_rows
        total += index
    return Check(name, "ok", f"{total} samples, labels = input ids where supervised")


def _first_problem(batch) -> tuple[int, str] | None:
    """(row, what is wrong) for the batch's first sample with no supervised token or labels that differ from its ids."""
    import pyarrow.compute as pc

    ids, labels = (batch.column(c).combine_chunks() for c in ("input_ids", "labels"))
    lengths = pc.list_value_length(ids).fill_null(0).to_numpy()
    if np.array_equal(lengths, pc.list_value_length(labels).fill_null(0).to_numpy()):
        ids_flat, labels_flat = ids.flatten().to_numpy(), labels.flatten().to_numpy()
    else:  # rows whose lists differ in length are compared over the shorter one, token by token
        pairs = [list(zip(a or [], b or [])) for a, b in zip(ids.to_pylist(), labels.to_pylist())]
        lengths = np.array([len(pair) for pair in pairs], dtype=np.int64)
        ids_flat = np.array([t for pair in pairs for t, _ in pair], dtype=np.int64)
        labels_flat = np.array([t for pair in pairs for _, t in pair], dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    supervised = labels_flat != IGNORE
    learned = np.bincount(rows, weights=supervised, minlength=len(lengths))
    differ = np.bincount(rows, weights=supervised & (labels_flat != ids_flat), minlength=len(lengths))
    bad = np.flatnonzero((learned == 0) | (differ > 0))
    if not len(bad):
        return None
    row = int(bad[0])
    return row, " has no supervised token" if learned[row] == 0 else ": labels differ from the input ids they supervise"


def end_of_turn_supervised(stats) -> Check:
    name = "end-of-turn token is supervised"
    checks, eot = stats.checks, stats.template.get("end_of_turn")
    if checks["unclosed"]:
        reason = _first(checks, ("without", "no supervised", "does not end"))
        if not eot:
            reason = "the template puts nothing after a reply, so the model would never learn to stop"
        return Check(name, "FAIL", f"{checks['unclosed']} of {checks['replies']} replies: {reason}")
    cut = checks["replies"] - checks["closed"]
    detail = f"{eot!r} closes {checks['closed']} of {checks['replies']} replies"
    return Check(name, "ok", detail + (f" ({cut} cut by max_length)" if cut else ""))


def no_prompt_supervised(stats, masking: str) -> Check:
    name = "no supervised token in a prompt"
    if masking == "all":
        return Check(name, "n/a", 'masking = "all" trains on prompts by choice')
    runs = stats.checks.get("prompt_runs", 0)
    if runs:
        example = _first(stats.checks, ("not the reply", "outside"))
        return Check(name, "FAIL", f"{runs} supervised spans are not reply text: {example}")
    return Check(name, "ok", f"every supervised span is reply text ({masking} masking)")


def _tool_masks(stats, masking: str) -> Check:
    name = "tool calls supervised, schemas and results not"
    checks = stats.checks
    if masking == "all":
        return Check(name, "n/a", 'masking = "all" trains on schemas and tool results by choice')
    missed = checks["calls_missed"]
    if checks["tool_text_supervised"] or missed:
        example = _first(checks, ("tool schema", "is not supervised"))
        return Check(name, "FAIL", f"{checks['tool_text_supervised']} schema/result span(s) supervised, "
                                   f"{missed} call(s) not: {example}")
    return Check(name, "ok", f"{checks['calls_supervised']} call(s) in {checks['tool_rows']} row(s) supervised; "
                             "no schema or tool result is")


def _packing_isolated(train_ds, data, attention: str) -> Check:
    from peftsft.data.packing import isolation_problem

    name = "packed samples are isolated"
    if not data.packing:
        return Check(name, "n/a", "packing is off")
    problem = isolation_problem(train_ds, data.max_length, attention)
    if problem:
        return Check(name, "FAIL", problem)
    return Check(name, "ok", f"position ids restart at every sample; {attention} attention keeps them apart")


def template_saved_identically(tokenizer, stats) -> Check:
    """Save the tokenizer as the adapter will, load it back, and compare templates with the one used in training."""
    from transformers import AutoTokenizer

    name = "saved template = training template"
    with tempfile.TemporaryDirectory(prefix="peftsft-template-") as tmp:
        tokenizer.save_pretrained(tmp)
        saved = AutoTokenizer.from_pretrained(tmp).chat_template
    if template_sha(saved) != stats.template.get("sha256"):
        return Check(name, "FAIL", "the tokenizer saved with the adapter would carry a different chat template")
    return Check(name, "ok", f"{stats.template.get('name')} template, sha256 {stats.template['sha256'][:12]}")


def _first(checks: dict, needles: tuple[str, ...]) -> str:
    return next((e for e in checks.get("examples", []) if any(n in e for n in needles)), "")


# ---------------------------------------------------------------------------------------------- reporting


def print_contract(console, contract: Contract) -> None:
    from rich.table import Table
    from rich.text import Text

    colours = {"ok": "green", "FAIL": "bold red", "warn": "yellow", "n/a": "dim"}
    table = Table(title="pre-flight data contract", show_header=False, box=None, padding=(0, 1))
    for check in contract.checks:  # Text: details quote data, which must not be read as markup
        table.add_row(Text(check.status, style=colours[check.status]), check.name, Text(check.detail))
    console.print(table)


def enforce(contract: Contract) -> None:
    """Stop the run on a failed check, unless the recipe turned enforcement off explicitly."""
    if contract.failures and contract.enforced:
        raise UserError(
            f"the pre-flight data contract failed ({len(contract.failures)} check(s)); training would learn the "
            "wrong thing",
            problems=[f"{c.name}: {c.detail}" for c in contract.failures],
            hint="fix the data, template or masking (see `python -m peftsft data preview RECIPE`), or override "
            "knowingly: run --skip-contract, or [data] enforce_contract = false",
        )


def preflight(console, tokenizer, train_ds, eval_ds, stats, data, attention: str, rundir) -> dict:
    """Check, print the table, and stop the run on a failure (after saving it to the run dir's summary); the
    report. `rundir`: a core.rundir.RunDir."""
    return settle(console, check_contract(tokenizer, train_ds, eval_ds, stats, data, attention), stats, rundir)


def settle(console, contract: Contract, stats, rundir) -> dict:
    """Print the table, and stop the run on an enforced failure (after saving it to the run dir's summary)."""
    print_contract(console, contract)
    if contract.failures and contract.enforced:
        stopped = {"stopped": "pre-flight data contract", "data": stats.as_dict(), "contract": contract.as_dict()}
        rundir.write_summary(stopped)
    elif contract.failures:
        console.print("[bold yellow]warning:[/] the data contract failed; training anyway (enforce_contract = false)")
    enforce(contract)
    return contract.as_dict()
