"""results.json as a typed model: what a run writes and what every reader (report, publish) reads.

The model is the output contract (docs/outputs.md) made checkable: a run validates its result against it before
writing, ``influence-job schema results`` prints its JSON Schema, and readers load results through it, so a
missing or renamed field fails where it is read with the field's name instead of deep inside a report.
Non-finite numbers are written as null (strict JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from influence_job.base.errors import InputError

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Summary(_Model):
    mean: float | None
    std: float | None
    min: float | None
    max: float | None


class Cell(_Model):
    """Unordered pairs i < j of one scope and category."""

    n: int
    dot: Summary
    cos: Summary


class Categories(_Model):
    acc_acc: Cell = Field(alias="acc-acc")
    rej_rej: Cell = Field(alias="rej-rej")
    acc_rej: Cell = Field(alias="acc-rej")


class SelfDotCell(Summary):
    n: int


class SelfDots(_Model):
    acc: SelfDotCell
    rej: SelfDotCell
    all: SelfDotCell


class MatrixStatistics(_Model):
    per_prompt: Categories
    cross_prompt: Categories
    all_prompt: Categories
    self_dot: SelfDots


class Similarity(_Model):
    raw: MatrixStatistics
    hinv: MatrixStatistics


class Shares(_Model):
    acc_acc: float | None = Field(alias="acc-acc")
    rej_rej: float | None = Field(alias="rej-rej")
    acc_rej: float | None = Field(alias="acc-rej")
    self_dot: float | None = Field(alias="self", description="Mean self-dot over all responses.")


class Contribution(_Model):
    """The module's part of the per-prompt mean dots (its own G_m G_mᵀ or G_m H_m⁻¹ G_mᵀ); summed over the
    modules it gives the model's per-prompt mean dots."""

    raw: Shares
    hinv: Shares


class ModuleRecord(_Model):
    name: str
    kind: str
    layer: int | None
    in_features: int
    out_features: int
    k_in: int
    k_out: int
    D: int
    hessian_peak_mb: int = Field(description="Size of the dense D×D float64 curvature in MiB.")
    solver: str = Field(description="Route of the module's factorisations: kernel, dense or mixed(...).")
    damping: float | None = Field(description="λ of the global factorisation (null in per-prompt scope).")
    solve_seconds: float = Field(description="Seconds of the module's curvature and solves, in the attempt that "
                                 "computed it (see resumed).")
    resumed: bool = Field(
        False, description="The module's contribution came from an earlier attempt's checkpoint: its seconds are that "
        "attempt's, and not in performance (which is this attempt's).")
    diagnostic_seconds: float = Field(
        description="Seconds of the diagnostics computed from this module's factors (unprojected comparison, "
        "curvature similarity): in the phase 'diagnostics' (in results written before it: inside curvature_solve), "
        "not in solve_seconds.")
    factorisations: int
    failed_factorisations: int
    gram_dtype: str | None = Field(
        None, description="Products of the module's dense token Grams (compute.gram_dtype as resolved for each "
        "factorisation): float64, or float32/tf32 refined to float64 solves, or mixed(...); null when no dense "
        "token Gram was built (kernel route, response source) and in results written before it existed.")
    refinement_steps: int = Field(
        0, description="Exact float64 applications of H that refinement took over the module's factorisations "
        "(0 with float64 products).")
    contribution: Contribution | None = Field(None, description="Null in results written before it existed.")


class TokenScore(_Model):
    response_id: str
    position: int = Field(description="The token's position in its response (0-based).")
    score: float


class SideMeans(_Model):
    accepted: float | None
    rejected: float | None


class ScoreSummary(_Model):
    tokens: int = Field(description="Tokens with a score (those of prompts with an accepted/rejected contrast).")
    mean: float
    std: float = Field(description="Population standard deviation of the token scores.")
    positive_share: float = Field(description="Fraction of scored tokens with a positive score.")
    max: TokenScore
    min: TokenScore
    score_sum_mean: SideMeans = Field(description="Mean of the responses' score sums, by side.")


class InfluenceSummary(_Model):
    enabled: bool
    rows: int
    skipped_rows: int
    skipped_prompts: list[str]
    aggregate: str
    exclude_self: bool
    scores: ScoreSummary | None = Field(None, description="Null when no token is scored, or in older results.")


