"""Progress for long work that tells the truth in a terminal (a tqdm bar) and in a log file (plain lines).

A tqdm bar redrawn with carriage returns reads as one stale line in a log file or CI output; there, a
line every LOG_INTERVAL_S with the latest figures says what is happening.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

# A log line at most this often: often enough to see a fit move, rare enough to keep a log readable.
LOG_INTERVAL_S = 15.0


class LineProgress:
    """The part of tqdm's interface vsae uses, writing one plain line per interval instead of redrawing."""

    def __init__(self, total: float | None, desc: str, unit: str, file: IO[str] | None = None,
                 interval_s: float = LOG_INTERVAL_S, clock=time.monotonic) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.file = file or sys.stderr
        self.interval_s, self.clock = interval_s, clock
        self.start = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self.write_line()

    def write_line(self) -> None:
        done = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done}{pct}, {self.clock() - self.start:.0f} s elapsed{extra}", file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write_line()


def progress(total: float | None, desc: str, unit: str, disable: bool = False, file: IO[str] | None = None, **tqdm_kw: Any):
    """A tqdm bar on a terminal, plain periodic lines elsewhere, nothing when `disable`."""
    stream = file or sys.stderr
    if disable or stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=stream, dynamic_ncols=True, **tqdm_kw)
    return LineProgress(total, desc, unit, stream)
