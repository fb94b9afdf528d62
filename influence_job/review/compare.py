"""`influence-job compare BASELINE CANDIDATE`: what moved between two runs, with a verdict per quantity.

Both sides are read through the typed results model (results.py). First the identity: the same data
records, model, modules and projection shape, or the runs are *not comparable* (its own exit code, never a
pass). Settings that change the numbers and differ between the runs (e.g. curvature.source) are named before the
verdict: the comparison still judges, but says first that a moved number may be what the change was for. Then
every compared quantity gets a row — baseline, candidate, difference, tolerance, verdict:

- validation: rows emitted, non-finite values, every check (a new failure is a regression);
- numbers: every RAW and HINV statistic (scope × category × dot/cos × mean/std/min/max, self-dots), the
  unprojected comparison and the curvature-similarity summaries, |c − b| ≤ atol + rtol·|b| with the dot
  tolerances scaled by the baseline's mean self-dot; with both sides' similarity.npz for the same
  responses, the relative Frobenius difference of RAW, HINV and the token scores;
- cost: wall time, Hessian solve time, peak GPU and host memory against budget ratios; a candidate below
  the baseline is an *improvement*, reported as such, never a failure.

Exit codes: 0 no regression, 1 regression, 2 bad input, 5 not comparable (distinct from every other
command's codes, so that a workflow can tell it apart).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field

from influence_job.base.errors import InputError
from influence_job.base.exit_codes import ExitCode
from influence_job.inputs.config import Section
from influence_job.inputs.config_files import read_yaml_mapping, validate_with_overrides
from influence_job.outputs.results import Results, ResultSection, read_results
from influence_job.run.checkpoint import changed_settings, settings_part

ORDER = {"regression": 0, "not comparable": 0, "improvement": 1, "not judged": 2, "ok": 3}


class NumberTolerances(Section):
    rtol: float = Field(1e-3, ge=0, description="Relative tolerance of every statistic: |c − b| ≤ atol + rtol·|b|.")
    cos_atol: float = Field(1e-4, ge=0, description="Absolute tolerance of cosine statistics (scale-free).")
    dot_atol: float = Field(
        1e-4, ge=0,
        description="Absolute tolerance of dot statistics, as a fraction of the baseline's mean self-dot (dots "
        "near zero, e.g. cross-prompt means, need a floor on the matrix's own scale).",
    )
    matrix_rtol: float = Field(
        1e-3, ge=0, description="Relative Frobenius difference allowed for RAW, HINV and the token scores."
    )


class CostBudgets(Section):
    """A cost regresses when candidate > budget × baseline + slack: the ratio catches real slow-downs of long
    runs, the absolute slack keeps machine noise on short ones (seconds of jitter) from failing a nightly."""

    wall: float = Field(1.25, gt=0, description="Wall time may grow to this multiple of the baseline's.")
    hessian_solve: float = Field(1.25, gt=0, description="Hessian solve time may grow to this multiple.")
    peak_gpu_memory: float = Field(1.10, gt=0, description="Peak GPU memory may grow to this multiple.")
    peak_host_memory: float = Field(1.25, gt=0, description="Peak host memory may grow to this multiple.")
    wall_slack_seconds: float = Field(10.0, ge=0, description="Absolute slack added to the wall-time budget.")
    hessian_solve_slack_seconds: float = Field(2.0, ge=0, description="Absolute slack of the solve-time budget.")
    memory_slack_bytes: float = Field(2**28, ge=0, description="Absolute slack of both memory budgets (256 MiB).")


class Tolerances(Section):
    """`compare --tolerances FILE`: a YAML mapping with these sections; every key optional."""

    numbers: NumberTolerances = Field(default_factory=NumberTolerances)
    cost: CostBudgets = Field(default_factory=CostBudgets)


def load_tolerances(path: Path | None) -> Tolerances:
    data = {} if path is None else read_yaml_mapping(path, "tolerances file")
    return validate_with_overrides(Tolerances, data, None, str(path or "defaults"),
                                   docs="the tolerances table in docs/usage.md (Comparing runs and baselines)",
                                   what="tolerances file")


@dataclass
class Row:
    group: str
    quantity: str
    baseline: float | str | None
    candidate: float | str | None
    difference: float | None
    tolerance: str
    verdict: str
    key: str | None = None  # cost rows: the quantity's metric label (wall, hessian_solve, ...)
    budget: float | None = None  # cost rows: the allowed ratio


@dataclass
class Comparison:
    comparable: bool
    reasons: list[str]
    rows: list[Row]
    note: str | None = None  # e.g. the first night's promotion
    settings: list[str] = field(default_factory=list)  # settings that differ, "key (baseline → candidate)"

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regression"]

    @property
    def verdict(self) -> str:
        if not self.comparable:
            return "not comparable"
        return "regression" if self.regressions else "pass"

    @property
    def exit_code(self) -> int:
        if not self.comparable:
            return ExitCode.NOT_COMPARABLE
        return ExitCode.CHECK_FAILED if self.regressions else ExitCode.OK


def _identity(b: Results, c: Results) -> list[str]:
    reasons = []
    if b.fingerprint.data != c.fingerprint.data:
        reasons.append("the data records differ (fingerprint.data)")
    if b.fingerprint.model != c.fingerprint.model:
        reasons.append(f"the models differ ({b.model} vs {c.model}: fingerprint.model)")
    if [m.name for m in b.modules] != [m.name for m in c.modules]:
        reasons.append("the selected modules differ")
    shape = ("kind", "factor", "max_hessian_dim")
    pb, pc = b.config.get("projection", {}), c.config.get("projection", {})
    if any(pb.get(k) != pc.get(k) for k in shape):
        reasons.append(f"the projection shapes differ ({ {k: pb.get(k) for k in shape} } vs "
                       f"{ {k: pc.get(k) for k in shape} })")
    return reasons


def _settings_differ(b: Results, c: Results) -> list[str]:
    """The settings that change the numbers (those a checkpoint's fingerprint covers) and differ between the runs:
    a difference in the numbers that they explain may be intended."""
    bs, cs = settings_part(b.config), settings_part(c.config)

    def value(config: dict, key: str):
        for part in key.split("."):
            config = config.get(part) if isinstance(config, dict) else None
        return config

    def shown(v) -> str:
        return v if isinstance(v, str) else json.dumps(v)

    return [f"{key} ({shown(value(bs, key))} → {shown(value(cs, key))})" for key in changed_settings(bs, cs)]


def _number_row(group: str, quantity: str, b, c, atol: float, rtol: float) -> Row:
    if b is None or c is None:
        same = b is None and c is None
        return Row(group, quantity, b, c, None, "both null", "ok" if same else "regression")
    diff = c - b
    bound = atol + rtol * abs(b)
    ok = math.isfinite(c) and abs(diff) <= bound
    return Row(group, quantity, b, c, diff, f"±{bound:.3g}", "ok" if ok else "regression")


def _walk_stats(group: str, prefix: str, b: ResultSection, c: ResultSection | None, tol: NumberTolerances,
                dot_scale: float):
    """Rows for every number of a section of the results (statistics, a diagnostics summary), named by their
    results.json path."""
    theirs = dict(c.leaves(prefix)) if c is not None else {}
    for name, bv in b.leaves(prefix):
        cv = theirs.get(name)
        if name.endswith(".n"):
            yield Row(group, name, bv, cv, None if cv is None else cv - bv, "equal",
                      "ok" if bv == cv else "regression")
        elif bv is None or isinstance(bv, int | float) and not isinstance(bv, bool):
            is_cos = ".cos." in name or "_cos." in name  # a cell's cos stats, a *_cos summary
            atol = tol.cos_atol if is_cos else tol.dot_atol * dot_scale
            yield _number_row(group, name, bv, cv, atol, tol.rtol)


def cost_ratio(row: Row) -> float:
    b, c = row.baseline, row.candidate
    return c / b if b > 0 else (1.0 if c == 0 else math.inf)


def _cost_row(key: str, quantity: str, b: float, c: float, budget: float, slack: float, resumed: bool) -> Row:
    row = Row("cost", quantity, b, c, c - b, "", "ok", key=key, budget=budget)
    ratio = cost_ratio(row)
    if resumed:  # a resumed run's cost covers only part of the work: reported, not judged
        row.tolerance, row.verdict = f"not judged: a side resumed from a checkpoint (now {ratio:.2f}×)", "not judged"
        return row
    row.tolerance = f"≤ {budget:g}× + {slack:g} (now {ratio:.2f}×)"
    row.verdict = ("regression" if c > budget * b + slack else
                   "improvement" if c < b / budget - slack else "ok")
    return row


def _matrix_rows(baseline_dir: Path, candidate_dir: Path, tol: NumberTolerances) -> list[Row]:
    bs, cs = baseline_dir / "similarity.npz", candidate_dir / "similarity.npz"
    if not (bs.is_file() and cs.is_file()):
        return []
    rows = []
    with np.load(bs) as b, np.load(cs) as c:
        if b["raw"].shape != c["raw"].shape:
            return []
        for key in ("raw", "hinv"):
            rows.append(_frobenius_row(key.upper(), b[key], c[key], tol.matrix_rtol))
    bi, ci = baseline_dir / "influence_rows.npz", candidate_dir / "influence_rows.npz"
    if bi.is_file() and ci.is_file():
        with np.load(bi) as b, np.load(ci) as c:
            if b["scores"].shape == c["scores"].shape:
                ok = ~np.isnan(b["scores"]) & ~np.isnan(c["scores"])
                rows.append(_frobenius_row("token scores", b["scores"][ok], c["scores"][ok], tol.matrix_rtol))
    return rows


def _frobenius_row(name: str, b: np.ndarray, c: np.ndarray, rtol: float) -> Row:
    norm = float(np.linalg.norm(b))
    rel = float(np.linalg.norm(c - b) / norm) if norm > 0 else float(np.linalg.norm(c))
    return Row("matrices", f"{name} relative Frobenius difference", 0.0, rel, rel, f"≤ {rtol:g}",
               "ok" if math.isfinite(rel) and rel <= rtol else "regression")


def compare(baseline: Path, candidate: Path, tol: Tolerances) -> Comparison:
    b, c = read_results(baseline), read_results(candidate)
    reasons = _identity(b, c)
    if reasons:
        return Comparison(False, reasons, [])  # the reasons say what differs
    rows: list[Row] = []
    bv, cv = b.validation, c.validation
    rows.append(Row("validation", "rows emitted", bv.rows_emitted, cv.rows_emitted, cv.rows_emitted - bv.rows_emitted,
                    "equal", "ok" if bv.rows_emitted == cv.rows_emitted else "regression"))
    rows.append(Row("validation", "non-finite values", bv.nan_count, cv.nan_count, cv.nan_count - bv.nan_count,
                    "0", "ok" if cv.nan_count == 0 else "regression"))
    before = {ch.name: ch.passed for ch in bv.checks}
    for ch in cv.checks:
        verdict = "regression" if not ch.passed else "ok"
        rows.append(Row("validation", f"check {ch.name}", _passed(before.get(ch.name)), _passed(ch.passed), None,
                        "passed", verdict))
    for kind, stats in b.similarity.methods().items():
        rows += _walk_stats("numbers", kind.upper(), stats, c.similarity.methods()[kind], tol.numbers,
                            stats.self_dot.all.mean or 1.0)
    bu, cu = b.unprojected_comparison, c.unprojected_comparison
    if bu and cu:
        rows += _walk_stats("diagnostics", "unprojected.projected", bu.projected, cu.projected, tol.numbers,
                            bu.projected.self_dot.all.mean or 1.0)
    for kind, bk in b.curvature_similarity.items():
        ck = c.curvature_similarity.get(kind)
        for what in ("frobenius_cos", "spectrum_cos"):
            rows += _walk_stats("diagnostics", f"curvature_similarity.{kind}.{what}", getattr(bk, what),
                                getattr(ck, what) if ck else None, tol.numbers, 1.0)
    rows += _matrix_rows(_dir_of(baseline), _dir_of(candidate), tol.numbers)
    bp, cp, budget = b.performance, c.performance, tol.cost
    resumed = b.checkpoint.resumed_modules > 0 or c.checkpoint.resumed_modules > 0
    rows += [
        _cost_row("wall", "wall seconds", bp.wall_seconds, cp.wall_seconds, budget.wall,
                  budget.wall_slack_seconds, resumed),
        _cost_row("hessian_solve", "Hessian solve seconds", bp.hessian_solve_seconds, cp.hessian_solve_seconds,
                  budget.hessian_solve, budget.hessian_solve_slack_seconds, resumed),
        _cost_row("peak_gpu_memory", "peak GPU memory bytes", bp.peak_gpu_mem_bytes, cp.peak_gpu_mem_bytes,
                  budget.peak_gpu_memory, budget.memory_slack_bytes, resumed),
        _cost_row("peak_host_memory", "peak host memory bytes", bp.peak_host_mem_bytes, cp.peak_host_mem_bytes,
                  budget.peak_host_memory, budget.memory_slack_bytes, resumed),
    ]
    rows.sort(key=lambda r: ORDER[r.verdict])  # stable: regressions first, then improvements, in table order
    return Comparison(True, [], rows, settings=_settings_differ(b, c))


def _passed(value: bool | None) -> str:
    return "absent" if value is None else "passed" if value else "failed"


def _dir_of(path: Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _settings_line(cmp: Comparison) -> str | None:
    """Said before the verdict: the runs' settings differ, so moved numbers may be what the change was for."""
    if not cmp.settings:
        return None
    return (f"settings differ: {'; '.join(cmp.settings)}. The numbers below are judged as if the runs were the "
            "same job, so a regression may be what these settings were changed for.")


def render(cmp: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"verdict": cmp.verdict, "comparable": cmp.comparable, "reasons": cmp.reasons,
                           "note": cmp.note, "settings_differ": cmp.settings,
                           "regressions": len(cmp.regressions), "rows": [asdict(r) for r in cmp.rows]}, indent=2)
    settings = _settings_line(cmp)
    before = "" if not settings else f"**{settings}**\n\n" if fmt == "markdown" else settings + "\n"
    return before + _render_verdict_and_rows(cmp, fmt)


