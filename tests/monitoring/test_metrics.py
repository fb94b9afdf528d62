"""Live metrics against a real Prometheus and Pushgateway (Debian packages, started on loopback ports):
a two-process run (torchrun) writes through a multiprocess directory, the exporter sidecar serves it,
Prometheus scrapes the exporter and the Pushgateway, and the dashboard's queries are evaluated there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import free_port, get, query, start_prometheus, start_pushgateway, wait_for, wait_http

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "influence-job" / "dashboards" / "influence-job.json"


def start_exporter(directory: Path, port: int, grace: float, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "influence_job", "exporter", "--dir", str(directory), "--port", str(port),
         "--address", "127.0.0.1", "--grace-seconds", str(grace)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{port}/metrics")
    return proc


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    mp = tmp / "multiproc"
    mp.mkdir()
    exporter_port = free_port()
    exporter = start_exporter(mp, exporter_port, grace=600, log=tmp / "exporter.log")
    pushgateway, pg_url = start_pushgateway(tmp)
    prometheus, prom_url = start_prometheus(tmp, {
        "influence-exporter": f"127.0.0.1:{exporter_port}",
        "pushgateway": pg_url.removeprefix("http://"),
    })
    try:
        run = subprocess.run(
            ["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python", "influence-job", "run",
             "--output", str(tmp / "out"), "--set", f"metrics.dir={mp}", "--set", f"metrics.pushgateway={pg_url}",
             "--set", "metrics.instance=influence-nightly"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        # the nightly's compare step, twice: the first night promotes the run, the second compares with it
        for _ in range(2):
            cmp = subprocess.run(["influence-job", "compare", str(tmp / "baseline"), str(tmp / "out"),
                                  "--promote-if-missing", "--pushgateway", pg_url, "--instance", "influence-nightly"],
                                 capture_output=True, text=True, timeout=120)
            assert cmp.returncode == 0, cmp.stdout[-2000:] + cmp.stderr[-2000:]
        _traced(tmp, pg_url)
        results = json.loads((tmp / "out" / "results.json").read_text())
        yield {"prometheus": prom_url, "pushgateway": pg_url, "exporter": f"http://127.0.0.1:{exporter_port}",
               "results": results, "multiproc": mp}
    finally:
        prometheus.stop()
        pushgateway.stop()
        exporter.terminate()
        exporter.wait(timeout=15)


def _traced(tmp: Path, pg_url: str) -> None:
    """A local trace of two steps pushing as it goes, the second step's batch broken: its size and each step's
    summary (grouped by the trace and the step) reach the Pushgateway, for the dashboard's trace panel."""
    from conftest import GROUPS, save_tiny_model, write_jsonl

    for n in (1, 2):
        save_tiny_model(tmp / "ckpt" / str(n), seed=n)
    (tmp / "batches").mkdir()
    write_jsonl(tmp / "batches" / "1.jsonl", GROUPS)
    (tmp / "batches" / "2.jsonl").write_text('{"prompt_id": "a", "prompt": "x", "responses": []}\n')
    (tmp / "trace.yaml").write_text("pattern: {model: 'ckpt/{step}', data: 'batches/{step}.jsonl', steps: all}\n")
    trace = subprocess.run(["influence-job", "trace", str(tmp / "trace.yaml"), "--output", str(tmp / "trace"), "-q",
                            "--set", f"metrics.pushgateway={pg_url}"], capture_output=True, text=True, timeout=300)
    assert trace.returncode == 1 and "step 2: failed" in trace.stdout, trace.stdout[-2000:] + trace.stderr[-2000:]


def value(result: list[dict]) -> float:
    return float(result[0]["value"][1])


