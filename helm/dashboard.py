"""The Grafana dashboard, built with Grafana Labs' grafana-foundation-sdk (typed builders) from the metric names
this package exports: the live metrics of a run (metrics.JobMetrics, served by the exporter sidecar), the
headline figures a run pushes (outputs.headline), the verdict `compare` pushes, and a trace's size and steps.

    python helm/dashboard.py   # writes helm/influence-job/dashboards/influence-job.json

A development tool beside the chart, not part of the package (the job's image does not need the SDK). The chart
ships the file it writes; tests/monitoring/test_metrics.py checks that it equals this builder's output and
evaluates every query against a real Prometheus fed by a run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from influence_job.monitoring.metrics import PREFIX
from influence_job.outputs.headline import HEADLINE

DASHBOARD_FILE = Path(__file__).resolve().parent / "influence-job" / "dashboards" / "influence-job.json"
NIGHTLY = '{instance="influence-nightly"}'


def _gauge(path: str) -> str:
    """The pushed series of the headline figure at results.json ``path``."""
    return f"{PREFIX}_{next(f.gauge for f in HEADLINE if f.path == path and f.gauge)}"


def _live_panels() -> list[tuple]:
    """(kind, title, unit, width, description, [(expr, legend)]) of the live run's panels."""
    m = f"{PREFIX}_"
    return [
        ("gauge", "Progress (modules done / modules)", "percentunit", 6, "",
         [(f"sum({m}modules_done) / max({m}modules)", "progress")]),
        ("stat", "Responses and tokens processed", "short", 6, "",
         [(f"sum({m}responses_processed_total)", "responses"), (f"sum({m}tokens_processed_total)", "tokens")]),
        ("stat", "Validation state", "short", 6, "",
         [(f"max({m}validation_passed)", "passed (1 = yes)"), (f"max({m}nonfinite_values)", "non-finite values"),
          (f"max({m}rows_emitted)", "rows emitted")]),
        ("stat", "World size", "short", 6, "", [(f"max({m}world_size)", "processes")]),
        ("timeseries", "Peak GPU memory per rank", "bytes", 8, "",
         [(f"{m}peak_gpu_memory_allocated_bytes", "allocated rank {{rank}}"),
          (f"{m}peak_gpu_memory_reserved_bytes", "reserved rank {{rank}}")]),
        ("timeseries", "Host memory", "bytes", 8, "",
         [(f"{m}peak_host_memory_bytes", "RSS rank {{rank}}"),
          (f"max({m}container_peak_memory_bytes)", "container peak")]),
        ("timeseries", "Curvature+solve seconds per module kind", "s", 8, "",
         [(f"sum by (kind) ({m}module_solve_seconds_sum)", "{{kind}} total"),
          (f"sum by (kind) ({m}module_solve_seconds_sum) / sum by (kind) ({m}module_solve_seconds_count)",
           "{{kind}} mean")]),
        ("bargauge", "Phase timeline (seconds per phase)", "s", 12, "",
         [(f"max by (phase) ({m}phase_duration_seconds)", "{{phase}}")]),
        ("piechart", "Solver routes", "short", 12, "",
         [(f"sum by (solver) ({m}module_solve_seconds_count)", "{{solver}}")]),
    ]


