"""The exit codes of every command, in one place: the command line returns them, `--help` and README's table are
generated from them, the cluster's retry expression takes its transient codes from them, and `submit --wait`
explains a failed step by them. A workflow tells failures apart by these numbers, so each keeps its meaning."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    meaning: str

    def __new__(cls, value: int, meaning: str):
        code = int.__new__(cls, value)
        code._value_ = value
        code.meaning = meaning
        return code

    OK = 0, "success"
    CHECK_FAILED = 1, ("a check failed: run, a validation check (the outputs are written and say which); compare, a "
                       "regression; trace, a step failed or failed validation (the trace names it); submit --wait "
                       "and publish, the workflow's run did not succeed")
    INPUT = 2, ("bad input or configuration: a one-paragraph message names the problem and the fix (also an output "
                "directory the run must not replace)")
    DISTRIBUTED = 3, ("a collective across torchrun ranks failed: a rank died or did not answer within "
                      "compute.timeout_seconds (NCCL, a lost GPU)")
    FAILURE = 4, "an unexpected failure (a bug, or the machine: memory, disk), with its traceback"
    NOT_COMPARABLE = 5, "compare: the runs are not comparable (other data, model, modules or projection shape)"
    TIMED_OUT = 124, "submit --wait: the workflow was still running when --timeout ran out"
    SIGINT = 130, "stopped by SIGINT: one line says so; the previous output is intact"
    SIGKILL = 137, "killed by SIGKILL (the OOM killer or the kubelet): the checkpoint keeps the finished modules"
    PIPE = 141, "stdout was closed early (e.g. piped into head): the command stopped quietly"
    SIGTERM = 143, ("stopped by SIGTERM (eviction, preemption, deletion): one line says so; the previous output is "
                    "intact")


# What the cluster retries: the run step's codes that a second attempt, resuming from the checkpoint, can pass.
TRANSIENT = (ExitCode.DISTRIBUTED, ExitCode.SIGKILL, ExitCode.SIGTERM)


def table() -> str:
    """README's table of exit codes (tests/cli/test_cli_outputs.py checks README holds exactly this)."""
    rows = [f"| `{int(c)}` | {c.meaning}{' (the cluster retries it)' if c in TRANSIENT else ''} |" for c in ExitCode]
    return "\n".join(["| exit code | meaning |", "| --- | --- |", *rows])


def help_text() -> str:
    """The exit codes as `influence-job --help` lists them, wrapped to a terminal's width."""
    return "exit codes:\n" + "\n".join(
        textwrap.fill(c.meaning, 100, initial_indent=f"  {int(c):>3}  ", subsequent_indent=" " * 7) for c in ExitCode)