def _render_verdict_and_rows(cmp: Comparison, fmt: str) -> str:
    head = f"verdict: {cmp.verdict.upper()}" + (f" ({cmp.note})" if cmp.note else "")
    if not cmp.comparable:
        return head + "\n" + "\n".join(f"- not comparable: {r}" for r in cmp.reasons)
    summary = (f"{head} — {len(cmp.regressions)} regression(s), "
               f"{sum(r.verdict == 'improvement' for r in cmp.rows)} improvement(s), {len(cmp.rows)} quantities")
    if not cmp.rows:
        return summary
    header = ["group", "quantity", "baseline", "candidate", "difference", "tolerance", "verdict"]
    cells = [[r.group, r.quantity, _cell(r.baseline), _cell(r.candidate), _cell(r.difference), r.tolerance,
              r.verdict.upper() if r.verdict == "regression" else r.verdict] for r in cmp.rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return f"**{summary}**\n\n" + "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *cells, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return summary + "\n" + "\n".join(lines)


def write_outputs(cmp: Comparison, out_dir: Path) -> None:
    """Argo output-parameter files (verdict, regressions, comparable) and the table in markdown and JSON."""
    from influence_job.outputs.writing import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"verdict": cmp.verdict, "regressions": str(len(cmp.regressions)),
             "comparable": "true" if cmp.comparable else "false",
             "compare.md": render(cmp, "markdown") + "\n", "compare.json": render(cmp, "json") + "\n"}
    for name, text in files.items():
        atomic_write_bytes(out_dir / name, text.encode())


