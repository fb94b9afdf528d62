"""The trace as data: each step's statistics read from its results.json, one value per step × statistic.

trace.json (``Trace``, typed like results.json) keeps the steps (paths, status, why a step is missing) and one
series per statistic, aligned with the steps; trace.parquet is the same numbers as one long table (step,
statistic, value) that pandas, Polars and DuckDB open as they are. A step without a result has null values.

Statistic names are results.json's paths: ``similarity.hinv.per_prompt.acc-acc.cos.mean``, the self-dots,
``share.<method>.<category>.<module kind>`` (a module kind's share of the per-prompt mean dot), the skipped rows
and prompts, the validation verdict and counts, and the costs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from influence_job.outputs.findings import module_shares
from influence_job.outputs.results import Number, Results

TRACE_SCHEMA_VERSION = 1


class TraceStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(description="The training step (for a gathered output without one: its position).")
    label: str = Field(description="How the step is shown: its number, or a gathered output's directory name.")
    model: str | None = Field(description="The step's checkpoint directory (null for a gathered output).")
    data: str | None = Field(description="The step's batch (null for a gathered output).")
    output: str = Field(description="The step's run output directory (its report.html is linked from trace.html).")
    status: Literal["computed", "reused", "gathered", "failed"] = Field(
        description="computed or reused by this trace, read from an existing output (gathered), or failed.")
    reason: str | None = Field(None, description="Why a failed step has no result.")
    validation_passed: bool | None = Field(None, description="The step's validation verdict; null when failed.")
    fingerprint: str | None = Field(None, description="The step's result fingerprint (results.json's run hash).")
    finished_at: str | None = Field(None, description="When the step's run finished.")

    @classmethod
    def of(cls, step: int, label: str, output: Path, status: str, results: Results | None, reason: str | None = None,
           model: str | None = None, data: str | None = None) -> TraceStep:
        """A step and what its result (None: it has none) says of it."""
        return cls(step=step, label=label, model=model, data=data, output=str(output), status=status, reason=reason,
                   validation_passed=None if results is None else results.validation.passed,
                   fingerprint=None if results is None else results.fingerprint.run,
                   finished_at=None if results is None else results.finished_at)

    @property
    def passed(self) -> bool:
        """It has a result, and that result passed validation."""
        return self.validation_passed is True


class Trace(BaseModel):
    """trace.json."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = TRACE_SCHEMA_VERSION
    steps: list[TraceStep]
    series: dict[str, list[Number]] = Field(
        description="Statistic → its value at each step, in the steps' order (null where a step has none).")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def step_statistics(results: Results) -> dict[str, float | None]:
    """One step's statistics, named by their results.json paths."""
    out: dict[str, float | None] = {}
    for method, stats in results.similarity.methods().items():
        out |= {path: None if value is None else float(value) for path, value in stats.leaves(f"similarity.{method}")}
    modules = results.modules
    if modules and all(m.contribution for m in modules):
        kinds, shares = module_shares(modules, lambda m: m.kind)
        for method, by_category in shares.items():
            for category, values in by_category.items():
                out |= {f"share.{method}.{category}.{kind}": _finite(v) for kind, v in zip(kinds, values, strict=True)}
    v, perf = results.validation, results.performance
    out |= {
        "influence.skipped_rows": float(results.influence.skipped_rows),
        "influence.skipped_prompts": float(len(results.influence.skipped_prompts)),
        "validation.passed": float(v.passed), "validation.nan_count": float(v.nan_count),
        "validation.rows_emitted": float(v.rows_emitted),
        "performance.wall_seconds": perf.wall_seconds, "performance.hessian_solve_seconds": perf.hessian_solve_seconds,
        "performance.peak_gpu_mem_bytes": float(perf.peak_gpu_mem_bytes),
        "performance.peak_host_mem_bytes": float(perf.peak_host_mem_bytes),
    }
    return out


def build_trace(steps: list[TraceStep], results: list[Results | None]) -> Trace:
    """The trace of ``steps``, whose results (None for a failed step) are aligned with them."""
    per_step = [step_statistics(r) if r is not None else {} for r in results]
    names = list(dict.fromkeys(name for stats in per_step for name in stats))
    return Trace(steps=steps, series={name: [stats.get(name) for stats in per_step] for name in names})


def trace_table(trace: Trace):
    """The long table: one row per step × statistic."""
    import pyarrow as pa

    rows = [(s.step, s.label, name, values[k]) for name, values in trace.series.items()
            for k, s in enumerate(trace.steps)]
    return pa.table({
        "step": pa.array([r[0] for r in rows], type=pa.int64()),
        "label": pa.array([r[1] for r in rows], type=pa.string()),
        "statistic": pa.array([r[2] for r in rows], type=pa.string()),
        "value": pa.array([r[3] for r in rows], type=pa.float64()),
    })


def gathered_step(position: int, output: Path, results: Results | None, reason: str | None) -> TraceStep:
    """A step read from an existing run output: its number from the directory name's trailing digits
    (global_step_300 → 300), else its position among the outputs given."""
    digits = re.search(r"(\d+)$", output.name)
    return TraceStep.of(int(digits.group(1)) if digits else position, output.name, output,
                        "gathered" if results is not None else "failed", results, reason)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
