"""`influence-job compare` and baselines on real runs of the built-in tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import GROUPS, write_jsonl

from influence_job.cli.main import main

SMALL = ["--set", "projection.factor=64", "--set", "diagnostics.curvature_similarity_layers=all"]


@pytest.fixture(scope="module")
def timing_free(tmp_path_factory) -> Path:
    """Cost budgets no timing noise can exceed: comparisons of real runs here judge numbers and validation only
    (speed is never asserted in tests); the cost logic is tested on edited figures."""
    path = tmp_path_factory.mktemp("tolerances") / "timing-free.yaml"
    path.write_text("cost: {wall: 1.0e9, hessian_solve: 1.0e9, peak_gpu_memory: 1.0e9, peak_host_memory: 1.0e9}\n")
    return path


def run(out: Path, *extra) -> Path:
    assert main(["run", "-q", *SMALL, *extra, "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    return {
        "base": run(tmp / "base"),
        "same": run(tmp / "same"),
        "damping": run(tmp / "damping", "--set", "curvature.damping=0.5"),
        "seed": run(tmp / "seed", "--set", "projection.seed=7"),
        "data": run(tmp / "data", "--set", f"data.path={write_jsonl(tmp / 'g.jsonl', GROUPS)}"),
        "factor": run(tmp / "factor", "--set", "projection.factor=32"),
    }


def compare(capsys, *args) -> tuple[int, str]:
    code = main(["compare", *map(str, args)])
    return code, capsys.readouterr().out


def as_json(capsys, *args) -> tuple[int, dict]:
    code, out = compare(capsys, *args, "--format", "json")
    return code, json.loads(out)


def test_same_configuration_passes(runs, capsys, timing_free):
    code, out = as_json(capsys, runs["base"], runs["same"], "--tolerances", timing_free)
    assert code == 0 and out["verdict"] == "pass" and out["regressions"] == 0
    groups = {r["group"] for r in out["rows"]}
    assert groups == {"validation", "numbers", "diagnostics", "matrices", "cost"}
    quantities = {r["quantity"] for r in out["rows"]}
    assert {"HINV.per_prompt.acc-rej.cos.mean", "RAW.self_dot.rej.max", "HINV relative Frobenius difference",
            "token scores relative Frobenius difference", "check projection_fidelity",
            "Hessian solve seconds"} <= quantities


def test_changed_damping_is_a_regression_naming_hinv(runs, capsys, timing_free):
    code, out = as_json(capsys, runs["base"], runs["damping"], "--tolerances", timing_free)
    assert code == 1 and out["verdict"] == "regression"
    moved = {r["quantity"] for r in out["rows"] if r["verdict"] == "regression"}
    assert "HINV.per_prompt.acc-acc.dot.mean" in moved and "HINV relative Frobenius difference" in moved
    assert not any(q.startswith("RAW") for q in moved)  # RAW does not depend on the damping
    first = [r["verdict"] for r in out["rows"]]
    assert first == sorted(first, key=lambda v: v != "regression")  # regressions first


def test_changed_projection_seed_is_a_regression_naming_raw(runs, capsys):
    code, text = compare(capsys, runs["base"], runs["seed"])
    assert code == 1
    settings, verdict, *_ = text.splitlines()
    assert settings.startswith("settings differ: projection.seed (0 → 7).")  # said first, then judged
    assert verdict.startswith("verdict: REGRESSION")
    assert "RAW.per_prompt.acc-acc.dot.mean" in text and "REGRESSION" in text.splitlines()[3]


def test_settings_that_differ_are_named_before_the_verdict(runs, capsys, timing_free):
    code, out = as_json(capsys, runs["base"], runs["damping"], "--tolerances", timing_free)
    assert out["settings_differ"] == ["curvature.damping (auto → 0.5)"]
    code, text = compare(capsys, runs["base"], runs["damping"], "--format", "markdown")
    assert text.startswith("**settings differ: curvature.damping (auto → 0.5).") and "**verdict: REGRESSION" in text
    code, out = as_json(capsys, runs["base"], runs["same"], "--tolerances", timing_free)
    assert out["settings_differ"] == []  # output paths and metrics settings do not count
    code, text = compare(capsys, runs["base"], runs["same"], "--tolerances", timing_free)
    assert text.startswith("verdict: PASS")


@pytest.mark.parametrize("other,why", [("data", "the data records differ"),
                                       ("factor", "the projection shapes differ")])
def test_different_data_or_shape_is_not_comparable(runs, capsys, other, why):
    code, text = compare(capsys, runs["base"], runs[other])
    assert code == 5
    assert text.startswith("verdict: NOT COMPARABLE") and why in text


def test_tolerances_file_is_honoured_and_validated(runs, capsys, tmp_path, timing_free):
    loose = tmp_path / "loose.yaml"
    loose.write_text("numbers: {rtol: 10, cos_atol: 1, dot_atol: 10, matrix_rtol: 10}\n"
                     + timing_free.read_text())
    code, out = as_json(capsys, runs["base"], runs["damping"], "--tolerances", loose)
    assert code == 0 and out["regressions"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("numbers: {rtoll: 1}\n")
    assert main(["compare", str(runs["base"]), str(runs["same"]), "--tolerances", str(bad)]) == 2
    assert "numbers.rtoll: unknown key" in capsys.readouterr().err


def edited(src: Path, dst: Path, edit, base: Path) -> Path:
    """A copy of ``src`` with the baseline's performance figures (so that only ``edit`` differs), edited."""
    shutil.copytree(src, dst)
    results = json.loads((dst / "results.json").read_text())
    results["performance"] = json.loads((base / "results.json").read_text())["performance"]
    edit(results)
    (dst / "results.json").write_text(json.dumps(results))
    return dst


