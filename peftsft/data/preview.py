"""Rendering chat samples with the loss mask shown, and the data statistics, onto a console the caller passes.

Supervised tokens are coloured in a terminal; piped (or with markers) they are wrapped in [[ ]].
"""

from __future__ import annotations

OPEN, CLOSE = "[[", "]]"


def load_recipe_tokenizer(recipe):
    from peftsft.models import _load_guard, load_tokenizer, materialize, resolve_source

    location = _load_guard(materialize, resolve_source(recipe.model.source))
    return _load_guard(load_tokenizer, location, recipe.model)


# ---------------------------------------------------------------------------------------------- samples


def mask_pieces(tokenizer, sample: dict) -> list[tuple[str, bool]]:
    """The sample's text in pieces, each wholly supervised or not."""
    pieces: list[tuple[list[int], bool]] = []
    for token, label in zip(sample["input_ids"], sample["labels"]):
        supervised = label != -100
        if pieces and pieces[-1][1] == supervised:
            pieces[-1][0].append(token)
        else:
            pieces.append(([token], supervised))
    return [(tokenizer.decode(ids), supervised) for ids, supervised in pieces]


def marked_text(pieces: list[tuple[str, bool]]) -> str:
    return "".join(f"{OPEN}{text}{CLOSE}" if supervised else text for text, supervised in pieces)


def print_sample(console, tokenizer, sample: dict, title: str, markers: bool) -> None:
    from rich.text import Text

    supervised = sum(label != -100 for label in sample["labels"])
    console.print(f"[bold]── {title}[/] ({len(sample['input_ids'])} tokens, {supervised} supervised)")
    pieces = mask_pieces(tokenizer, sample)
    if markers:
        console.print(marked_text(pieces), markup=False, highlight=False, emoji=False)
    else:
        text = Text()
        for piece, learned in pieces:
            text.append(piece, style="bold green" if learned else "dim")
        console.print(text, emoji=False)


# ---------------------------------------------------------------------------------------------- stats


def print_stats(console, stats) -> None:
    """Sources (with detected formats), token lengths, truncation, supervised share, packing, cache."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    sources = Table("dataset", "format", "rows", "bad", "train", title="data", box=None, padding=(0, 1))
    for source in stats.sources:
        cells = [source["path"], source["format"], *(str(source.get(k, "")) for k in ("rows", "bad", "train"))]
        sources.add_row(*map(Text, cells))
    console.print(sources)
    lengths = stats.lengths
    facts = [
        ("samples", f"{stats.train_rows} train, {stats.eval_rows} eval ({stats.rows} rows read)"),
        ("bad rows", f"{stats.bad_rows.total} skipped" if stats.bad_rows else "none"),
        ("tokens per sample", ", ".join(f"{k} {v}" for k, v in lengths.items() if k != "histogram")),
        ("length histogram", _sparkline(lengths.get("histogram", []), lengths.get("min"), lengths.get("max"))),
        ("truncated", f"{stats.truncated} (cut at max_length)"),
        ("dropped", f"{stats.dropped_unsupervised} with nothing supervised"),
        ("supervised share", f"{stats.supervised_tokens / max(stats.tokens, 1):.1%} of {stats.tokens} tokens"),
        ("packing", _packing_line(stats.packing)),
        ("template", f"{stats.template.get('name')} (end of turn {stats.template.get('end_of_turn')!r})"),
        ("cache", stats.cache),
    ]
    if stats.replay:  # [data] replay: general rows mixed in against forgetting
        r = stats.replay
        facts.append(("replay", f"{r['replay_rows']} general rows ({r['actual_share']:.1%} of training) from {r['pool']}"))
    table = Table(show_header=False, box=None, padding=(0, 1))
    for key, value in facts:
        table.add_row(key, Text(value))
    console.print(table)
    for line in stats.bad_rows[:5]:
        console.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)


def _sparkline(counts: list[int], low, high) -> str:
    if not counts:
        return "n/a"
    bars = "▁▂▃▄▅▆▇█"
    top = max(counts)
    return f"{low} " + "".join(bars[round(c / top * (len(bars) - 1))] if c else " " for c in counts) + f" {high} tokens"


def _packing_line(packed: dict) -> str:
    if not packed:
        return "n/a"
    fill = f"{packed['rows']} rows, {packed['efficiency']:.1%} efficiency (non-pad share of max_length rows)"
    return f"on: {fill}" if packed.get("enabled") else f"off (packing would give {fill})"
