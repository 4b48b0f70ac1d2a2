"""A one-line-per-step progress bar on stderr (autograde's batch)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.t0 = total, 0, stream, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"[{bar}] {self.done}/{self.total} {label} ({time.perf_counter() - self.t0:.0f}s)\n")
        self.stream.flush()
