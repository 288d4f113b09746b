"""Line charts as server-rendered SVG.

Why our own instead of a JS charting library: the dashboard must work offline with nothing fetched at run time,
and a loss curve is a polyline with axes — a few lines here, no bundled asset to vendor or update, and the chart is
plain markup the tests can count points in (each point is a <circle class="pt">) and measure (every label is laid
out inside the chart's box: the margins are sized from the longest tick label).
"""

from __future__ import annotations

import math
from html import escape

from peftsft.artifacts.ui.fmt import human, tick_labels

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")
CHAR_PX = 7.0  # the widest digit of the 11px tick font, with room to spare: margins never clip a label
WIDE, SMALL = (1100, 300), (540, 240)  # viewBox sizes: the full-width chart and the grid's; the page scales them


def nice_ticks(low: float, high: float, count: int = 5, whole: bool = False) -> tuple[list[float], float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten; `whole`: whole numbers only, for steps and trials)
    covering [low, high], and their spacing."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    steps = [m * power for m in (1, 2, 2.5, 5, 10) if not whole or (m * power >= 1 and float(m * power).is_integer())]
    step = next((s for s in steps if s >= raw), steps[-1] if steps else 1.0)
    first = math.floor(low / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < high - step * 1e-9 or len(ticks) < 2:  # the last tick at or above the highest value
        ticks.append(first + len(ticks) * step)
    return ticks, step


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, size: tuple[int, int] = SMALL,
               y_key: str = "", marks: tuple[tuple[float, str], ...] = (), x_label: str = "step") -> str:
    """One SVG: a polyline + points per series, round ticks on both axes, a legend row and dashed vertical marks
    (`marks`: (x, label), e.g. the best checkpoint's step). It scales to its container's width."""
    width, height = size
    series = {name: [(x, y) for x, y in values if math.isfinite(x) and math.isfinite(y)]  # a NaN loss: no point
              for name, values in series.items()}
    points = [p for values in series.values() for p in values]
    head = f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" ' \
           f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(title)}">'
    parts = [head, f'<text x="8" y="16" class="title">{escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" class="empty">no data yet</text>')
        return "".join(parts) + "</svg>"
    legend, legend_rows = _legend(series, width)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks, x_step = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, 6, whole=True)
    y_ticks, y_step = nice_ticks(min(ys), max(ys), 5)
    x_text, y_text = tick_labels(x_ticks, x_step), tick_labels(y_ticks, y_step, y_key)
    left = 10 + CHAR_PX * max(len(t) for t in y_text)
    right = width - max(14.0, CHAR_PX * len(x_text[-1]) / 2 + 6)
    top, bottom = 30 + 14 * legend_rows, height - 34
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for value, text in zip(y_ticks, y_text):
        y = sy(value)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 5:.1f}" y="{y + 4:.1f}" text-anchor="end" class="tick">{text}</text>')
    for value, text in zip(x_ticks, x_text):
        parts.append(f'<text x="{sx(value):.1f}" y="{bottom + 15}" text-anchor="middle" class="tick">{text}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" class="axis"/>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 5}" text-anchor="middle" class="tick">'
                 f'{escape(x_label)}</text>')
    for x, label in marks:
        if x0 <= x <= x1:
            anchor = "end" if sx(x) > (left + right) / 2 else "start"
            shift = -4 if anchor == "end" else 4
            parts.append(f'<g class="mark" data-x="{x:g}"><line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" '
                         f'y2="{bottom}"/><text x="{sx(x) + shift:.1f}" y="{top + 11}" text-anchor="{anchor}" '
                         f'class="tick">{escape(label)}</text></g>')
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<g class="series" data-name="{escape(name)}" data-points="{len(values)}">')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        parts += [f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>'
                  f'{escape(name)} {escape(x_label)} {human(x)}: {human(y, y_key)}</title></circle>' for x, y in values]
        parts.append(legend[index] + "</g>")
    return "".join(parts) + "</svg>"


def _legend(series: dict, width: int) -> tuple[list[str], int]:
    """A swatch and a name per series, in rows under the title that wrap at the chart's width (never over it)."""
    if len(series) < 2:
        return [""] * len(series), 0
    entries, x, row = [], 8.0, 0
    for index, name in enumerate(series):
        span = 16 + CHAR_PX * (len(name) + (0 if series[name] else 15)) + 12
        if x + span > width - 8 and x > 8:
            x, row = 8.0, row + 1
        color, y = COLORS[index % len(COLORS)], 22 + 14 * (row + 1) - 10
        shown = name if series[name] else f"{name} (no data yet)"
        entries.append(f'<rect x="{x:.0f}" y="{y}" width="10" height="10" fill="{color}"/><text x="{x + 14:.0f}" '
                       f'y="{y + 9}" class="legend">{escape(shown)}</text>')
        x += span
    return entries, row + 1
