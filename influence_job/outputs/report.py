"""report.md and the terminal summary: the original report's tables, rendered from the typed results, with
the number rules of influence_job.outputs.number_format (report.html follows the same)."""

from __future__ import annotations

from pathlib import Path

from influence_job.outputs.findings import findings, random_weights_caveat
from influence_job.outputs.number_format import column_format, fmt, fmt_bytes, fmt_percent, fmt_seconds, format_rows
from influence_job.outputs.results import (
    InfluenceSummary,
    MatrixStatistics,
    ModuleRecord,
    Performance,
    Results,
    UnprojectedComparison,
)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; each column's numbers share one notation (influence_job.outputs.number_format)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in format_rows(rows)]
    return "\n".join(lines)


def projection_table(modules: list[ModuleRecord]) -> str:
    """One row per module kind: the first module's shapes, the count, every route taken and the summed seconds."""
    kinds: dict[str, list[ModuleRecord]] = {}
    for m in modules:
        kinds.setdefault(m.kind, []).append(m)
    rows = [
        [kind, len(ms), ms[0].in_features, ms[0].out_features, ms[0].k_in, ms[0].k_out, ms[0].D,
         fmt_bytes(8 * ms[0].D ** 2), ", ".join(sorted({m.solver for m in ms})), sum(m.solve_seconds for m in ms)]
        for kind, ms in kinds.items()
    ]
    return table(["module", "count", "d_in", "d_out", "k_in", "k_out", "D", "D×D float64", "solver",
                  "solve s (all)"], rows)


def curvature_solve_split(perf: Performance) -> dict[str, float]:
    """What the curvature_solve phase holds: the solves, the diagnostics when they are not a phase of their own
    (results written before they were), and the rest (building curvature rows, moving data)."""
    cs = perf.phase_seconds["curvature_solve"]
    parts = {"solves": perf.hessian_solve_seconds}
    if "diagnostics" not in perf.phase_seconds:
        parts["diagnostics"] = perf.diagnostics_seconds
    parts["rest"] = max(0.0, cs - sum(parts.values()))
    return parts


def resumed_note(r: Results) -> str | None:
    """What a resumed run says wherever it reports its costs: which modules came from an earlier attempt, and that
    the times shown are this attempt's (results.json's performance is; a resumed module's own seconds are not in
    it). None for a run that resumed nothing."""
    n, computed = r.checkpoint.resumed_modules, r.checkpoint.computed_modules
    if not n:
        return None
    return (f"resumed: {n} of {n + computed} modules from an earlier attempt; the times are this "
            f"attempt's ({computed} modules computed)")


UNPROJECTED_HEADER = ["RAW dot mean", "exact", "projected", "relative difference"]


def unprojected_rows(u: UnprojectedComparison) -> list[list]:
    """The unprojected comparison's rows (both reports): exact and projected means, difference in %."""
    rel, projected = u.relative_difference, u.projected.scopes()
    rows = [[f"{s} {c}", cell.dot.mean, projected[s].cells()[c].dot.mean, fmt_percent(rel[s][c])]
            for s, cells in u.unprojected.scopes().items() for c, cell in cells.cells().items()]
    exact_self, projected_self = u.unprojected.self_dot.cells(), u.projected.self_dot.cells()
    return rows + [[f"self-dot {k}", exact_self[k].mean, projected_self[k].mean, fmt_percent(rel["self_dot"][k])]
                   for k in exact_self]


def similarity_tables(stats: MatrixStatistics) -> str:
    out = []
    for scope, cells in stats.scopes().items():
        rows = [[cat, c.n, c.dot.mean, c.dot.std, c.cos.mean, c.cos.std, c.cos.min, c.cos.max]
                for cat, c in cells.cells().items()]
        out.append(f"*{scope}*\n\n" + table(
            ["pairs", "n", "dot mean", "dot std", "cos mean", "cos std", "cos min", "cos max"], rows))
    out.append("*self-dot*\n\n" + table(
        ["responses", "n", "mean", "std", "min", "max"],
        [[k, sd.n, sd.mean, sd.std, sd.min, sd.max] for k, sd in stats.self_dot.cells().items()],
    ))
    return "\n\n".join(out)


def render_report(r: Results) -> str:
    """report.md: the run's settings and verdict, the statistics, diagnostics, token rows, cost and checks."""
    cfg, val = r.config, r.validation
    parts = [
        "# Influence diagnostic report",
        f"Model `{r.model}`; {r.n_prompts} prompts, {r.n_responses} responses "
        f"({r.n_accepted} accepted, {r.n_rejected} rejected), {r.n_positions:,} positions. "
        f"Objective `{cfg['objective']}`, positions `{cfg['positions']}`, projection `{cfg['projection']['kind']}` "
        f"factor {cfg['projection']['factor']}, curvature source `{cfg['curvature']['source']}` scope "
        f"`{cfg['curvature']['scope']}` damping `{cfg['curvature']['damping']}`.",
        f"**Validation: {'PASSED' if val.passed else 'FAILED'}**",
        "## At a glance",
        "\n".join(f"- {s}" for s in findings(r, None, None)),
        "## Projection dimensions by module kind",
        projection_table(r.modules),
        "## RAW: Σ_m G_m G_mᵀ",
        similarity_tables(r.similarity.raw),
        "## HINV: Σ_m G_m H_m⁻¹ G_mᵀ",
        similarity_tables(r.similarity.hinv),
        *_diagnostic_sections(r),
        *_influence_section(r.influence),
        *_performance_section(r),
        "## Validation",
        table(["check", "passed", "detail"], [[c.name, c.passed, c.detail] for c in val.checks]),
    ]
    return "\n\n".join(parts) + "\n"


