"""Line charts as server-rendered SVG.

Why our own instead of a JS charting library: the dashboard must work offline with nothing fetched at run time,
and a loss curve is a polyline with axes — ~60 lines here, no bundled asset to vendor or update, and the chart is
plain markup the tests can count points in (each point is a <circle class="pt">).
"""

from __future__ import annotations

from html import escape

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 640, height: int = 260,
               y_label: str = "") -> str:
    """One SVG with a polyline + points per series, shared axes with min/max ticks, and a legend."""
    points = [p for values in series.values() for p in values]
    head = f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" ' \
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
    parts = [head, f'<text x="8" y="16" class="title">{escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" class="empty">no data yet</text>')
        return "".join(parts) + "</svg>"
    left, right, top, bottom = 56, width - 12, 28, height - 36
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" class="axis"/>')
    for value, y in ((y0, bottom), (y1, top)):
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{value:.4g}</text>')
    for value, x in ((x0, left), (x1, right)):
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" class="tick">{value:g}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle" class="tick">step</text>')
    if y_label:
        parts.append(f'<text x="10" y="{(top + bottom) / 2:.0f}" class="tick">{escape(y_label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<g class="series" data-name="{escape(name)}" data-points="{len(values)}">')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        parts += [f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}"><title>'
                  f'{escape(name)} step {x:g}: {y:.5g}</title></circle>' for x, y in values]
        parts.append(f'<text x="{right - 4}" y="{top + 14 * (index + 1)}" text-anchor="end" fill="{color}" '
                     f'class="legend">{escape(name)}</text></g>')
    return "".join(parts) + "</svg>"
