"""What a chat template implies for exported models: its stop tokens, and its Ollama (Go template) twin.

Both are read off the Jinja template by rendering marker messages, so they follow the exact template used in
training rather than a table of known model families. An Ollama template is only written when re-rendering
sample conversations through it reproduces the Jinja output exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftsft.core.errors import UserError

SYSTEM, USER, ASSISTANT, USER2, ASSISTANT2 = (f"PEFTSFTMARK{i}X" for i in range(5))


def _render(tokenizer, messages: list[tuple[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def assistant_suffix(tokenizer) -> str:
    """The text the template puts after an assistant reply (e.g. "<|im_end|>\\n")."""
    text = _render(tokenizer, [("user", USER), ("assistant", ASSISTANT)], False)
    return text.split(ASSISTANT, 1)[1]


def stop_tokens(tokenizer) -> list[tuple[int, str]]:
    """(id, text) of the tokens that end a reply: the template's end-of-turn token, then the tokenizer's EOS."""
    special = set(tokenizer.all_special_ids) | {
        i for i, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    ids = [i for i in tokenizer(assistant_suffix(tokenizer), add_special_tokens=False)["input_ids"] if i in special]
    stops = ids[:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return [(i, tokenizer.convert_ids_to_tokens(i)) for i in stops]


# ---------------------------------------------------------------------------------------------- turn format


@dataclass(frozen=True)
class TurnFormat:
    """A template that wraps each message in fixed text: start + Σ(prefix + content + suffix) + generation."""

    start: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    default_system: str | None  # injected by the template when a conversation has no system message

    def render(self, messages: list[tuple[str, str]], generation_prompt: bool) -> str:
        if self.default_system is not None and messages[0][0] != "system":
            messages = [("system", self.default_system), *messages]
        text = self.start + "".join(self.prefix[r] + c + self.suffix[r] for r, c in messages)
        return text + (self.generation if generation_prompt else "")


def turn_format(tokenizer) -> TurnFormat:
    """Read the wrapper of each role off the template; raise UserError when it is not of this simple shape."""
    try:
        fmt = _derive(tokenizer)
    except (ValueError, IndexError, KeyError) as exc:  # a marker missing or split unexpectedly
        raise _not_expressible(str(exc)) from None
    except Exception as exc:  # the template itself refused (e.g. no system role)  # noqa: BLE001
        raise _not_expressible(f"{type(exc).__name__}: {exc}") from None
    for messages, generation_prompt in _CHECKS:
        if fmt.render(messages, generation_prompt) != _render(tokenizer, messages, generation_prompt):
            raise _not_expressible(f"re-rendering {[r for r, _ in messages]} does not reproduce the Jinja output")
    return fmt


def _derive(tokenizer) -> TurnFormat:
    system_only = _render(tokenizer, [("system", SYSTEM)], False)
    with_user = _render(tokenizer, [("system", SYSTEM), ("user", USER)], False)
    with_reply = _render(tokenizer, [("system", SYSTEM), ("user", USER), ("assistant", ASSISTANT)], False)
    with_prompt = _render(tokenizer, [("system", SYSTEM), ("user", USER)], True)
    user_prefix, user_suffix = _tail(with_user, system_only).split(USER)
    reply_prefix, reply_suffix = _tail(with_reply, with_user).split(ASSISTANT)
    before_system, system_suffix = system_only.split(SYSTEM)
    user_alone = _render(tokenizer, [("user", USER)], False)
    lead = user_alone[: user_alone.index(user_prefix + USER)]
    start, default_system = _start_and_default_system(lead, before_system, system_suffix)
    return TurnFormat(
        start=start,
        prefix={"system": before_system[len(start) :], "user": user_prefix, "assistant": reply_prefix},
        suffix={"system": system_suffix, "user": user_suffix, "assistant": reply_suffix},
        generation=_tail(with_prompt, with_user),
        default_system=default_system,
    )


def _start_and_default_system(lead: str, before_system: str, system_suffix: str) -> tuple[str, str | None]:
    """What a conversation without a system message starts with: a default system turn, or a plain start (BOS)."""
    if lead.startswith(before_system) and lead.endswith(system_suffix) and len(lead) > len(before_system):
        return "", lead[len(before_system) : len(lead) - len(system_suffix)]
    if not before_system.startswith(lead):
        raise ValueError("the text before the first message differs with and without a system message")
    return lead, None


def _tail(longer: str, shorter: str) -> str:
    if not longer.startswith(shorter):
        raise ValueError("adding a message changes the text rendered before it")
    return longer[len(shorter) :]


def _not_expressible(reason: str) -> UserError:
    return UserError(
        "the chat template cannot be written as an Ollama template (each role must be wrapped in fixed text)",
        problems=[reason],
        hint="pass --no-modelfile to write the GGUF alone (it carries the Jinja template itself)",
    )


_CHECKS = [
    ([("user", USER)], True),
    ([("user", USER), ("assistant", ASSISTANT), ("user", USER2)], True),
    ([("system", SYSTEM), ("user", USER), ("assistant", ASSISTANT), ("user", USER2), ("assistant", ASSISTANT2)],
     False),
]


# ---------------------------------------------------------------------------------------------- Ollama


def ollama_template(fmt: TurnFormat) -> str:
    """The Go template Ollama renders conversations with; identical output to `fmt.render`."""
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq $m.Role "{role}" }}}}'
        f"{_literal(fmt.prefix[role])}{{{{ $m.Content }}}}{_literal(fmt.suffix[role])}"
        for i, role in enumerate(("system", "user", "assistant"))
    )
    last = '{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}'
    return (
        f"{_literal(fmt.start)}{{{{ range $i, $m := .Messages }}}}{branches}{{{{ end }}}}"
        f"{last}{_literal(fmt.generation)}{{{{ end }}}}{{{{ end }}}}"
    )


def _literal(text: str) -> str:
    """Go templates treat only `{{` specially in literal text."""
    return text.replace("{{", '{{ "{{" }}')


# Shown in every Modelfile and in docs/export.md.
WHICH_QUANT = ("which to pick: q8_0 (8.5 bits per weight, about half of f16) loses least; q4_k_m (about 4.9 bits) "
               "is the usual choice on laptops and CPUs; q6_k / q5_k_m sit between; f16 / bf16 to re-quantize later")


def modelfile(base: str, tokenizer, run_name: str, adapter: str | None = None, quant: str | None = None) -> str:
    """An Ollama Modelfile: FROM `base` (a GGUF path), optionally ADAPTER `adapter` (a LoRA GGUF over it), and the
    template, default system prompt and stop tokens used in training."""
    fmt = turn_format(tokenizer)
    lines = [f"# Ollama Modelfile for peftsft run {run_name!r}: ollama create {_model_tag(run_name)} -f <this file>"]
    if quant:
        lines.append(f"# weights: {quant}; {WHICH_QUANT}")
    lines.append(f"FROM {base}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{_triple_quoted(ollama_template(fmt))}"""')
    if fmt.default_system:
        lines.append(f'SYSTEM """{_triple_quoted(fmt.default_system)}"""')
    lines += [f"PARAMETER stop {_quoted(text)}" for _, text in stop_tokens(tokenizer)]
    return "\n".join(lines) + "\n"


def _triple_quoted(text: str) -> str:
    if '"""' in text:
        raise UserError('the chat template contains """, which an Ollama Modelfile cannot quote')
    return text


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _model_tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()) or "model"