def test_nan_or_failed_check_in_the_candidate_is_a_regression(runs, capsys, tmp_path):
    def nan(r):
        r["validation"]["nan_count"] = 3

    def failed(r):
        r["validation"]["checks"][0]["passed"] = False
        r["validation"]["passed"] = False

    for name, edit, quantity in (("nan", nan, "non-finite values"), ("failed", failed, "check rows_emitted")):
        code, out = as_json(capsys, runs["base"], edited(runs["same"], tmp_path / name, edit, runs["base"]))
        assert code == 1
        assert [r["quantity"] for r in out["rows"] if r["verdict"] == "regression"] == [quantity]


def test_cost_budget_regression_and_improvement(runs, capsys, tmp_path):
    """Budget ratios without slack, on edited figures (real timings are never judged in tests)."""
    base = json.loads((runs["base"] / "results.json").read_text())["performance"]
    strict = tmp_path / "strict.yaml"
    strict.write_text("cost: {wall_slack_seconds: 0, hessian_solve_slack_seconds: 0, memory_slack_bytes: 0}\n")

    def slower(r):
        r["performance"]["hessian_solve_seconds"] = 2 * base["hessian_solve_seconds"]

    def faster(r):
        r["performance"]["wall_seconds"] = base["wall_seconds"] / 2

    code, out = as_json(capsys, runs["base"], edited(runs["same"], tmp_path / "slow", slower, runs["base"]),
                        "--tolerances", strict)
    assert code == 1 and [r["quantity"] for r in out["rows"] if r["verdict"] == "regression"] == \
        ["Hessian solve seconds"]
    code, out = as_json(capsys, runs["base"], edited(runs["same"], tmp_path / "fast", faster, runs["base"]),
                        "--tolerances", strict)
    assert code == 0
    assert {r["quantity"]: r["verdict"] for r in out["rows"] if r["group"] == "cost"}["wall seconds"] == "improvement"


def test_first_night_promotes_then_compares(runs, capsys, tmp_path, timing_free):
    baseline, outputs = tmp_path / "baseline", tmp_path / "outputs"
    code, text = compare(capsys, baseline, runs["base"], "--promote-if-missing", "--outputs", outputs)
    assert code == 0 and "first night: no baseline yet" in text
    record = json.loads((baseline / "baseline.json").read_text())
    assert record["run"] == str(runs["base"]) and record["reason"] == "first night: no baseline yet"
    assert {"promoted_at", "promoted_by", "fingerprint"} <= set(record)
    assert (outputs / "verdict").read_text() == "pass" and (outputs / "comparable").read_text() == "true"
    code, _ = compare(capsys, baseline, runs["damping"], "--promote-if-missing", "--outputs", outputs,
                      "--tolerances", timing_free)
    assert code == 1  # the second night compares
    assert (outputs / "verdict").read_text() == "regression" and int((outputs / "regressions").read_text()) > 0
    assert "| HINV" in (outputs / "compare.md").read_text()


def test_baseline_promote_replaces_only_a_baseline(runs, capsys, tmp_path):
    target = tmp_path / "baseline"
    assert main(["baseline", "promote", str(runs["base"]), "--to", str(target)]) == 0
    assert main(["baseline", "promote", str(runs["damping"]), "--to", str(target), "--reason", "new damping"]) == 0
    assert json.loads((target / "baseline.json").read_text())["reason"] == "new damping"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]  # atomic: nothing left beside it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["baseline", "promote", str(runs["base"]), "--to", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_bad_input_exits_2(capsys, tmp_path):
    assert main(["compare", str(tmp_path / "missing"), str(tmp_path / "missing2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text("{}")
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "x")]) == 2
    assert "is not a valid influence-job results.json" in capsys.readouterr().err


def test_cost_slack_absorbs_noise_and_resumed_runs_are_not_judged(runs, capsys, tmp_path):
    base = json.loads((runs["base"] / "results.json").read_text())["performance"]

    def jitter(r):  # slower by 1.5 s, less than the default 2 s of solve-time slack, whatever the base's time
        r["performance"]["hessian_solve_seconds"] = base["hessian_solve_seconds"] + 1.5

    code, out = as_json(capsys, runs["base"], edited(runs["same"], tmp_path / "jitter", jitter, runs["base"]))
    assert code == 0

    def resumed(r):
        r["checkpoint"]["resumed_modules"] = 3
        r["performance"]["hessian_solve_seconds"] = 100 * base["hessian_solve_seconds"] + 100

    code, out = as_json(capsys, runs["base"], edited(runs["same"], tmp_path / "resumed", resumed, runs["base"]))
    assert code == 0
    cost = [r for r in out["rows"] if r["group"] == "cost"]
    assert {r["verdict"] for r in cost} == {"not judged"} and "resumed" in cost[0]["tolerance"]


def test_promote_if_missing_accepts_an_empty_baseline_directory(runs, capsys, tmp_path):
    (tmp_path / "baseline").mkdir()  # e.g. made by hand or by the chart
    code, text = compare(capsys, tmp_path / "baseline", runs["base"], "--promote-if-missing")
    assert code == 0 and "first night" in text and (tmp_path / "baseline" / "baseline.json").is_file()


def test_promote_never_replaces_a_run_output(runs, capsys, tmp_path):
    victim = tmp_path / "run"
    shutil.copytree(runs["same"], victim)
    assert main(["baseline", "promote", str(runs["base"]), "--to", str(victim)]) == 2
    err = capsys.readouterr().err
    assert "holds an influence-job run output, not a baseline" in err
    assert not (victim / "baseline.json").exists()
