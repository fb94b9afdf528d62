"""A run's headline figures, defined once: where results.json holds each, what it means, and the names under
which the workflow publishes it (an Argo output parameter of the publish step) and the Pushgateway keeps it
(a gauge the nightly trends and the alerts read). The publish step, the pushed summary and the alert rules'
tests all read this table, so a figure cannot be published under one definition and pushed under another.
"""

from __future__ import annotations

from dataclasses import dataclass

from influence_job.maths.similarity import CATEGORIES
from influence_job.outputs.results import Results, check_path, value_at


@dataclass(frozen=True)
class Figure:
    """One figure: its dotted path in results.json, its meaning, and its published and pushed names (None: not
    published, or not pushed)."""

    path: str
    help: str
    published: str | None = None
    gauge: str | None = None

    def __post_init__(self):
        check_path(self.path)  # a misspelt figure fails on import, not in the nightly's publish step

    def value(self, results: Results):
        """The figure in ``results`` (None where a run did not produce it); a list counts its items."""
        return value_at(results, self.path)


def _per_prompt(kind: str, category: str, what: str, published: str | None = None) -> Figure:
    return Figure(f"similarity.{kind}.per_prompt.{category}.{what}.mean",
                  f"{kind.upper()} per-prompt {category} {what} mean.", published,
                  f"run_{kind}_per_prompt_{category.replace('-', '_')}_{what}_mean")


# In the order the workflow lists its output parameters.
HEADLINE: tuple[Figure, ...] = (
    Figure("validation.rows_emitted", "Token-influence rows emitted.", "rows-emitted", "run_rows_emitted"),
    Figure("validation.passed", "1 when every validation check passed.", "validation-passed",
           "run_validation_passed"),
    _per_prompt("hinv", "acc-acc", "dot", "hinv-per-prompt-acc-acc-mean"),
    _per_prompt("raw", "acc-acc", "cos", "raw-per-prompt-acc-acc-cos-mean"),
    Figure("performance.hessian_solve_seconds", "Curvature+solve seconds of the modules this run computed.",
           "hessian-solve-seconds", "run_hessian_solve_seconds"),
    # Pushed from the command's own clock (run_wall_seconds), which also times a run that wrote no result.
    Figure("performance.wall_seconds", "Wall time of the run.", "wall-seconds"),
    Figure("performance.peak_gpu_mem_bytes", "Peak GPU memory allocated.", "peak-gpu-mem-bytes",
           "run_peak_gpu_memory_bytes"),
    Figure("performance.peak_host_mem_bytes", "Peak host memory (RSS).", "peak-host-mem-bytes",
           "run_peak_host_memory_bytes"),
    Figure("validation.nan_count", "Non-finite values found in the outputs.", "nan-count", "run_nonfinite_values"),
    Figure("n_responses", "Responses in the run.", gauge="run_responses"),
    Figure("modules", "Modules in the run.", gauge="run_modules"),
    *(_per_prompt(kind, category, what) for kind in ("raw", "hinv") for category in CATEGORIES
      for what in ("dot", "cos") if (kind, category, what) not in {("hinv", "acc-acc", "dot"),
                                                                     ("raw", "acc-acc", "cos")}),
)
PUBLISHED = {f.published: f.path for f in HEADLINE if f.published}
