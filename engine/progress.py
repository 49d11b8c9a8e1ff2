"""A stage's progress read from its console output as it grows in a file (a grid cell's launch.log):
the stage that starts, its log lines, and its progress bar (epochs, generations) at most every few
seconds, for a launcher to show on its own console."""
from __future__ import annotations

import codecs
import re
import time
from pathlib import Path

# tqdm's bar, e.g. "supernet:  40%|████      | 16/40 [01:06<02:51,  7.15s/it, loss=1.2686, lr=2.08e-03]"
BAR = re.compile(r"(?P<desc>[^\r\n|]*?): *\d+%\|[^|]*\| *(?P<n>\d+)/(?P<total>\d+) \[(?P<info>[^\]\r\n]*)\]")
LOG = re.compile(r"\d\d:\d\d:\d\d (?P<message>.+)")  # a log line of the stages (engine.run's format)
START = re.compile(r"== \S+ \S+ (?P<command>.+)")  # the launcher's line before each stage's command
SAID = re.compile(r"(error|stopped|note|warning): ")  # a line a stage says on its own, not through its log


class LogFollower:
    """The new events of a growing console log, each as one line of text.

    Only what is appended after the follower is made counts. A bar is reported when its count
    changes, at most every `every` seconds, and always when it reaches its total.
    """

    def __init__(self, path: Path, every: float = 10.0):
        self.path, self.every = Path(path), every
        self.offset = self.path.stat().st_size if self.path.is_file() else 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # the last line, not ended yet
        self._bar = (None, -float("inf"))  # (desc and count last reported, when)

    def poll(self) -> list[str]:
        """The events appended since the last poll."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # not written yet
            return []
        self.offset += len(data)
        *lines, partial = (self._partial + self._decoder.decode(data)).split("\n")
        events = [e for line in lines for segment in line.split("\r") for e in self._events(segment)]
        # A bar redrawn in place ends no line: its latest complete drawing is its state now, and
        # only the drawing being written is kept (the others are past states, not worth showing).
        *drawn, self._partial = partial.split("\r")
        current = BAR.fullmatch(self._partial) or (BAR.fullmatch(drawn[-1]) if drawn else None)
        if current:
            events += self._bar_event(current)
        return events

    def _events(self, segment: str) -> list[str]:
        bar = BAR.match(segment)
        if bar:  # a log line written while a bar was drawn follows it on the same line
            return self._bar_event(bar) + self._events(segment[bar.end():])
        for pattern, show in ((LOG, lambda m: m["message"]), (START, lambda m: _start(m["command"])),
                              (SAID, lambda m: m.string)):
            m = pattern.match(segment.strip())
            if m:
                return [show(m).strip()]
        return []

    def _bar_event(self, bar: re.Match) -> list[str]:
        n, total = int(bar["n"]), int(bar["total"])
        key, now = (bar["desc"].strip(), n), time.monotonic()
        if key == self._bar[0] or (n < total and now - self._bar[1] < self.every):
            return []
        self._bar = (key, now)
        info = ", ".join(part.strip() for part in bar["info"].split(","))
        return [f"{key[0]} {n}/{total} [{info}]"]


def _start(command: str) -> str:
    """`starts train.py` (or `resumes train.py`) from the command line the launcher logged."""
    words = command.split()
    script = next((Path(w).name for w in words if w.endswith(".py")), words[0])
    return f"{'resumes' if '--resume' in words else 'starts'} {script}"