def test_live_series_arrive_with_plausible_values(observed_run):
    prom, results = observed_run["prometheus"], observed_run["results"]
    n_modules = len(results["modules"])
    wait_for(prom, "sum(influence_job_modules_done)", lambda r: value(r) == n_modules)  # over both ranks
    assert value(query(prom, "influence_job_modules")) == n_modules
    world = query(prom, "influence_job_world_size")
    assert sorted(s["metric"]["rank"] for s in world) == ["0", "1"]  # both processes wrote
    assert all(float(s["value"][1]) == 2 for s in world)
    assert value(query(prom, "sum(influence_job_responses_processed_total)")) == results["n_responses"]
    assert value(query(prom, "sum(influence_job_tokens_processed_total)")) == results["n_positions"]
    assert value(query(prom, 'influence_job_peak_host_memory_bytes{rank="0"}')) > 0
    assert value(query(prom, "influence_job_rows_emitted")) == results["n_responses"]
    assert value(query(prom, "influence_job_validation_passed")) == 1
    assert value(query(prom, "sum(influence_job_module_solve_seconds_count)")) == n_modules
    phases = {s["metric"]["phase"] for s in query(prom, "influence_job_phase_duration_seconds")}
    assert phases >= {"load", "capture", "curvature_solve", "statistics", "write"}


def test_pushgateway_serves_final_metrics_and_prometheus_sees_them(observed_run):
    text = get(observed_run["pushgateway"] + "/metrics")
    assert 'influence_job_run_success{instance="influence-nightly",job="influence_job"} 1' in text
    # the compare step added its verdict to the same group without removing the run's metrics
    assert 'influence_job_compare_passed{instance="influence-nightly",job="influence_job"} 1' in text
    assert 'influence_job_compare_cost_ratio{instance="influence-nightly",job="influence_job",quantity="wall"}' in text
    results = observed_run["results"]
    got = wait_for(observed_run["prometheus"], 'influence_job_run_rows_emitted{instance="influence-nightly"}',
                   lambda r: True)
    assert value(got) == results["validation"]["rows_emitted"]
    hinv = value(query(observed_run["prometheus"],
                       'influence_job_run_hinv_per_prompt_acc_acc_dot_mean{instance="influence-nightly"}'))
    assert hinv == pytest.approx(results["similarity"]["hinv"]["per_prompt"]["acc-acc"]["dot"]["mean"], rel=1e-12)


def test_a_trace_pushes_its_size_and_each_steps_summary(observed_run):
    text = get(observed_run["pushgateway"] + "/metrics")
    assert 'influence_job_trace_steps{instance="trace",job="influence_job"} 2' in text
    assert 'influence_job_run_success{instance="trace",job="influence_job",step="1"} 1' in text
    assert 'influence_job_run_success{instance="trace",job="influence_job",step="2"} 0' in text


def test_the_shipped_dashboard_is_the_builder_output():
    """helm/.../influence-job.json is generated (python helm/dashboard.py), never edited."""
    import runpy

    render = runpy.run_path(str(ROOT / "helm" / "dashboard.py"))["render"]
    assert DASHBOARD.read_text() == render(), "regenerate it: python helm/dashboard.py"


def test_every_dashboard_query_returns_data(observed_run):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    wait_for(observed_run["prometheus"], "influence_job_run_success", lambda r: True)
    wait_for(observed_run["prometheus"], "influence_job_compare_cost_ratio", lambda r: True)
    wait_for(observed_run["prometheus"], "influence_job_trace_steps", lambda r: True)  # pushed last
    empty = [e for e in exprs if not query(observed_run["prometheus"], e)]
    assert empty == [], f"dashboard queries without data: {empty}"


def test_promtool_accepts_exporter_output(observed_run):
    text = get(observed_run["exporter"] + "/metrics")
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_exporter_sigterm_and_grace_period(tmp_path, monkeypatch):
    from influence_job.monitoring.metrics import DONE_MARKER, JobMetrics

    mp = tmp_path / "mp"
    port = free_port()
    proc = start_exporter(mp, port, grace=600, log=tmp_path / "e1.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0

    # A finished job's values stay served for the grace period, then the exporter exits by itself.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))  # scoped to this test
    JobMetrics(mp).finished(None, 1.5)  # in this process: writes the multiprocess files and the end marker
    assert (mp / DONE_MARKER).exists()
    port = free_port()
    t0 = time.monotonic()
    proc = start_exporter(mp, port, grace=3, log=tmp_path / "e2.log")
    assert 'influence_job_wall_seconds{rank="0"} 1.5' in get(f"http://127.0.0.1:{port}/metrics")
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 >= 3
