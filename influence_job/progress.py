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

            width = shutil.get_terminal_size((100, 20)).columns or 100  # some pseudo-terminals report 0
            self.bar = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, leave=True, ncols=min(width, 120))

    def step(self, done: int, detail: str = "") -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if detail:
                self.bar.set_postfix_str(detail, refresh=False)
            if done >= self.total:
                self.bar.close()
        else:
            log.info("[%s] %s %d/%d %s", self.phase, self.unit, done, self.total, detail)
