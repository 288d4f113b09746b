"""Stop strings for a streamed reply: cut at the first one, never letting part of one out before it is decided."""

from __future__ import annotations


class StopTrimmer:
    """Feed text as it streams; get back what may be shown. Text that could be the start of a stop string is held
    back until the next piece decides it (OpenAI replies end before the stop string and never contain it)."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            shown, self.pending = self.pending[: min(found)], ""
            return shown
        keep = self._held_back()
        shown, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return shown

    def flush(self) -> str:
        """The end of the reply: whatever was held back is text after all."""
        shown, self.pending = ("" if self.hit else self.pending), ""
        return shown

    def _held_back(self) -> int:
        """Length of the longest end of `pending` that begins some stop string."""
        for size in range(min(len(self.pending), max(map(len, self.stops), default=1) - 1), 0, -1):
            if any(stop.startswith(self.pending[-size:]) for stop in self.stops):
                return size
        return 0
