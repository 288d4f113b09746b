"""Preference rows → one form: a prompt (chat messages) and its answers, each a single assistant reply.

Read: conversational pairs (`prompt` messages + `chosen` + `rejected` as assistant messages or strings), the
flat prompt/chosen/rejected text form (the prompt becomes a user turn, as for SFT's prompt_completion),
UltraFeedback-style rows (`chosen`/`rejected` as whole conversations that include the prompt turns; `prompt` and
`score_chosen`/`score_rejected` optional) and KTO's unpaired rows (`prompt` + `completion` + boolean `label`).
What a row alone can get wrong is caught here, so the error names its file:line: chosen and rejected answering
different prompts, the same answer twice, scores that say the pair is swapped, a label that is not a boolean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftsft.core.config import PREFERENCE_FORMATS
from peftsft.data.formats import NO_MAPPING, Mapping, RowError, _text, _turn_list

# A trailing "\n" or space differs between exports of the same answer; it does not make two answers different.
_SAME = str.strip


@dataclass(frozen=True)
class Pair:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) reply."""

    prompt: list[dict[str, Any]]
    chosen: dict[str, Any]
    rejected: dict[str, Any]


@dataclass(frozen=True)
class Unpaired:
    """A prompt with one reply judged desirable (label true) or undesirable (label false): KTO's rows."""

    prompt: list[dict[str, Any]]
    completion: dict[str, Any]
    desirable: bool


def detect_preference_format(row: dict[str, Any], mapping: Mapping = NO_MAPPING) -> str:
    """"preference" for chosen + rejected columns, "unpaired_preference" for prompt + completion + label."""
    if mapping.col("chosen") in row and mapping.col("rejected") in row:
        return "preference"
    if all(mapping.col(name) in row for name in ("prompt", "completion", "label")):
        return "unpaired_preference"
    raise RowError(
        f"cannot tell the preference format of a row with keys {sorted(row)}; expected 'chosen' + 'rejected' (with "
        "a 'prompt', or as whole conversations) or 'prompt' + 'completion' + 'label' — or set format and fields for "
        "this dataset in the recipe"
    )


def to_preference(row: dict[str, Any], fmt: str, mapping: Mapping = NO_MAPPING) -> Pair | Unpaired:
    """The row as a Pair or an Unpaired answer; a RowError says what is wrong with it."""
    fmt = detect_preference_format(row, mapping) if fmt == "auto" else fmt
    if fmt not in PREFERENCE_FORMATS:
        raise RowError(f"{fmt!r} is not a preference format ({', '.join(PREFERENCE_FORMATS)})")
    return _pair(row, mapping) if fmt == "preference" else _unpaired(row, mapping)


def unpair(pair: Pair) -> list[Unpaired]:
    """A pair as KTO reads it: the chosen reply desirable, the rejected one undesirable."""
    return [Unpaired(pair.prompt, pair.chosen, True), Unpaired(pair.prompt, pair.rejected, False)]


# ---------------------------------------------------------------------------------------------- pairs


def _pair(row: dict[str, Any], mapping: Mapping) -> Pair:
    for name in ("chosen", "rejected"):
        if mapping.col(name) not in row:
            raise RowError(f"missing column {mapping.col(name)!r} (preference format); the row has {sorted(row)}")
    chosen, rejected = (_turns(row[mapping.col(name)], mapping.col(name), mapping) for name in ("chosen", "rejected"))
    if any(m["role"] != "assistant" for m in chosen + rejected):
        prompt = _shared_prompt(chosen, rejected, mapping)
        _prompt_column_agrees(row, prompt, mapping)
    else:
        prompt = _prompt(row, mapping)
    pair = Pair(_with_system(prompt, row, mapping), _reply(chosen, "chosen", mapping), _reply(rejected, "rejected", mapping))
    if _SAME(pair.chosen["content"]) == _SAME(pair.rejected["content"]) and pair.chosen.get("tool_calls") == pair.rejected.get("tool_calls"):
        raise RowError("chosen and rejected are the same answer: the pair prefers nothing")
    _scores_agree(row, mapping)
    return pair


def _shared_prompt(chosen: list[dict], rejected: list[dict], mapping: Mapping) -> list[dict]:
    """Whole conversations (UltraFeedback): everything before the last reply, which must be the same on both sides."""
    if len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b), None)
        said = (f"turn {turn} differs ({_short(chosen[turn])} vs {_short(rejected[turn])})" if turn is not None
                else f"{len(chosen)} vs {len(rejected)} turns")
        raise RowError(f"{mapping.col('chosen')!r} and {mapping.col('rejected')!r} answer different prompts: {said}")
    return chosen[:-1]


