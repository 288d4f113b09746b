"""Sequence classification (task = "classification"): an encoder with a classification head, tuned on labelled text.

data.py (rows → label map → tokenized datasets), model.py (load, strategy with the head trainable, trained
models back), metrics.py (accuracy, macro-F1, confusion matrix), predict.py (labels for texts), train.py (the run).
Its exports and eval live with the other artifacts (peftsft.artifacts); `predict` in peftsft.commands.classify.
"""

from __future__ import annotations


def train(recipe, console, overwrite: bool = False, resume=None, force: bool = False, callbacks=()) -> dict:
    """Train a classifier per the recipe (or resume its run); returns summary.json's contents."""
    from peftsft.tasks.classification.train import train as train_classifier

    return train_classifier(recipe, console, overwrite, resume, force, callbacks)
