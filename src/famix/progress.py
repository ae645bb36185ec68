"""Progress bars that read well in a terminal and in a log file.

In a terminal: a tqdm bar redrawn in place. Written to a file or a pipe (a batch job's log), a redrawn bar
becomes one endless line of carriage returns, so there it prints a plain line at most every
``FILE_INTERVAL`` seconds, and at the end.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

FILE_INTERVAL = 30.0  # seconds between progress lines in a log file


class _LineBar(tqdm):
    """A tqdm that writes each refresh as its own line (no carriage return)."""

    _last_n: int | None = None

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next timed line

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        text = (msg or self.__str__()).strip()
        if text and self.n != self._last_n:  # one line per position (close() redisplays the last one)
            self.fp.write(text + "\n")
            self.fp.flush()
            self._last_n = self.n
        return True


class _Lines:
    """The log stream, minus the bare newline tqdm writes when it closes (each line already ends in one)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if text != "\n":
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, as lines every ``FILE_INTERVAL`` s when stderr is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    kwargs["file"] = _Lines(stream)
    kwargs.setdefault("mininterval", FILE_INTERVAL)
    kwargs.setdefault("maxinterval", FILE_INTERVAL * 4)
    kwargs.setdefault(
        "bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
    )
    return _LineBar(iterable, **kwargs)
