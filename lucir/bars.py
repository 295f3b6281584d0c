"""Progress bars that a log file can hold. On a terminal (or in a notebook) a bar redraws itself;
written to a file or a pipe (a batch job's log, `nohup ... > log`), the same bar becomes plain
lines, at most one per PLAIN_INTERVAL seconds and one at its end, with no carriage returns or
cursor moves, so that the log reads top to bottom and stays small."""
from __future__ import annotations

import os
import sys

PLAIN_INTERVAL = float(os.environ.get("LUCIR_PROGRESS_INTERVAL", 30))  # seconds between two lines


def plain(stream=None) -> bool:
    """Whether bars on `stream` (stderr by default) should be plain lines: not a terminal, and not
    a Jupyter kernel's output (where tqdm.auto draws a widget or a redrawn text bar)."""
    stream = stream if stream is not None else sys.stderr
    if "ipykernel" in sys.modules:
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return True


class LineStream:
    """What tqdm writes, as lines: each redraw ('\\r' + status) becomes the status on a line of its
    own; cursor moves and blank redraws are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\x1b[A", "").split("\r"):
            line = part.strip("\n").rstrip()
            if line:
                self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar_options(stream=None) -> dict:
    """tqdm keyword arguments: none on a terminal; plain lines (LineStream, PLAIN_INTERVAL apart)
    elsewhere, with the counts, times and every figure of the postfix (an epoch's losses and
    training accuracy) but no bar: ncols=0 is tqdm's "stats only", which is never cut to a width,
    where a line of a fixed width lost its last figures to the bar."""
    stream = stream if stream is not None else sys.stderr
    if not plain(stream):
        return {}
    return {"file": LineStream(stream), "mininterval": PLAIN_INTERVAL, "maxinterval": PLAIN_INTERVAL * 2,
            "ascii": True, "ncols": 0, "dynamic_ncols": False}
