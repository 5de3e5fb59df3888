"""A progress display on stderr: a bar redrawn in place on a terminal; in a log file (SLURM, CI)
a few lines a pass.

In a log, a line costs a line for good: a pass prints its start and its end, and between them a
line only once both a tenth of the pass and 30 s have gone by since the last one. A quick pass
is two lines whatever its number of tasks; an hour-long one a line every 6 minutes.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Callable
from typing import TextIO

#: In a log, the least progress (a fraction of the pass) and the least time (seconds) between
#: two lines of one pass.
LOG_STEP = 0.1
LOG_SECONDS = 30.0

#: Bars whose terminal line is still open (drawn without its newline).
_OPEN: weakref.WeakSet[ProgressBar] = weakref.WeakSet()


def end_open_lines() -> None:
    """End every bar's line left open on a terminal (a run stopped mid-way), so that the
    error printed next starts on a line of its own."""
    for bar in list(_OPEN):
        bar.close()


class ProgressBar:
    """Callable as ``bar(done, total)``; pass it as the pipeline's ``progress`` hook.

    Args:
        label: what is counted (``shards``, ``images``), the start of every line.
        stream: where to write (default: stderr).
        width: characters of the bar on a terminal.
        clock: seconds from any origin, never going back (tests pass their own).
    """

    def __init__(
        self,
        label: str = "shards",
        stream: TextIO | None = None,
        width: int = 30,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.label, self.stream, self.width, self.clock = label, stream or sys.stderr, width, clock
        self.start = clock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1  # for subclasses that keep their own log rule
        self._open = False
        self._pass: tuple[int, int] | None = None  # (total, done) of the last update
        self._line: tuple[float, float] | None = None  # (fraction, time) of the last log line

    def __call__(self, done: int, total: int) -> None:
        self._update(done, total, self.label)

    def _update(self, done: int, total: int, label: str) -> None:
        now = self.clock()
        elapsed = now - self.start
        frac = min(1.0, done / total) if total else 1.0
        if self.tty:
            filled = round(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{label} [{bar}] {done:,}/{total:,} {elapsed:6.1f}s{end}")
            self._set_open(not end)
        else:
            if not self._log_line_due(done, total, frac, now):
                return
            self.stream.write(f"{label}: {done:,}/{total:,} done, {elapsed:.1f}s\n")
        self.stream.flush()

    def counting(self, label: str) -> Callable[[int, int], None]:
        """This bar as a hook of a pass that counts something else (``images`` while a
        measurement extracts its inputs first): its lines say ``label``."""
        return lambda done, total: self._update(done, total, label)

    def _log_line_due(self, done: int, total: int, frac: float, now: float) -> bool:
        """Whether a log line is due: the first update of a pass, its last, or one a tenth of
        the pass and 30 s after the last line."""
        previous, self._pass = self._pass, (total, done)
        new_pass = previous is None or previous[0] != total or done < previous[1]
        if new_pass or self._line is None:
            due = True
        elif done >= total:
            due = previous is None or previous[1] < total  # the end, once
        else:
            last_frac, last_time = self._line
            due = frac - last_frac >= LOG_STEP - 1e-12 and now - last_time >= LOG_SECONDS
        if due:
            self._line = (frac, now)
        return due

    def _set_open(self, is_open: bool) -> None:
        self._open = is_open
        if is_open:
            _OPEN.add(self)
        else:
            _OPEN.discard(self)

    def close(self) -> None:
        """End a line left open on a terminal (a failure mid-way), so that the error that
        follows starts on its own line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._set_open(False)
