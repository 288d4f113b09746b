"""Classification metrics: accuracy, macro-F1 (as scikit-learn computes it) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> np.ndarray:
    """counts[i, j]: rows whose true label is i and predicted label is j."""
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(true * n_labels + pred, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def per_label_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every label; 0 where undefined (no predictions / no rows)."""
    tp = np.diag(counts).astype(float)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * tp, predicted + support, out=np.zeros_like(tp), where=(predicted + support) > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 over the labels that occur (in truth or prediction), per-label scores, confusion matrix."""
    counts = confusion_matrix(y_true, y_pred, len(names))
    scores = per_label_scores(counts)
    occurring = (scores["support"] + counts.sum(axis=0)) > 0
    total = int(counts.sum())
    return {
        "accuracy": float(np.trace(counts) / total) if total else 0.0,
        "macro_f1": float(scores["f1"][occurring].mean()) if occurring.any() else 0.0,
        "per_label": {
            name: {key: round(float(values[i]), 6) if key != "support" else int(values[i])
                   for key, values in scores.items()}
            for i, name in enumerate(names)
        },
        "confusion_matrix": {"labels": list(names), "rows_true_columns_predicted": counts.tolist()},
        "rows": total,
    }