def _nightly_panels() -> list[tuple]:
    """The nightly run's trends (Pushgateway, instance influence-nightly)."""
    m, n = f"{PREFIX}_", NIGHTLY
    categories = ("acc-acc", "rej-rej", "acc-rej")
    return [
        ("timeseries", "Wall time per run", "s", 8, "", [(f"{m}run_wall_seconds{n}", "{{instance}}")]),
        ("timeseries", "Hessian solve time per run", "s", 8, "",
         [(f"{_gauge('performance.hessian_solve_seconds')}{n}", "{{instance}}")]),
        ("timeseries", "Peak memory per run", "bytes", 8, "",
         [(f"{_gauge('performance.peak_gpu_mem_bytes')}{n}", "GPU {{instance}}"),
          (f"{_gauge('performance.peak_host_mem_bytes')}{n}", "host {{instance}}")]),
        ("timeseries", "HINV per-prompt dot mean", "short", 8, "",
         [(f"{_gauge(f'similarity.hinv.per_prompt.{c}.dot.mean')}{n}", c) for c in categories]),
        ("timeseries", "RAW per-prompt cosine mean", "short", 8, "",
         [(f"{_gauge(f'similarity.raw.per_prompt.{c}.cos.mean')}{n}", c) for c in categories]),
        ("state-timeline", "Pass / fail", "short", 8, "",
         [(f"{m}run_success{n}", "run succeeded and passed {{instance}}"),
          (f"{_gauge('validation.passed')}{n}", "validation passed {{instance}}")]),
        ("stat", "Compare verdict", "short", 8,
         "Verdict of the last comparison with the baseline (influence-job compare): 1 passed; regressions found; "
         "1 comparable.",
         [(f"{m}compare_passed{n}", "passed"), (f"{m}compare_regressions{n}", "regressions"),
          (f"{m}compare_comparable{n}", "comparable")]),
        ("timeseries", "Budgeted quantities vs baseline", "x", 8,
         "Each budgeted quantity as a multiple of the baseline (dashed: its budget).",
         [(f"{m}compare_cost_ratio{n}", "{{quantity}}"), (f"{m}compare_cost_budget{n}", "{{quantity}} budget")]),
        ("stat", "Hours since the last nightly success", "h", 8,
         "Hours since the last passing nightly comparison (the staleness alert fires above 26).",
         [(f"(time() - max({m}nightly_last_success_timestamp_seconds{n})) / 3600", "hours")]),
    ]


def _trace_panels() -> list[tuple]:
    """Traces (influence-job trace, submit --trace): each trace's size and its steps' pushed summaries."""
    m, steps = f"{PREFIX}_", f'{PREFIX}_run_success{{step!=""}}'
    return [
        ("bargauge", "Trace steps: passed, failed and in all", "short", 12,
         "Per trace (instance): its steps in all, the steps that finished and passed validation, and those that "
         "failed or failed validation (each step pushes its run's summary, grouped by trace and step).",
         [(f"max by (instance) ({m}trace_steps)", "{{instance}} steps"),
          (f"count by (instance) ({steps} == 1)", "{{instance}} passed"),
          (f"count by (instance) ({steps} == 0)", "{{instance}} failed")]),
        ("bargauge", "Trace: HINV acc-rej per-prompt cosine per step", "short", 12,
         "The headline figure of each finished step (trace.html draws every statistic over the steps).",
         [(f'{_gauge("similarity.hinv.per_prompt.acc-rej.cos.mean")}{{step!=""}}', "{{instance}} step {{step}}")]),
    ]


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    from grafana_foundation_sdk.builders import bargauge, gauge, piechart, prometheus, stat, statetimeline, timeseries
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    kinds = {"gauge": gauge.Panel, "stat": stat.Panel, "timeseries": timeseries.Panel, "bargauge": bargauge.Panel,
             "piechart": piechart.Panel, "state-timeline": statetimeline.Panel}
    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (dash.Dashboard("influence-job").uid("influence-job").editable().tags(["influence-job"])
             .description("Live progress, memory and solve times of influence-job runs, and nightly trends.")
             .time("now-30d", "now").refresh("30s")
             .with_variable(dash.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    ids = iter(range(1, 100))
    rows = (("Live run (metrics sidecar)", _live_panels()),
            ("Nightly regression run (Pushgateway, instance influence-nightly)", _nightly_panels()),
            ("Traces (Pushgateway, one instance per trace)", _trace_panels()))
    for title, panels in rows:
        board = board.with_row(dash.Row(title).id(next(ids)))
        for kind, name, unit, width, description, queries in panels:
            panel = (kinds[kind]().id(next(ids)).title(name).description(description).datasource(source).unit(unit)
                     .height(8).span(width))
            for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
                panel = panel.with_target(prometheus.Dataquery().ref_id(ref).expr(expr).legend_format(legend)
                                          .datasource(source))
            board = board.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    DASHBOARD_FILE.write_text(render())
    print(DASHBOARD_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
