"""report.md and the terminal summary: the original report's tables, rendered from results.json's dict."""

from __future__ import annotations

from influence_job.similarity import CATEGORIES, SCOPES


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def projection_table(modules: list[dict]) -> str:
    kinds: dict[str, dict] = {}
    for m in modules:
        k = kinds.setdefault(m["kind"], {**m, "count": 0, "solvers": set(), "seconds": 0.0})
        k["count"] += 1
        k["solvers"].add(m["solver"])
        k["seconds"] += m["solve_seconds"]
    rows = [
        [kind, k["count"], k["in_features"], k["out_features"], k["k_in"], k["k_out"], k["D"],
         k["hessian_peak_mb"], ", ".join(sorted(k["solvers"])), k["seconds"]]
        for kind, k in kinds.items()
    ]
    return table(
        ["module", "count", "d_in", "d_out", "k_in", "k_out", "D", "D×D float64 MiB", "solver", "solve s (all)"], rows
    )


def similarity_tables(stats: dict) -> str:
    out = []
    for scope in SCOPES:
        rows = []
        for cat in CATEGORIES:
            c = stats[scope][cat]
            rows.append([cat, c["n"], c["dot"]["mean"], c["dot"]["std"], c["cos"]["mean"], c["cos"]["std"],
                         c["cos"]["min"], c["cos"]["max"]])
        out.append(f"*{scope}*\n\n" + table(
            ["pairs", "n", "dot mean", "dot std", "cos mean", "cos std", "cos min", "cos max"], rows))
    sd = stats["self_dot"]
    out.append("*self-dot*\n\n" + table(
        ["responses", "n", "mean", "std", "min", "max"],
        [[k, sd[k]["n"], sd[k]["mean"], sd[k]["std"], sd[k]["min"], sd[k]["max"]] for k in ("acc", "rej", "all")],
    ))
    return "\n\n".join(out)


def render_report(r: dict) -> str:
    perf, val = r["performance"], r["validation"]
    cfg = r["config"]
    parts = [
        "# Influence diagnostic report",
        f"Model `{r['model']}`; {r['n_prompts']} prompts, {r['n_responses']} responses "
        f"({r['n_accepted']} accepted, {r['n_rejected']} rejected), {r['n_positions']:,} positions. "
        f"Objective `{cfg['objective']}`, positions `{cfg['positions']}`, projection `{cfg['projection']['kind']}` "
        f"factor {cfg['projection']['factor']}, curvature source `{cfg['curvature']['source']}` scope "
        f"`{cfg['curvature']['scope']}` damping `{cfg['curvature']['damping']}`.",
        f"**Validation: {'PASSED' if val['passed'] else 'FAILED'}**",
        "## Projection dimensions by module kind",
        projection_table(r["modules"]),
        "## RAW: Σ_m G_m G_mᵀ",
        similarity_tables(r["similarity"]["raw"]),
        "## HINV: Σ_m G_m H_m⁻¹ G_mᵀ",
        similarity_tables(r["similarity"]["hinv"]),
    ]
    u = r.get("unprojected_comparison")
    if u:
        rel = u["relative_difference"]
        rows = [[f"{s} {c}", u["unprojected"][s][c]["dot"]["mean"], u["projected"][s][c]["dot"]["mean"], rel[s][c]]
                for s in SCOPES for c in CATEGORIES]
        rows += [[f"self-dot {k}", u["unprojected"]["self_dot"][k]["mean"], u["projected"]["self_dot"][k]["mean"],
                  rel["self_dot"][k]] for k in ("acc", "rej", "all")]
        parts += [f"## Unprojected comparison: `{u['module']}` (k_in {u['k_in']}, k_out {u['k_out']})",
                  table(["RAW dot mean", "exact", "projected", "relative difference"], rows)]
    else:
        parts += ["## Unprojected comparison", "Not run (diagnostics.unprojected_module is null)."]
    cs = r.get("curvature_similarity") or {}
    if cs:
        parts += ["## Curvature similarity across prompts (off-diagonal cosines)", table(
            ["module kind", "modules", "H_p cos mean", "H_p cos min", "spectrum cos mean", "spectrum cos min"],
            [[k, v["modules"], v["frobenius_cos"]["mean"], v["frobenius_cos"]["min"], v["spectrum_cos"]["mean"],
              v["spectrum_cos"]["min"]] for k, v in cs.items()],
        )]
    inf = r["influence"]
    parts += ["## Token influence rows",
              f"{inf['rows']} rows (one per response), {inf['skipped_rows']} skipped (no contrast in prompts "
              f"{', '.join(inf['skipped_prompts']) or 'none'}); aggregate `{inf['aggregate']}`, exclude_self "
              f"{inf['exclude_self']}."]
    parts += ["## Performance", table(
        ["measure", "value"],
        [["wall seconds", perf["wall_seconds"]], ["Hessian solve seconds (all modules)", perf["hessian_solve_seconds"]],
         ["diagnostics seconds (unprojected comparison, curvature similarity; in phase curvature_solve)",
          perf["diagnostics_seconds"]]]
        + [[f"phase {k} s", v] for k, v in perf["phase_seconds"].items()]
        + [["peak GPU memory GiB", perf["peak_gpu_mem_bytes"] / 2**30],
           ["peak host memory GiB", perf["peak_host_mem_bytes"] / 2**30]],
    ), f"Device: {r['environment']['device']}; torch {r['environment']['torch']}."]
    parts += ["## Validation", table(["check", "passed", "detail"],
                                     [[c["name"], c["passed"], c["detail"]] for c in val["checks"]])]
    return "\n\n".join(parts) + "\n"


def summary_lines(r: dict, out_dir) -> list[str]:
    pp = lambda m, c, k: r["similarity"][m]["per_prompt"][c][k]["mean"]  # noqa: E731
    lines = [
        f"{'':14} {'acc-acc':>12} {'rej-rej':>12} {'acc-rej':>12} {'self (all)':>12}",
    ]
    for m in ("raw", "hinv"):
        sd = r["similarity"][m]["self_dot"]["all"]["mean"]
        lines.append(f"{m.upper() + ' dot':14} " + " ".join(f"{fmt(pp(m, c, 'dot')):>12}" for c in CATEGORIES)
                     + f" {fmt(sd):>12}")
        lines.append(f"{m.upper() + ' cos':14} " + " ".join(f"{fmt(pp(m, c, 'cos')):>12}" for c in CATEGORIES))
    val = r["validation"]
    failed = [c["name"] for c in val["checks"] if not c["passed"]]
    lines += [
        f"(per-prompt pair means over {r['n_responses']} responses, {r['n_prompts']} prompts, "
        f"{len(r['modules'])} modules)",
        f"rows emitted {val['rows_emitted']} ({r['influence']['skipped_rows']} of them skipped: prompts without "
        "an accepted/rejected contrast), "
        f"wall {r['performance']['wall_seconds']:.1f} s, solve {r['performance']['hessian_solve_seconds']:.2f} s, "
        f"diagnostics {r['performance']['diagnostics_seconds']:.2f} s",
        f"validation: {'PASSED' if val['passed'] else 'FAILED (' + ', '.join(failed) + ')'}",
        f"output: {out_dir}",
    ]
    return lines