def baseline_missing(path: Path) -> bool:
    """No baseline yet: the path does not exist, or is an empty directory (e.g. made by the chart)."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_inputs(baseline: Path, candidate: Path) -> None:
    for what, p in (("baseline", baseline), ("candidate", candidate)):
        if not Path(p).exists():
            raise InputError(f"{what} {p} does not exist. Give an influence-job output directory or its results.json.")


def push_verdict(url: str, cmp: Comparison, job: str, instance: str) -> None:
    """Add the verdict to the run's Pushgateway group (POST: the run's own metrics stay), for the dashboard's
    nightly row and the alerts; a passing comparison also stamps the last nightly success. A failed push only
    warns: the alert on staleness catches a nightly that leaves no trace."""
    import logging
    import time

    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, **labels) -> None:
        g = Gauge(f"influence_job_{name}", doc, list(labels), registry=registry) if name not in gauges else gauges[name]
        gauges[name] = g
        (g.labels(**labels) if labels else g).set(value)

    gauges: dict = {}
    gauge("compare_regressions", "Regressions the last comparison with the baseline found.", len(cmp.regressions))
    gauge("compare_comparable", "1 when the last run was comparable with its baseline.", float(cmp.comparable))
    gauge("compare_passed", "1 when the last comparison passed.", float(cmp.verdict == "pass"))
    gauge("compare_timestamp_seconds", "Unix time of the last comparison.", time.time())
    for row in cmp.rows:
        if row.key is not None:
            gauge("compare_cost_ratio", "Candidate over baseline, per budgeted quantity.", cost_ratio(row),
                  quantity=row.key)
            gauge("compare_cost_budget", "The allowed ratio, per budgeted quantity.", row.budget, quantity=row.key)
    if cmp.verdict == "pass":
        gauge("nightly_last_success_timestamp_seconds", "Unix time of the last passing comparison.", time.time())
    try:
        pushadd_to_gateway(url, job=job, registry=registry, grouping_key={"instance": instance}, timeout=10)
    except OSError as exc:
        logging.getLogger(__name__).warning("could not push the verdict to the Pushgateway at %s: %s", url, exc)
