"""Does an exported artifact, re-loaded from disk, behave like base + adapter? Compared on held-out prompts.

Both models see the same token ids (the reference's prompt + its greedy reply), so logit differences measure the
artifact's weights alone; its tokenizer and chat template are compared separately. Limits are relative to the
reference's largest |logit|, so one table of tolerances fits tiny and large models alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from peftsft.core.errors import UserError
from peftsft.artifacts.export.runtimes import greedy_reply
from peftsft.artifacts.export.template import stop_tokens

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Give me one tip for writing clear emails.",
    "Explain in one sentence what a neural network is.",
)
MAX_PROMPTS = 3
NEW_TOKENS = 16


@dataclass(frozen=True)
class Tolerance:
    max_rel: float  # max |Δ logit| ≤ max_rel × max |reference logit|
    mean_rel: float  # mean |Δ logit| ≤ mean_rel × max |reference logit|
    min_agreement: float  # share of reply positions where both pick the same greedy token


# float32 differs only by the merge's rounding; f16/bf16 by storage rounding; q8_0 by 8-bit blocks of 32 weights.
# Measured on SmolLM2-135M + a LoRA (max / mean |Δ| as a share of the logit scale, greedy agreement):
# float32 3e-6 / 4e-7, 100% · float16 1e-3 / 1.5e-4, 100% · bfloat16 1.6e-2 / 2e-3, 100% · q8_0 3e-2 / 4e-3, 93%.
# llama.cpp adds its own rounding: it multiplies f16 weights with f16 activations, block-quantized weights with
# 8-bit activations, and keeps the KV cache in f16. The GGUF limits below widen the float/q8_0 ones by that; the
# 3- to 6-bit ones are set from the demo run's measurements below.
TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-5, 0.99),
    "float16": Tolerance(5e-3, 5e-4, 0.95),
    "bfloat16": Tolerance(5e-2, 8e-3, 0.90),
    "q8_0": Tolerance(0.10, 0.015, 0.85),
    # an 8-bit run's reference itself computes with int8 activations (LLM.int8), so float exports differ by that
    "int8 reference": Tolerance(5e-2, 8e-3, 0.90),
    # GGUF weight types as llama.cpp computes with them
    # f32 weights still meet an f16 KV cache: the demo run's f32 GGUF flipped one near-tie of 38 reply positions
    # (97.4%) while its logits stayed inside 2e-3 — so its greedy limit is f16's
    "gguf f32": Tolerance(2e-3, 2e-4, 0.95),
    "gguf f16": Tolerance(1e-2, 1e-3, 0.95),
    "gguf bf16": Tolerance(5e-2, 8e-3, 0.90),
    "gguf q8_0": Tolerance(0.10, 0.015, 0.85),
    # the K-quants' limits leave ~1.5x room over what the demo run measured (benchmarks/gguf_quants.py, its table in
    # benchmarks/results/gguf_quants.md) — a broken conversion is off by the whole logit scale, agreement near 0
    "gguf q6_k": Tolerance(0.20, 0.03, 0.75),
    "gguf q5_1": Tolerance(0.45, 0.05, 0.60),
    "gguf q5_0": Tolerance(0.45, 0.05, 0.60),
    "gguf q5_k_m": Tolerance(0.45, 0.05, 0.60),
    "gguf q5_k_s": Tolerance(0.45, 0.05, 0.60),
    "gguf q4_1": Tolerance(0.75, 0.10, 0.50),
    "gguf q4_0": Tolerance(0.75, 0.10, 0.50),
    "gguf q4_k_m": Tolerance(0.75, 0.10, 0.50),
    "gguf q4_k_s": Tolerance(0.75, 0.10, 0.50),
    "gguf q3_k_m": Tolerance(0.60, 0.12, 0.40),
}
# Texts whose token ids must match as well: digits, punctuation, accents, emoji and whitespace runs are where
# pre-tokenizers (how text is split before BPE) differ — the held-out prompts alone rarely show it. Each is
# checked as users send it, as a user message through the chat template.
TOKENIZER_PROBES = (
    "In 2024, 3.14159 x 12 = 37.69908; call +1-555-0100 (ext. 42)!",
    "naïve café — “quoted” ‘text’ 😀 ünïcödé…\n\n    indented\tline\r\nend   ",
    "don't I'LL we've x_y=f(a,b)->{c:[1,2]} <tag attr=\"v\"/> ####",
)


def loosest(*names: str) -> str:
    """The most permissive of several tolerances (an artifact's own, and its reference's noise)."""
    return max(names, key=lambda name: TOLERANCES[name].max_rel)


def held_out_prompts(sample_prompts: list[str]) -> list[str]:
    """The recipe's sample prompts (never training rows), topped up with fixed ones."""
    return list(dict.fromkeys([*sample_prompts, *DEFAULT_PROMPTS]))[:MAX_PROMPTS]


@dataclass
class Reference:
    """What base + adapter does: the target every artifact is held to."""

    prompts: list[str]
    chat_template: str
    rendered: list[str]  # the prompts through the training chat template (text)
    prompt_ids: list[list[int]]
    probe_rendered: list[str]  # TOKENIZER_PROBES as user messages through the training chat template
    probe_ids: list[list[int]]
    sequences: list[torch.Tensor]  # prompt + greedy reply
    logits: list[torch.Tensor]  # float32 [positions, vocab]
    stop_ids: list[int]

    @property
    def scale(self) -> float:
        return max(float(x.abs().max()) for x in self.logits)

    @property
    def longest(self) -> int:
        return max(len(s) for s in self.sequences)


