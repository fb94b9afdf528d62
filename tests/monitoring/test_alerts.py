"""The alerting rules, tested with Prometheus's own `promtool` (Debian's prometheus package): `check rules` on the
plain rule file and on the group the chart renders into its PrometheusRule, and `test rules` with input series
for the firing and the not-firing case of every alert."""

from __future__ import annotations

import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "influence-job"
RULES = CHART / "rules" / "influence-job.rules.yaml"
NIGHTLY = {"instance": "influence-nightly", "job": "influence_job"}
ADHOC = {"instance": "run-42", "job": "influence_job"}


def labels(d: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def rules() -> dict:
    return {r["alert"]: r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}


# alert → (input series, evaluation time, expected alerts' extra labels when firing, annotations with templates)
CASES = {
    "InfluenceNightlyFailed": {
        "fires": ([("influence_job_run_success" + labels(NIGHTLY), "1 1 0 0")], "3m", [NIGHTLY], {}),
        "quiet": ([("influence_job_run_success" + labels(NIGHTLY), "0 0 1 1"),
                   ("influence_job_run_success" + labels(ADHOC), "0 0 0 0")], "3m", [], {}),
    },
    "InfluenceNightlyStale": {
        # last success at t=0 (timestamp 0); 27 h later it is stale
        "fires": ([("influence_job_nightly_last_success_timestamp_seconds" + labels(NIGHTLY), "0x1700")],
                  "27h", [{}], {}),
        # a success pushed at 26 h (timestamp 93600 s) keeps it fresh at 27 h
        "quiet": ([("influence_job_nightly_last_success_timestamp_seconds" + labels(NIGHTLY),
                    "0x1559 93600x200")], "27h", [], {}),
    },
    "InfluenceRegressionDetected": {
        "fires": ([("influence_job_compare_regressions" + labels(NIGHTLY), "0 2")], "1m", [NIGHTLY],
                  {"summary": "The nightly comparison found 2 regression(s) against the baseline."}),
        "quiet": ([("influence_job_compare_regressions" + labels(NIGHTLY), "2 0")], "1m", [], {}),
    },
    "InfluenceNotComparable": {
        "fires": ([("influence_job_compare_comparable" + labels(NIGHTLY), "0")], "0m", [NIGHTLY], {}),
        "quiet": ([("influence_job_compare_comparable" + labels(NIGHTLY), "1")], "0m", [], {}),
    },
    "InfluenceCostOverBudget": {
        "fires": ([("influence_job_compare_cost_ratio" + labels({**NIGHTLY, "quantity": "hessian_solve"}), "1.5"),
                   ("influence_job_compare_cost_budget" + labels({**NIGHTLY, "quantity": "hessian_solve"}), "1.25"),
                   ("influence_job_compare_cost_ratio" + labels({**NIGHTLY, "quantity": "peak_gpu_memory"}), "1.0"),
                   ("influence_job_compare_cost_budget" + labels({**NIGHTLY, "quantity": "peak_gpu_memory"}), "1.1")],
                  "0m", [{**NIGHTLY, "quantity": "hessian_solve"}],
                  {"summary": "hessian_solve is 1.50x the baseline's, over its budget."}),
        # wall time over its budget is not this alert's business (shared machines are noisy)
        "quiet": ([("influence_job_compare_cost_ratio" + labels({**NIGHTLY, "quantity": "wall"}), "3"),
                   ("influence_job_compare_cost_budget" + labels({**NIGHTLY, "quantity": "wall"}), "1.25"),
                   ("influence_job_compare_cost_ratio" + labels({**NIGHTLY, "quantity": "peak_host_memory"}), "1.2"),
                   ("influence_job_compare_cost_budget" + labels({**NIGHTLY, "quantity": "peak_host_memory"}),
                    "1.25")], "0m", [], {}),
    },
    "InfluenceValidationFailed": {
        "fires": ([("influence_job_run_validation_passed" + labels(ADHOC), "0")], "0m", [ADHOC],
                  {"summary": "An influence-job run (run-42) failed a validation check."}),
        "quiet": ([("influence_job_run_validation_passed" + labels(ADHOC), "1")], "0m", [], {}),
    },
    "InfluenceNonFiniteValues": {
        "fires": ([("influence_job_run_nonfinite_values" + labels(ADHOC), "7")], "0m", [ADHOC],
                  {"summary": "An influence-job run (run-42) emitted 7 non-finite values."}),
        "quiet": ([("influence_job_run_nonfinite_values" + labels(ADHOC), "0")], "0m", [], {}),
    },
}


def test_every_alert_has_a_firing_and_a_quiet_case():
    assert set(CASES) == set(rules())
    assert all(set(c) == {"fires", "quiet"} for c in CASES.values())


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_rule_file_is_valid():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


@pytest.mark.parametrize("alert", sorted(CASES))
@pytest.mark.parametrize("case", ["fires", "quiet"])
def test_alert_with_promtool(alert, case, tmp_path):
    series, at, firing, templated = CASES[alert][case]
    rule = rules()[alert]
    annotations = {**rule["annotations"], **templated}
    expected = [{"exp_labels": {**extra, "severity": rule["labels"]["severity"]}, "exp_annotations": annotations}
                for extra in firing]
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
        }],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_renders_the_same_rules_as_a_prometheus_rule(tmp_path):
    """Off by default; on, the PrometheusRule's groups are the rule file's, and promtool accepts them."""
    def render(values):
        out = helm.Chart.load(CHART).render(values, name="influence", namespace="ml")
        return [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]

    assert not [d for d in render({}) if d["kind"] == "PrometheusRule"]
    docs = [d for d in render({"prometheusRule": {"enabled": True, "labels": {"release": "kube-prom"}}})
            if d["kind"] == "PrometheusRule"]
    assert len(docs) == 1
    rule = docs[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kube-prom"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = promtool("check", "rules", str(rendered))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_read_only_series_the_run_pushes():
    """Every influence_job_run_* series an alert reads is one `influence-job run` pushes: the summary's own three
    and the headline figures' gauges (outputs.headline). Renaming a figure breaks this test, not the alert silently."""
    import re

    from influence_job.monitoring.metrics import PREFIX, summary_gauges
    from influence_job.outputs.headline import HEADLINE

    pushed = {f"{PREFIX}_{name}" for name in summary_gauges(None, 1.0)}  # pushed even when the run wrote nothing
    pushed |= {f"{PREFIX}_{f.gauge}" for f in HEADLINE if f.gauge}
    read = {name for rule in rules().values() for name in re.findall(r"influence_job_run_\w+", rule["expr"])}
    assert read and read <= pushed, sorted(read - pushed)
