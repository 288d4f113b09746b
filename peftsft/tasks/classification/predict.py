"""Labels for texts from a trained classifier, and the table that shows them."""

from __future__ import annotations

from rich.table import Table


def predictions(classifier, texts: list[str], batch_size: int) -> list[dict]:
    """Per text: the predicted label, its probability, and every label's probability."""
    from peftsft.tasks.classification.model import logits_for

    probs = logits_for(classifier, texts, batch_size).softmax(-1)
    names = classifier.labels.names
    return [
        {"text": text, "label": names[int(p.argmax())], "score": round(float(p.max()), 6),
         "scores": {name: round(float(v), 6) for name, v in zip(names, p)}}
        for text, p in zip(texts, probs)
    ]


def prediction_table(rows: list[dict]) -> Table:
    table = Table("text", "label", "probability")
    for row in rows:
        table.add_row(row["text"], f"[bold]{row['label']}[/]", f"{row['score']:.3f}")
    return table
