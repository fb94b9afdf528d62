"""Clean stops: SIGINT and SIGTERM (what Kubernetes sends on eviction) end a run with one line, not a traceback.

While ``stop_signals()`` is active, either signal raises ``Stopped`` in the main thread; it unwinds like
KeyboardInterrupt (it is a BaseException, so no ``except Exception`` swallows it), every ``finally`` and
cleanup runs, and the command line turns it into one line and exit code 128 + signal (130, 143).

Inside ``committing()`` — the output's short write — the first signal is held: the write completes, so the
target holds either the previous result or the new one, never a mixture; a second signal stops at once
(the write's own cleanup still removes its staging directory).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger("influence_job")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A stop signal arrived; ``phase`` is the phase it interrupted (set as it leaves that phase)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.phase: str | None = None
        self.note: str | None = None  # what was kept, e.g. the checkpoint's saved modules

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self):
        self.deferring = False
        self.held: int | None = None  # a signal received while deferring
        self.after_commit: int | None = None  # a signal that arrived during or after the output's write


_state = _State()


def _handler(signum, _frame):
    if _state.deferring and _state.held is None:
        _state.held = signum
        log.warning("%s received while writing the output: finishing the write first (a second signal stops "
                    "at once)", signal.Signals(signum).name)
        return
    if _state.after_commit is not None and not _state.deferring:
        _state.after_commit = _state.after_commit or signum
        log.warning("%s received after the output was written: finishing", signal.Signals(signum).name)
        return
    raise Stopped(signum)


@contextmanager
def stop_signals():
    """Install the handlers for the block (main thread only: Python delivers signals there)."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield _state
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state = _State()
    try:
        yield _state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def committing():
    """The block writes the result. The first stop signal is held until the block ends; once it has ended
    normally the result is in place, and later signals are reported, not raised (there is nothing to save)."""
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = False
    _state.after_commit = _state.held or 0


def new_work() -> None:
    """A new piece of work begins in this process (a run; a trace's next step): from here a stop signal stops it
    again instead of being reported as late, and one that arrived while the previous result was written stops it
    now, before it starts."""
    pending, _state.after_commit = _state.after_commit, None
    if pending:
        raise Stopped(pending)


def signal_after_commit() -> str | None:
    """The name of a signal that arrived while or after the result was written, if any."""
    return signal.Signals(_state.after_commit).name if _state.after_commit else None
