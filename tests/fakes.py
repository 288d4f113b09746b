"""Fakes that several unit test files share."""

from __future__ import annotations


class RecordedMeter:
    """Stands in for peftsft.data.parallel.Meter and records each one made: its label, total and the rows advanced.
    Reset `RecordedMeter.made = []` before use."""

    made: list = []

    def __init__(self, console, label, total, unit="rows"):
        self.console, self.label, self.total, self.done = console, label, total, 0
        RecordedMeter.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None

    def advance(self, rows):
        self.done += rows


class DatasetRows(list):
    """Row dicts with the column access and column names of a `datasets.Dataset`."""

    @property
    def column_names(self):
        return list(self[0])

    def __getitem__(self, key):
        return [row[key] for row in self] if isinstance(key, str) else super().__getitem__(key)
