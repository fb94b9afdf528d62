"""Command line: `run` computes the diagnostic, `plan` prices it, `config` shows its configuration; `render`,
`submit` and `preflight` drive the cluster job, `compare`, `baseline` and `report` review finished runs, and
`exporter` and `publish` are what the job's containers run.

Exit codes: influence_job/base/exit_codes.py (`influence-job --help` lists them). Layout: parser.py (arguments),
commands.py (what each command does), this module (logging, stops and exit codes around a command).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from influence_job.base.errors import DistributedError, InputError
from influence_job.base.exit_codes import ExitCode
from influence_job.cli.commands import command, resolve
from influence_job.cli.parser import build_parser
from influence_job.run.stops import Stopped, stop_signals


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the moment the
    handler was made: a caller (or a test harness) may have replaced and closed that one since."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


@contextmanager
def _command_logging(quiet: bool):
    """The package's log lines to stderr for the duration of one command, leaving logging as it was found."""
    logger = logging.getLogger("influence_job")
    handler = _StderrHandler()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    """`influence-job`: one command with its log lines on stderr and stops handled; every way it can end maps to
    one exit code (base/exit_codes.py)."""
    args = build_parser().parse_args(argv)
    with _command_logging(getattr(args, "quiet", False)), stop_signals():
        try:
            return command(args)
        except InputError as exc:
            print(f"influence-job: error: {exc}", file=sys.stderr)
            return ExitCode.INPUT
        except DistributedError as exc:
            print(f"influence-job: error: {exc}", file=sys.stderr)
            return ExitCode.DISTRIBUTED
        except Stopped as stop:
            print(f"influence-job: {_stop_line(stop, args)}", file=sys.stderr)
            return stop.exit_code
        except BrokenPipeError:  # stdout closed early (e.g. `| head`): stop quietly, as other commands do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.PIPE
        except KeyboardInterrupt:  # a SIGINT outside the handlers' reach (another thread's command)
            print("influence-job: stopped by SIGINT", file=sys.stderr)
            return ExitCode.SIGINT
        except Exception as exc:  # noqa: BLE001 - one exit code for every unexpected failure, with its trace
            traceback.print_exc()
            print(f"influence-job: error: unexpected failure ({type(exc).__name__}: {exc}); see the traceback "
                  "above. Exit code 4 means a bug or the machine (memory, disk), not your input.",
                  file=sys.stderr)
            return ExitCode.FAILURE


def _stop_line(stop: Stopped, args) -> str:
    """One line: what stopped where, and what state the output is in."""
    where = f" during [{stop.phase}]" if stop.phase else ""
    line = f"stopped by {stop.name}{where}"
    if args.command == "trace":
        return (f"{line}; the finished steps under {args.output}/steps are kept and the trace is as it was; repeating "
                "the command reuses them and goes on" + (f" ({stop.note})." if stop.note else "."))
    if args.command != "run":
        return line
    out = Path(getattr(args, "output", None) or _output_of(args))
    state = (f"nothing new was written: the previous output {out} is intact" if out.exists()
             else f"nothing was written to {out}")
    return f"{line}; {state}" + (f"; {stop.note}." if stop.note else ".")


def _output_of(args) -> Path:
    try:
        return resolve(args).output.dir
    except InputError:
        return Path("influence-output")


