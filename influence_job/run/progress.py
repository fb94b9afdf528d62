"""Progress of a phase for people: a bar on a terminal, a log line per step otherwise (CI, pods)."""

from __future__ import annotations

import logging
import shutil
import sys

log = logging.getLogger("influence_job")


class Progress:
    def __init__(self, phase: str, total: int, unit: str):
        self.phase, self.total, self.unit = phase, total, unit
        self.bar = None
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            from tqdm import tqdm

            # Some pseudo-terminals report a 0×0 size, which makes tqdm hide the bar: fall back to 100×20.
            size = shutil.get_terminal_size((100, 20))
            self.bar = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, leave=True,
                            ncols=min(size.columns or 100, 120), nrows=max(size.lines, 20))

    def step(self, done: int, detail: str = "") -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if detail:
                self.bar.set_postfix_str(detail, refresh=False)
            if done >= self.total:
                self.bar.close()
        else:
            log.info("[%s] %s %d/%d %s", self.phase, self.unit, done, self.total, detail)