def _prompt_column_agrees(row: dict[str, Any], prompt: list[dict], mapping: Mapping) -> None:
    """A `prompt` beside whole conversations must be their prompt: the last user turn's text, or the same turns."""
    given = row.get(mapping.col("prompt"))
    if given is None:
        return
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if isinstance(given, str):
        agrees = bool(users) and _SAME(given) == _SAME(users[-1])
    else:
        agrees = _turns(given, mapping.col("prompt"), mapping) == prompt
    if not agrees:
        raise RowError(
            f"{mapping.col('prompt')!r} is not the prompt the chosen and rejected conversations answer "
            f"({_short({'role': 'user', 'content': users[-1] if users else ''})})"
        )


def _prompt(row: dict[str, Any], mapping: Mapping) -> list[dict]:
    column = mapping.col("prompt")
    if column not in row:
        raise RowError(
            f"missing column {column!r}: chosen and rejected are single replies, so the prompt they answer must be "
            "given apart (or give chosen and rejected as whole conversations)"
        )
    value = row[column]
    return _turns(value, column, mapping) if isinstance(value, list) else [{"role": "user", "content": _text(value, column)}]


def _reply(turns: list[dict], name: str, mapping: Mapping) -> dict[str, Any]:
    """The one assistant reply a side ends with (its prompt turns, if any, were split off already)."""
    reply = turns[-1]
    if reply["role"] != "assistant" or (len(turns) > 1 and all(m["role"] == "assistant" for m in turns)):
        raise RowError(
            f"{mapping.col(name)!r} must end in one assistant reply (got {' + '.join(m['role'] for m in turns)})"
        )
    return reply


def _scores_agree(row: dict[str, Any], mapping: Mapping) -> None:
    """Where a row scores its answers, the chosen one must score higher: lower looks swapped, equal is a tie."""
    scores = [row.get(mapping.col(name)) for name in ("score_chosen", "score_rejected")]
    if any(score is None or score == "" for score in scores):
        return
    try:
        chosen, rejected = (float(score) for score in scores)
    except (TypeError, ValueError):
        raise RowError(f"scores must be numbers (got {scores[0]!r} and {scores[1]!r})") from None
    if chosen < rejected:
        raise RowError(f"score_chosen ({chosen:g}) is below score_rejected ({rejected:g}): chosen and rejected look swapped")
    if chosen == rejected:
        raise RowError(f"chosen and rejected both score {chosen:g}: a tie prefers nothing")


# ---------------------------------------------------------------------------------------------- unpaired


def _unpaired(row: dict[str, Any], mapping: Mapping) -> Unpaired:
    for name in ("prompt", "completion", "label"):
        if mapping.col(name) not in row:
            raise RowError(f"missing column {mapping.col(name)!r} (unpaired_preference format); the row has {sorted(row)}")
    value = row[mapping.col("completion")]
    turns = _turns(value, mapping.col("completion"), mapping) if isinstance(value, list) else [
        {"role": "assistant", "content": _text(value, mapping.col("completion"))}
    ]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        roles = " + ".join(m["role"] for m in turns)
        raise RowError(f"{mapping.col('completion')!r} must be one assistant reply (got {roles})")
    return Unpaired(_with_system(_prompt(row, mapping), row, mapping), turns[0], parse_label(row[mapping.col("label")]))


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_label(value: Any) -> bool:
    """A KTO label: true = desirable. Strings (CSV) are read by their word, never by Python's truthiness ("false")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RowError(f"label must be true (desirable) or false (undesirable), got {value!r}")


# ---------------------------------------------------------------------------------------------- pieces


def _turns(value: Any, column: str, mapping: Mapping) -> list[dict]:
    """A string (one assistant reply) or a list of turns (OpenAI role/content or ShareGPT from/value)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _turn_list(value, column, mapping)


def _with_system(prompt: list[dict], row: dict[str, Any], mapping: Mapping) -> list[dict]:
    """The row's separate system column first (if any); the prompt must end in a turn a reply answers."""
    system = row.get(mapping.col("system"))
    if isinstance(system, str) and system.strip() and prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    if not any(m["role"] == "user" for m in prompt) or prompt[-1]["role"] not in ("user", "tool"):
        roles = " + ".join(m["role"] for m in prompt) or "nothing"
        raise RowError(f"the prompt must end in a user (or tool) turn for the answers to reply to (got {roles})")
    return prompt


def _short(message: dict[str, Any]) -> str:
    content = str(message.get("content", ""))
    return f"{message.get('role')}: {content[:40]!r}" + ("…" if len(content) > 40 else "")
