"""results.json as a typed model: what a run writes and what every reader (report, publish) reads.

The model is the output contract (docs/outputs.md) made checkable: the run's statistics stage builds it, every
reader (reports, findings, figures, metrics, compare, publish) takes it, ``influence-job schema results`` prints its
JSON Schema, and results.json is read back through it, so a missing or renamed field fails where it is read with
the field's name instead of deep inside a report. A number that may be undefined (a category without pairs) is
``Number``: non-finite values become null, in memory as in the file, so a result reads the same before and after
it is written; every other float must be finite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from influence_job.base.errors import InputError

SCHEMA_VERSION = 1


def _finite_or_null(value):
    """NaN and ±Inf as None: results.json is strict JSON."""
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


Number = Annotated[float | None, BeforeValidator(_finite_or_null)]


class ResultSection(BaseModel):
    """A section of results.json (or the whole): unknown fields are refused, names follow the file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    def by_name(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields by their results.json names (aliases such as 'acc-acc'), in the file's order."""
        named = {(info.alias or name): getattr(self, name) for name, info in type(self).model_fields.items()}
        return {key: value for key, value in named.items() if key not in exclude}

    def leaves(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """(dotted results.json path, value) of every scalar below this section, in the file's order: for readers
        that treat the numbers of a section alike (compare's rows, the trace's statistics). Lists are left out."""
        for key, value in self.by_name().items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, ResultSection):
                yield from value.leaves(path)
            elif not isinstance(value, list | dict):
                yield path, value

    def as_json(self) -> Any:
        """The JSON form (results.json's field names, e.g. 'acc-acc'): for pages that embed a section as data."""
        return self.model_dump(mode="json", by_alias=True)


class Summary(ResultSection):
    mean: Number
    std: Number
    min: Number
    max: Number


class Cell(ResultSection):
    """Unordered pairs i < j of one scope and category."""

    n: int
    dot: Summary
    cos: Summary


class Categories(ResultSection):
    acc_acc: Cell = Field(alias="acc-acc")
    rej_rej: Cell = Field(alias="rej-rej")
    acc_rej: Cell = Field(alias="acc-rej")

    def cells(self) -> dict[str, Cell]:
        """Category name ('acc-acc', ...) → its cell, in results.json's order."""
        return self.by_name()


class SelfDotCell(Summary):
    n: int


class SelfDots(ResultSection):
    acc: SelfDotCell
    rej: SelfDotCell
    all: SelfDotCell

    def cells(self) -> dict[str, SelfDotCell]:
        """'acc', 'rej', 'all' → the self-dots of those responses."""
        return self.by_name()


class MatrixStatistics(ResultSection):
    per_prompt: Categories
    cross_prompt: Categories
    all_prompt: Categories
    self_dot: SelfDots

    def scopes(self) -> dict[str, Categories]:
        """The pair scopes ('per_prompt', ...) → their categories, in results.json's order: what a report renders
        is what the result holds."""
        return self.by_name(exclude=("self_dot",))


class Similarity(ResultSection):
    raw: MatrixStatistics
    hinv: MatrixStatistics

    def methods(self) -> dict[str, MatrixStatistics]:
        """'raw' and 'hinv' → their statistics."""
        return self.by_name()


class Shares(ResultSection):
    acc_acc: Number = Field(alias="acc-acc")
    rej_rej: Number = Field(alias="rej-rej")
    acc_rej: Number = Field(alias="acc-rej")
    self_dot: Number = Field(alias="self", description="Mean self-dot over all responses.")

    def pairs(self) -> dict[str, float | None]:
        """Category name → the module's part of that category's per-prompt mean dot (the self-dot left out)."""
        return self.by_name(exclude=("self",))


class Contribution(ResultSection):
    """The module's part of the per-prompt mean dots (its own G_m G_mᵀ or G_m H_m⁻¹ G_mᵀ); summed over the
    modules it gives the model's per-prompt mean dots."""

    raw: Shares
    hinv: Shares

    def methods(self) -> dict[str, Shares]:
        return self.by_name()


class ModuleRecord(ResultSection):
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
    damping: Number = Field(description="λ of the global factorisation (null in per-prompt scope).")
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


class TokenScore(ResultSection):
    response_id: str
    position: int = Field(description="The token's position in its response (0-based).")
    score: float


class SideMeans(ResultSection):
    accepted: Number
    rejected: Number


class ScoreSummary(ResultSection):
    tokens: int = Field(description="Tokens with a score (those of prompts with an accepted/rejected contrast).")
    mean: float
    std: float = Field(description="Population standard deviation of the token scores.")
    positive_share: float = Field(description="Fraction of scored tokens with a positive score.")
    max: TokenScore
    min: TokenScore
    score_sum_mean: SideMeans = Field(description="Mean of the responses' score sums, by side.")


class InfluenceSummary(ResultSection):
    enabled: bool
    rows: int
    skipped_rows: int
    skipped_prompts: list[str]
    aggregate: str
    exclude_self: bool
    scores: ScoreSummary | None = Field(None, description="Null when no token is scored, or in older results.")


class Fidelity(ResultSection):
    self_dot_relative_error: Number
    relative_std_bound: float
    sigma: float
    tolerance: float
    passed: bool


class UnprojectedComparison(ResultSection):
    module: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int
    unprojected: MatrixStatistics
    projected: MatrixStatistics
    relative_difference: dict[str, dict[str, Number]]
    fidelity: Fidelity


class OffDiagonal(ResultSection):
    mean: Number
    min: Number
    max: Number


class KindSimilarity(ResultSection):
    modules: int
    frobenius_cos: OffDiagonal
    spectrum_cos: OffDiagonal
    spectrum_cos_bound: Number = Field(
        None, description="Largest error bound of a spectrum cosine (0 when every spectrum was computed whole; "
        "above diagnostics.EXACT_SPECTRUM_MAX only the leading eigenvalues are); null in older results.")
    frobenius_cos_matrix: list[list[Number]]


class Check(ResultSection):
    name: str
    passed: bool
    detail: str


class Validation(ResultSection):
    rows_emitted: int
    nan_count: int
    checks: list[Check]
    passed: bool


class Fingerprint(ResultSection):
    """Hashes of everything that determines the result (see checkpoint.py); ``run`` combines the parts."""

    run: str
    config: str
    data: str
    model: str
    package: str


class CheckpointInfo(ResultSection):
    dir: str | None = Field(description="The checkpoint directory, or null for a run that keeps none.")
    kept: bool = Field(description="Whether it was kept after the run (else it was removed on success).")
    resumed_modules: int = Field(description="Modules whose contributions came from an earlier run.")
    computed_modules: int = Field(description="Modules this run computed.")


class Environment(ResultSection):
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


class Performance(ResultSection):
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


class Results(ResultSection):
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

    def to_json(self) -> str:
        """results.json's text."""
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


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


def value_at(model: BaseModel, path: str):
    """The value at a dotted path of results.json's names ('similarity.hinv.per_prompt.acc-acc.dot.mean'); None
    where the run did not produce it (a null section); a list counts its items."""
    node: Any = model
    for key in path.split("."):
        if node is None:
            return None
        node = node[key] if isinstance(node, dict) else node.by_name()[key]
    return len(node) if isinstance(node, list) else node


def check_path(path: str) -> None:
    """Raise ValueError unless ``path`` names a field of results.json (following model fields and mappings), so a
    figure defined by its path fails where it is defined, not where it is first read."""
    node: Any = Results
    for key in path.split("."):
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = {(info.alias or name): info.annotation for name, info in node.model_fields.items()}
            if key not in fields:
                raise ValueError(f"{path}: {node.__name__} has no field {key!r} (it has {', '.join(fields)})")
            node = fields[key]
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            raise ValueError(f"{path}: {key!r} is below a value that has no fields")


def _unwrap(annotation):
    """The type inside ``Annotated[X, ...]`` and ``X | None`` (a list stays a list: a path ends at its count)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        present = [a for a in get_args(annotation) if a is not type(None)]
        annotation = present[0] if len(present) == 1 else annotation
    return annotation
