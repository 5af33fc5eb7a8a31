"""Progress bars that suit where they are written: tqdm's live bar on a terminal; on a pipe or a file (a run's
log, CI) plain lines, one every ``LOG_INTERVAL_S`` seconds of a bar that lasts that long, instead of thousands of
carriage-return updates on one line (what finished is logged as a line of its own: "epoch 3: loss ...")."""

from __future__ import annotations

import io
import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # between progress lines when the output is not a terminal


class _Lines(io.TextIOBase):
    """What tqdm writes, as whole lines: its carriage returns and padding dropped, blank updates skipped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere a line every ``LOG_INTERVAL_S`` (none for a bar
    that ends sooner)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("delay", LOG_INTERVAL_S)
        kwargs["dynamic_ncols"] = False
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kwargs)