def _diagnostic_sections(r: Results) -> list[str]:
    u = r.unprojected_comparison
    if u:
        f = u.fidelity
        parts = [f"## Unprojected comparison: `{u.module}` (k_in {u.k_in}, k_out {u.k_out})",
                 table(UNPROJECTED_HEADER, unprojected_rows(u)),
                 f"Projection fidelity: the projected self-dot mean differs by "
                 f"{fmt_percent(f.self_dot_relative_error)} from the exact one; tolerance "
                 f"±{fmt_percent(f.tolerance)} ({f.sigma:g} × the sketch's relative standard deviation "
                 f"bound {fmt_percent(f.relative_std_bound)}): {'passed' if f.passed else 'FAILED'}."]
    else:
        parts = ["## Unprojected comparison", "Not run (diagnostics.unprojected_module is null)."]
    if r.curvature_similarity:
        parts += ["## Curvature similarity across prompts (off-diagonal cosines)", table(
            ["module kind", "modules", "H_p cos mean", "H_p cos min", "spectrum cos mean", "spectrum cos min"],
            [[k, v.modules, v.frobenius_cos.mean, v.frobenius_cos.min, v.spectrum_cos.mean, v.spectrum_cos.min]
             for k, v in r.curvature_similarity.items()],
        )]
    return parts


def _influence_section(inf: InfluenceSummary) -> list[str]:
    parts = ["## Token influence rows",
             f"{inf.rows:,} rows (one per response), {inf.skipped_rows:,} skipped (no accepted/rejected "
             f"contrast in prompts {', '.join(inf.skipped_prompts) or 'none'}); aggregate "
             f"`{inf.aggregate}`, each response's own contribution "
             f"{'excluded' if inf.exclude_self else 'included'}."]
    sc = inf.scores
    if sc:
        parts += [table(["token scores", "value"], [
            ["tokens scored", sc.tokens], ["mean", sc.mean], ["std", sc.std],
            ["positive", fmt_percent(sc.positive_share)],
            ["most positive", f"{fmt(sc.max.score)} (response {sc.max.response_id}, token {sc.max.position})"],
            ["most negative", f"{fmt(sc.min.score)} (response {sc.min.response_id}, token {sc.min.position})"],
            ["mean score sum, accepted", sc.score_sum_mean.accepted],
            ["mean score sum, rejected", sc.score_sum_mean.rejected],
        ])]
    return parts


def _performance_section(r: Results) -> list[str]:
    perf = r.performance
    phase_rows = []
    for k, v in perf.phase_seconds.items():
        phase_rows.append([f"phase {k}", fmt_seconds(v)])
        if k == "curvature_solve":
            split = curvature_solve_split(perf)
            phase_rows.append(["  of which: " + " / ".join(split), " / ".join(fmt_seconds(s) for s in split.values())])
    resumed = resumed_note(r)
    return ["## Performance", *([f"**{resumed.capitalize()}.**"] if resumed else []), table(
        ["measure", "value"],
        [["wall", fmt_seconds(perf.wall_seconds)],
         ["Hessian solves (the modules this run computed, summed over ranks)", fmt_seconds(perf.hessian_solve_seconds)],
         ["diagnostics (unprojected comparison, curvature similarity)", fmt_seconds(perf.diagnostics_seconds)]]
        + phase_rows
        + [["peak GPU memory", fmt_bytes(perf.peak_gpu_mem_bytes)],
           ["peak host memory", fmt_bytes(perf.peak_host_mem_bytes)]],
    ), f"Device: {r.environment.device}; torch {r.environment.torch}. The curvature_solve phase is "
       "the solves and the rest (building curvature rows, moving data); the diagnostics, which run interleaved "
       "with it because they need each module's factors, are booked as their own phase."]


def summary_lines(r: Results, out_dir) -> list[str]:
    cells = r.similarity.raw.per_prompt.cells()
    lines = [f"{'':14} " + " ".join(f"{c:>12}" for c in [*cells, "self (all)"])]
    for m, stats in r.similarity.methods().items():
        per_prompt = stats.per_prompt.cells().values()
        dots = [c.dot.mean for c in per_prompt] + [stats.self_dot.all.mean]
        cos = [c.cos.mean for c in per_prompt]
        one_dot, one_cos = column_format(dots), column_format(cos)  # one notation per line
        lines.append(f"{m.upper() + ' dot':14} " + " ".join(f"{one_dot(x):>12}" for x in dots))
        lines.append(f"{m.upper() + ' cos':14} " + " ".join(f"{one_cos(x):>12}" for x in cos))
    val, perf = r.validation, r.performance
    failed = [c.name for c in val.checks if not c.passed]
    lines += [
        f"(per-prompt pair means over {r.n_responses} responses, {r.n_prompts} prompts, {len(r.modules)} modules)",
        f"rows emitted {val.rows_emitted} ({r.influence.skipped_rows} of them skipped: the responses of "
        f"{len(r.influence.skipped_prompts)} prompt(s) without an accepted/rejected contrast), "
        f"wall {perf.wall_seconds:.1f} s, solve {perf.hessian_solve_seconds:.2f} s, "
        f"diagnostics {perf.diagnostics_seconds:.2f} s",
        *filter(None, [resumed_note(r)]),
        f"validation: {'PASSED' if val.passed else 'FAILED (' + ', '.join(failed) + ')'}",
        f"output: {out_dir}",
        f"look at: {Path(out_dir) / 'report.html'} (heatmaps, distributions, token colours; report.md is the same "
        "in text)",
    ]
    caveat = random_weights_caveat(r)
    return lines + ([f"note: {caveat}"] if caveat else [])