class Fidelity(_Model):
    self_dot_relative_error: float | None
    relative_std_bound: float
    sigma: float
    tolerance: float
    passed: bool


class UnprojectedComparison(_Model):
    module: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int
    unprojected: MatrixStatistics
    projected: MatrixStatistics
    relative_difference: dict[str, dict[str, float | None]]
    fidelity: Fidelity


class OffDiagonal(_Model):
    mean: float | None
    min: float | None
    max: float | None


class KindSimilarity(_Model):
    modules: int
    frobenius_cos: OffDiagonal
    spectrum_cos: OffDiagonal
    spectrum_cos_bound: float | None = Field(
        None, description="Largest error bound of a spectrum cosine (0 when every spectrum was computed whole; "
        "above diagnostics.EXACT_SPECTRUM_MAX only the leading eigenvalues are); null in older results.")
    frobenius_cos_matrix: list[list[float | None]]


class Check(_Model):
    name: str
    passed: bool
    detail: str


class Validation(_Model):
    rows_emitted: int
    nan_count: int
    checks: list[Check]
    passed: bool


class Fingerprint(_Model):
    """Hashes of everything that determines the result (see checkpoint.py); ``run`` combines the parts."""

    run: str
    config: str
    data: str
    model: str
    package: str


class CheckpointInfo(_Model):
    dir: str | None = Field(description="The checkpoint directory, or null for a run that keeps none.")
    kept: bool = Field(description="Whether it was kept after the run (else it was removed on success).")
    resumed_modules: int = Field(description="Modules whose contributions came from an earlier run.")
    computed_modules: int = Field(description="Modules this run computed.")


class Environment(_Model):
    influence_job: str
    python: str
    torch: str
    transformers: str
    numpy: str
    device: str
    host: str
    world_size: int
    host_memory_bytes: int | None = Field(None, description="Physical memory of the host (rank 0's).")
    gpu_memory_bytes: int | None = Field(None, description="Memory of rank 0's GPU; null on CPU.")


class Performance(_Model):
    """This attempt's costs: a resumed run's wall time, phases, solves and diagnostics all cover the modules it
    computed itself (modules[].resumed is false), never an earlier attempt's."""

    wall_seconds: float
    phase_seconds: dict[str, float]
    hessian_solve_seconds: float = Field(description="Sum of the solve_seconds of the modules this attempt computed.")
    diagnostics_seconds: float = Field(
        description="Sum of the diagnostic_seconds of the modules this attempt computed.")
    peak_gpu_mem_bytes: int
    peak_host_mem_bytes: int
    rank_phase_seconds: list[dict[str, float]]


class Results(_Model):
    schema_version: int = SCHEMA_VERSION
    n_responses: int
    n_prompts: int
    n_accepted: int
    n_rejected: int
    n_positions: int
    n_response_tokens: int
    model: str
    modules: list[ModuleRecord]
    similarity: Similarity
    influence: InfluenceSummary
    unprojected_comparison: UnprojectedComparison | None
    curvature_similarity: dict[str, KindSimilarity]
    validation: Validation
    warnings: list[str]
    fingerprint: Fingerprint
    checkpoint: CheckpointInfo
    config: dict[str, Any] = Field(description="The resolved configuration (influence-job config).")
    environment: Environment
    performance: Performance
    finished_at: str | None = Field(None, description="When the run finished (UTC, ISO 8601); null in older results.")

    def as_dict(self) -> dict:
        """The JSON form (the field names of results.json, e.g. 'acc-acc')."""
        return self.model_dump(mode="json", by_alias=True)


def results_schema() -> dict:
    return Results.model_json_schema(by_alias=True)


def read_results(path: Path) -> Results:
    """A results.json (or an output directory holding one), validated; errors name the file and field."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}. Give an influence-job output directory.") from None
    try:
        return Results.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(
            f"{path} is not a valid influence-job results.json ({exc.error_count()} problem(s); first: {where}: "
            f"{first['msg']}). Give a run's output directory; a result written by an older version needs a re-run."
        ) from None


def scopes_of(stats: dict) -> list[str]:
    """The pair scopes of one method's statistics (``results["similarity"]["raw"]``), in the order results.json
    lists them: what the reports render is what the result holds."""
    return [scope for scope in stats if scope != "self_dot"]


def categories_of(stats: dict) -> list[str]:
    """The pair categories of one method's statistics, in results.json's order."""
    return list(stats["per_prompt"])
