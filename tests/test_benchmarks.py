"""The benchmarks run on CPU in CI-sized configurations; their ratios are printed, never asserted here.
What is checked is that each runs to its end, its internal agreement checks pass, and it prints its
ratio lines."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script,args,last", [
    ("curvature_solve.py", [], "speedup vs original method:"),
    ("engine_cpu.py", [], "speedup vs original method: one process"),
    ("default_diagnostic.py", ["--small", "--device", "cpu"], "targets (for the 1.5B model"),
    ("token_gram.py", ["--small", "--device", "cpu", "--repeats", "1"], "pair-product Gram vs plain row GEMM:"),
])
def test_benchmark_runs(script, args, last):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=900, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith(last), proc.stdout
    print(proc.stdout)  # the measured ratios, in the test log
