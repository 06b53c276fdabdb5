"""Progress bars: the one place that decides how progress is shown.

On a terminal, `bar(...)` is a tqdm bar. When the stream is not a terminal (a log file, a pipe,
a CI job) tqdm's carriage returns and redraws pile up as control sequences, so `bar` returns a
`LineProgress` instead: one plain line at most every `LINE_INTERVAL` seconds, none for short
work (the caller's own summary line says how it went).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

LINE_INTERVAL = 30.0  # seconds between two progress lines on a non-terminal


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(iterable: Iterable | None = None, *, file=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal (stderr by default), else a `LineProgress`."""
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=stream, **kwargs)
    return LineProgress(
        iterable,
        file=stream,
        desc=kwargs.get("desc", ""),
        total=kwargs.get("total"),
        unit=kwargs.get("unit", "it"),
        disable=bool(kwargs.get("disable", False)),
    )


class LineProgress:
    """The parts of tqdm's interface the project uses, printing plain timed lines."""

    def __init__(self, iterable=None, *, file, desc="", total=None, unit="it", disable=False):
        self.iterable, self.file, self.desc, self.unit = iterable, file, desc, unit
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.disable, self.n, self.postfix = total, disable, 0, ""
        self._start = self._last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def __len__(self) -> int:
        return len(self.iterable) if self.total is None else self.total

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= LINE_INTERVAL:
            self._last = now
            done = f"{self.n}/{self.total}" if self.total else str(self.n)
            extra = f" ({self.postfix})" if self.postfix else ""
            print(
                f"{self.desc}: {done} {self.unit}{extra}, {now - self._start:.0f} s",
                file=self.file,
                flush=True,
            )

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        del refresh
        self.postfix = text

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        del refresh
        self.desc = desc

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