@dataclass
class Check:
    artifact: str
    tolerance_name: str
    scale: float
    max_diff: float
    mean_diff: float
    agreement: float
    same_replies: int
    prompts: int
    runtime: str = "transformers"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def render(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


@torch.no_grad()
def reference_outputs(model, tokenizer, prompts: list[str]) -> Reference:
    model.eval()
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    stops = [i for i, _ in stop_tokens(tokenizer)]
    sequences = [greedy_reply(model, p, stops, tokenizer.pad_token_id, NEW_TOKENS) for p in ids]
    return Reference(
        prompts=prompts,
        chat_template=tokenizer.chat_template,
        rendered=[render(tokenizer, p) for p in prompts],
        prompt_ids=ids,
        probe_rendered=[render(tokenizer, text) for text in TOKENIZER_PROBES],
        probe_ids=[prompt_ids(tokenizer, text) for text in TOKENIZER_PROBES],
        sequences=sequences,
        logits=[model(input_ids=s[None].to(model.device)).logits[0].float().cpu() for s in sequences],
        stop_ids=stops,
    )


def check_artifact(artifact: str, runtime, ref: Reference, tolerance_name: str) -> Check:
    """Compare a re-loaded artifact (in `runtime`: transformers or llama.cpp) against the reference; every way it
    diverges — logits, greedy replies, chat template, token ids — becomes a problem."""
    tolerance = TOLERANCES[tolerance_name]
    diffs, agree, positions, same = [], 0, 0, 0
    for prompt, sequence, want in zip(ref.prompt_ids, ref.sequences, ref.logits):
        got = runtime.logits(sequence)
        diffs.append((got - want).abs())
        reply = slice(len(prompt) - 1, len(sequence) - 1)  # positions that chose the reply's tokens
        agree += int((got[reply].argmax(-1) == want[reply].argmax(-1)).sum())
        positions += reply.stop - reply.start
        same += int(torch.equal(runtime.greedy(prompt, ref.stop_ids, NEW_TOKENS), sequence))
    result = Check(
        artifact=artifact,
        tolerance_name=tolerance_name,
        scale=ref.scale,
        max_diff=max(float(d.max()) for d in diffs),
        mean_diff=float(torch.cat([d.flatten() for d in diffs]).mean()),
        agreement=agree / max(positions, 1),
        same_replies=same,
        prompts=len(ref.sequences),
        runtime=runtime.runtime,
    )
    result.problems = _logit_problems(result, tolerance) + _tokenizer_problems(runtime, ref)
    return result


def _tokenizer_problems(runtime, ref: Reference) -> list[str]:
    if runtime.chat_template != ref.chat_template:
        return ["its chat template differs from the one used in training"]
    problems = []
    for text, want in [*zip(ref.rendered, ref.prompt_ids), *zip(ref.probe_rendered, ref.probe_ids)]:
        got = runtime.tokenize(text)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            problems.append(f"its tokenizer splits {text[:40]!r}… differently from training (first at token {at}: "
                            f"{got[at:at + 3]} vs {want[at:at + 3]})")
    return problems


def _logit_problems(result: Check, tolerance: Tolerance) -> list[str]:
    problems = []
    if result.max_diff > tolerance.max_rel * result.scale:
        problems.append(f"max |Δ logit| {result.max_diff:.3g} > {tolerance.max_rel * result.scale:.3g}")
    if result.mean_diff > tolerance.mean_rel * result.scale:
        problems.append(f"mean |Δ logit| {result.mean_diff:.3g} > {tolerance.mean_rel * result.scale:.3g}")
    if result.agreement < tolerance.min_agreement:
        problems.append(f"greedy agreement {result.agreement:.1%} < {tolerance.min_agreement:.0%}")
    return problems


def print_checks(console: Console, checks: list[Check]) -> None:
    table = Table(title="verification: artifact re-loaded from disk vs base + adapter", box=box.SIMPLE_HEAD)
    table.add_column("artifact", no_wrap=True)
    table.add_column("checked in")
    for column in ("max Δ", "mean Δ", "greedy", "replies"):
        table.add_column(column, justify="right")
    table.add_column("result")
    for c in checks:
        table.add_row(
            c.artifact,
            c.runtime,
            f"{c.max_diff:.2e}",
            f"{c.mean_diff:.2e}",
            f"{c.agreement:.1%}",
            f"{c.same_replies}/{c.prompts}",
            "[green]ok[/]" if c.passed else "[red]DIVERGED[/]",
        )
    console.print(table)
    console.print(
        "[dim]Δ: |logit difference| over every position of the prompts and replies; greedy: reply positions "
        "where both pick the same next token; replies: identical greedy replies[/]"
    )
    for c in checks:
        t = TOLERANCES[c.tolerance_name]
        console.print(
            f"[dim]{c.artifact} ({c.tolerance_name} tolerance): max Δ ≤ {t.max_rel * c.scale:.2e}, "
            f"mean Δ ≤ {t.mean_rel * c.scale:.2e} ({t.max_rel:g} and {t.mean_rel:g} of the largest reference "
            f"|logit|, {c.scale:.3g}), greedy ≥ {t.min_agreement:.0%}[/]"
        )


def require_passed(checks: list[Check], out: Path) -> None:
    failed = [c for c in checks if not c.passed]
    if failed:
        raise UserError(
            f"verification failed: the {', '.join(c.artifact for c in failed)} export diverged from base + adapter; "
            f"nothing was written to {out}",
            problems=[f"{c.artifact}: {p}" for c in failed for p in c.problems],
            hint="a corrupted or wrongly converted artifact; --no-verify skips this check (not recommended)",
        )
