"""What a small run pays besides its computation: the imports, the load phase, the report and the write, printed
against the computation (capture, exchange, curvature_solve, diagnostics, reduce, statistics) of the same run, in
one process.

The first run is cold, as `influence-job run` is (the imports of torch, transformers and matplotlib happen in
it); the second, in the same process, is warm, as each step of a trace or a nightly would be if it ran in one
process. Beside them, the two costs a run no longer pays, measured here too: the CPU rate probe (the plan line of
a CPU run gives flops instead of times) and the report's figure clipping check (it draws every figure a second
time; the tests keep it).

The one check: the warm run's numbers equal the cold run's, and both pass the job's validation (``--bound-scale
0`` makes the check fail, exit 1). Timings are printed, never asserted.
Run: python bench/fixed_costs.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Agreement

COMPUTATION = ("capture", "exchange", "curvature_solve", "diagnostics", "reduce", "statistics")
FIXED = ("load", "report", "write")


def run_once(out: Path):
    from influence_job.inputs.config_files import load_config
    from influence_job.run.pipeline import run_job

    cfg = load_config(None, [])
    cfg.output.dir = out
    return run_job(cfg)


def line(label: str, phases: dict[str, float], imports: float = 0.0) -> str:
    computation = sum(phases.get(k, 0.0) for k in COMPUTATION)
    parts = [f"imports {imports:.2f} s"] if imports else []
    parts += [f"{k} {phases[k]:.2f} s" for k in FIXED]
    fixed = imports + sum(phases[k] for k in FIXED)
    return (f"fixed costs vs computation, {label}: {' + '.join(parts)} = {fixed:.2f} s against {computation:.2f} s "
            f"of computation: {fixed / computation:.1f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="warm runs after the cold one (default 2; the last prints)")
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agree = Agreement(args.bound_scale)

    t0 = time.perf_counter()
    import influence_job.run.pipeline  # noqa: F401  (what the CLI imports before the load phase starts)

    imports = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cold = run_once(Path(tmp) / "cold")
        warm = cold
        for k in range(args.repeats):
            warm = run_once(Path(tmp) / f"warm{k}")
        from influence_job.outputs.figures import checking_clipping
        from influence_job.outputs.regenerate import read_output
        from influence_job.outputs.report_html import render_html
        from influence_job.planning.profiles import cpu_profile

        page = read_output(Path(tmp) / "cold")
        t0 = time.perf_counter()
        render_html(*page)
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        with checking_clipping():
            render_html(*page)
        checked = time.perf_counter() - t0
        t0 = time.perf_counter()
        cpu_profile.__wrapped__(True)  # uncached: what the load phase spent on every CPU run
        probe = time.perf_counter() - t0
    diff = max(float(abs(cold.hinv - warm.hinv).max()), float(abs(cold.raw - warm.raw).max()))
    agree.check("warm run vs cold run, RAW and HINV (largest absolute difference)", diff, 1e-300)
    agree.check("validation failures, both runs", float(not cold.results.validation.passed)
                + float(not warm.results.validation.passed), 0.5)
    agree.finish()
    print(f"no longer paid: the CPU rate probe {probe:.2f} s (load {cold.phase_seconds['load']:.2f} s without it); "
          f"the figure clipping check {checked - plain:.2f} s (report {plain:.2f} s without it, {checked:.2f} s "
          f"with it: {checked / plain:.2f}×)")
    print(line("cold, as a CLI run", cold.phase_seconds, imports))
    print(line("warm, a later run in the same process", warm.phase_seconds))


if __name__ == "__main__":
    main()
