"""A dependency-free progress line on stderr for long runs over folders."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints "label  i/n  pct  elapsed  eta" on stderr; one line per update on non-terminals (throttled)."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 1
        self.start = time.monotonic()
        self.done = 0
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1, note: str = "") -> None:
        """Advance by `n` items."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        final = self.done >= self.total
        if not final and now - self._last < (0.1 if self._tty else 2.0):
            return
        self._last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (
            f"{self.label} {self.done}/{self.total} {100 * self.done / self.total:5.1f}%"
            f" {elapsed:6.1f}s eta {eta:5.1f}s {note}"
        )
        if self._tty:
            self.stream.write("\r" + line[:120].ljust(120) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
