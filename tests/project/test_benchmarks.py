"""The benchmarks run on CPU in CI-sized configurations; their ratios are printed, never asserted here.
What is checked is that each runs to its end, its internal agreement checks pass, it prints its ratio lines
and leaves nothing in the temporary folder — and that a failed agreement check ends it with status 1
(``--bound-scale 0`` makes every check fail through the same code path)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script,args,last", [
    ("curvature_solve.py", [], "speedup vs original method:"),
    ("engine_cpu.py", [], "speedup vs original method: one process"),
    ("default_diagnostic.py", ["--small", "--device", "cpu"], "targets (for the 1.5B model"),
    ("token_gram.py", ["--small", "--device", "cpu", "--repeats", "1"], "pair-product Gram vs plain row GEMM:"),
    ("checkpoint_cost.py", [], "checkpoint save vs module compute"),
    ("token_scores.py", [], "token scores, engine vs previous loop:"),
    ("plan_agreement.py", ["--only", "kernel"], "curvature_solve measured/planned:"),
    ("capture_overhead.py", ["--tiny", "--device", "cpu", "--repeats", "1"], "capture vs plain forward+backward:"),
    ("gram_dtype_error.py", ["--small"], "λ = "),
    ("token_products.py", ["--small", "--repeats", "1"], "token products, factored vs explicit rows:"),
    ("fixed_costs.py", ["--repeats", "1"], "fixed costs vs computation, warm"),
])
def test_benchmark_runs_and_its_checks_can_fail(script, args, last, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=900, cwd=BENCH.parent, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith(last), proc.stdout
    assert "agreement ok:" in proc.stdout and "FAILED" not in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no bench-* directory left behind
    print(proc.stdout)  # the measured ratios, in the test log

    failing = subprocess.run([sys.executable, str(BENCH / script), *args, "--bound-scale", "0"],
                             capture_output=True, text=True, timeout=900, cwd=BENCH.parent, env=env)
    assert failing.returncode == 1, failing.stdout[-2000:] + failing.stderr[-2000:]
    assert "FAILED agreement checks:" in failing.stdout
    assert not failing.stdout.strip().splitlines()[-1].startswith(last)
    assert list(tmp_path.iterdir()) == []
