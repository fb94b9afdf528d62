"""A trace's directory: ``steps/<step>/`` (each step's run output), and ``trace/`` (trace.json, trace.parquet,
trace.html), written as one atomic directory like a run's output, so a stop leaves the previous trace whole.

The directory carries a marker, ``.influence-job-trace``; a trace is written only into a new or empty directory or
one with that marker, never over anything else.
"""

from __future__ import annotations

from pathlib import Path

from influence_job.base.errors import InputError
from influence_job.outputs.results import Results, read_results
from influence_job.outputs.tables import parquet_bytes
from influence_job.outputs.writing import atomic_write_bytes, check_target, marker_bytes, write_output_dir
from influence_job.trace.page import render_trace
from influence_job.trace.steps import StepOutcome
from influence_job.trace.table import Trace, TraceStep, build_trace, gathered_step, trace_table

TRACE_MARKER = ".influence-job-trace"


def prepare_trace_dir(out_dir: Path) -> Path:
    """``out_dir`` resolved and marked as a trace directory; refused when it holds anything else."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"trace output {out_dir} exists and is not a directory. Choose another path.")
        if any(out_dir.iterdir()) and not (out_dir / TRACE_MARKER).is_file():
            raise InputError(f"trace output {out_dir} already exists, holds files and has no {TRACE_MARKER} marker, "
                             "so it is not a trace directory; a trace never writes over what it did not write. "
                             "Choose another directory, or empty this one.")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / TRACE_MARKER).is_file():
        atomic_write_bytes(out_dir / TRACE_MARKER, marker_bytes())
    check_target(out_dir / "trace", "the trace's directory", "A trace")
    return out_dir


def trace_of_outcomes(outcomes: list[StepOutcome]) -> Trace:
    """The trace of a specification's steps, as this command ran, reused or collected them."""
    steps = [TraceStep.of(o.step.step, str(o.step.step), o.output, o.status, o.results, o.reason,
                          str(o.step.model), str(o.step.data)) for o in outcomes]
    return build_trace(steps, [o.results for o in outcomes])


def gather(outputs: list[Path]) -> Trace:
    """The trace of existing run outputs (a trace's steps, a nightly's history), ordered by step; an output that
    cannot be read is a failed step with the reason."""
    read: list[tuple[TraceStep, Results | None]] = []
    for position, output in enumerate(outputs):
        try:
            results, reason = read_results(output), None
        except InputError as exc:
            results, reason = None, str(exc)
        read.append((gathered_step(position, Path(output).resolve(), results, reason), results))
    read.sort(key=lambda pair: pair[0].step)
    if len({s.step for s, _ in read}) != len(read):
        raise InputError("two gathered outputs have the same step number (the digits their directory names end "
                         "with); give outputs of different steps.")
    return build_trace([s for s, _ in read], [r for _, r in read])


def write_trace(out_dir: Path, trace: Trace) -> Path:
    """trace/ under ``out_dir``, atomically; returns the page's path."""
    target = out_dir / "trace"
    write_output_dir(target, {
        "trace.json": trace.to_json().encode(),
        "trace.parquet": parquet_bytes(trace_table(trace)),
        "trace.html": render_trace(trace, target).encode(),
    })
    return target / "trace.html"
