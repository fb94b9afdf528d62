"""The command line and the output contract (docs/outputs.md, outputs/results.py), on real runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import exact_config

from influence_job.cli.main import main
from influence_job.maths.similarity import CATEGORIES, SCOPES
from influence_job.outputs import writing as outputs
from influence_job.run.pipeline import run_job


def test_default_run_through_console_script(tmp_path):
    """`influence-job run` with no config: built-in tiny model, bundled data, CPU."""
    out = tmp_path / "default"
    proc = subprocess.run(
        ["influence-job", "run", "--output", str(out)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[capture] micro-batch" in proc.stderr and "[curvature_solve] module 14/14" in proc.stderr
    phases = re.findall(r"^\[(\w+)\] \.\.\.$", proc.stderr, re.M)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = readme.split("Progress goes to stderr phase by phase")[1].split("stdout ends")[0]
    assert phases and all(f"[{p}]" in listed for p in phases), (phases, listed)  # README names every phase
    assert "validation: PASSED" in proc.stdout and str(out) in proc.stdout
    # The end says where to look and that the built-in model's weights are random (so are its "findings").
    assert f"look at: {out / 'report.html'}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("note: the built-in model tiny-qwen2 has seeded random")
    assert "seeded random weights" in (out / "report.md").read_text().split("## Projection")[0]
    assert sorted(p.name for p in out.iterdir()) == [".influence-job", "influence_rows.npz",
                                                      "influence_rows.parquet", "report.html", "report.md",
                                                      "results.json", "similarity.npz"]
    r = json.loads((out / "results.json").read_text())
    assert (r["n_responses"], r["n_prompts"]) == (32, 8)
    assert r["n_accepted"] + r["n_rejected"] == 32
    cfg = r["config"]
    assert cfg["projection"] == {"kind": "rademacher", "factor": 32, "max_hessian_dim": -1, "seed": 0}
    assert cfg["curvature"] == {"source": "token", "scope": "global", "damping": "auto", "solver": "auto"}
    assert len(cfg["modules"]) == 7 and cfg["positions"] == "all"
    for m in r["modules"]:
        assert set(m) >= {"name", "in_features", "out_features", "k_in", "k_out", "D", "hessian_peak_mb",
                          "solver", "solve_seconds"}
    for kind in ("raw", "hinv"):
        for s in SCOPES:
            for c in CATEGORIES:
                cell = r["similarity"][kind][s][c]
                assert set(cell) == {"n", "dot", "cos"} and set(cell["dot"]) == {"mean", "std", "min", "max"}
        assert set(r["similarity"][kind]["self_dot"]) == {"acc", "rej", "all"}
    assert set(r["validation"]) == {"rows_emitted", "nan_count", "checks", "passed"}
    assert set(r["performance"]) >= {"wall_seconds", "phase_seconds", "hessian_solve_seconds",
                                     "peak_gpu_mem_bytes", "peak_host_mem_bytes"}
    assert r["performance"]["peak_host_mem_bytes"] > 0
    assert r["unprojected_comparison"]["module"] == "model.layers.1.self_attn.k_proj"
    assert set(r["curvature_similarity"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    with np.load(out / "similarity.npz") as z:
        assert z["raw"].shape == z["hinv"].shape == (32, 32)
        assert z["raw"].dtype == np.float64
        np.testing.assert_array_equal(z["prompt_index"], np.repeat(np.arange(8), 4))
    with np.load(out / "influence_rows.npz") as rows:
        assert len(rows["response_id"]) == 32
        assert rows["token_offsets"][-1] == len(rows["scores"]) == len(rows["entropy"])
        assert rows["skipped"].sum() == 8  # p3 all accepted, p4 all rejected
        assert json.loads(rows["metadata_json"][0]) == {"source": "handwritten"}  # extra input keys kept
    report = (out / "report.md").read_text()
    for heading in ("Projection dimensions", "RAW", "HINV", "Performance", "Validation"):
        assert heading in report


def test_config_command_prints_resolved_yaml_and_explains(capsys, tmp_path):
    assert main(["config", "--set", "curvature.source=response", "--output", str(tmp_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["curvature"]["source"] == "response"
    assert printed["output"]["dir"] == str(tmp_path)
    assert printed["model"] == {"builtin": "tiny-qwen2", "path": None, "dtype": "float32",
                                "attn_implementation": "sdpa", "seed": 0, "on_overflow": "error"}
    assert main(["config", "--explain"]) == 0
    text = capsys.readouterr().out
    for key in ("projection.factor", "curvature.damping", "influence.exclude_self", "compute.micro_batch_tokens"):
        assert key in text


def test_config_file_round_trip(tmp_path, capsys):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("projection: {factor: 8}\ncurvature: {scope: per_prompt}\n")
    assert main(["config", "--config", str(cfg_file)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["projection"]["factor"] == 8 and printed["curvature"]["scope"] == "per_prompt"


def test_failed_validation_exits_1_and_says_so(tiny_model_dir, tiny_data, tmp_path, capsys):
    """A fidelity tolerance no random projection can meet: the check fails, outputs say so, exit code 1."""
    out = tmp_path / "o"
    code = main(["run", "-q", "--set", f"model.path={tiny_model_dir}", "--set", "model.builtin=null",
                 "--set", f"data.path={tiny_data}", "--set", "projection.factor=4",
                 "--set", "validation.fidelity_sigma=1e-12", "--output", str(out)])
    assert code == 1
    stdout = capsys.readouterr().out
    assert "validation: FAILED (projection_fidelity)" in stdout
    assert "seeded random" not in stdout  # a model directory: no caveat
    r = json.loads((out / "results.json").read_text())
    assert r["validation"]["passed"] is False
    assert [c["name"] for c in r["validation"]["checks"] if not c["passed"]] == ["projection_fidelity"]
    assert "**Validation: FAILED**" in (out / "report.md").read_text()


def test_crash_while_writing_keeps_previous_result(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "o"
    run_job(exact_config(tiny_model_dir, tiny_data, out=out))
    before = (out / "results.json").read_bytes()
    real = outputs.atomic_write_bytes
    calls = []

    def failing(path, data):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", failing)
    with pytest.raises(OSError, match="simulated"):
        run_job(exact_config(tiny_model_dir, tiny_data, out=out, curvature={"source": "response"}))
    assert (out / "results.json").read_bytes() == before
    # the staging directory was removed; the checkpoint stays, so that repeating the command resumes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "o.ckpt"]
    assert sorted(p.name for p in out.iterdir()) == [".influence-job", "influence_rows.npz",
                                                      "influence_rows.parquet", "report.html", "report.md",
                                                      "results.json", "similarity.npz"]


def test_results_json_is_strict_json(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "o"
    run_job(exact_config(tiny_model_dir, tiny_data, out=out))
    text = (out / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "influence_job", "config"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "projection:" in proc.stdout


def test_readme_and_ci_share_the_test_command():
    from pathlib import Path

    root = Path(__file__).parents[2]
    ci = (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("bash tests/install-services.sh"))
    assert command in readme


def test_terminal_shows_a_progress_bar_per_phase(tmp_path):
    """stderr on a pseudo-terminal: tqdm bars for capture and curvature_solve instead of log lines."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(["influence-job", "run", "--output", str(tmp_path / "o")], stdout=subprocess.DEVNULL,
                            stderr=slave, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=600) == 0
    text = out.decode(errors="replace")
    assert "capture: 100%" in text and "curvature_solve: 100%" in text and "14/14" in text
    assert "[capture] micro-batch" not in text  # the log-line form is for non-terminals


def test_exit_codes_have_one_definition_that_help_readme_and_the_retry_expression_share(capsys):
    """influence_job/base/exit_codes.py is the one home of the exit codes: README's table is its output, `--help` lists
    them, and the cluster retries exactly its transient codes (and an attempt without one, "-1")."""
    from influence_job.base.exit_codes import TRANSIENT, ExitCode, table
    from influence_job.cluster.pods import RETRY_EXPRESSION

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert table() in readme
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f"{int(c):>3}  {c.meaning[:40]}" in out for c in ExitCode)
    retried = re.search(r"lastRetry.exitCode in \[([^]]*)\]", RETRY_EXPRESSION).group(1)
    assert retried == ", ".join(f'"{c}"' for c in ("-1", *map(int, TRANSIENT)))
    assert {int(c) for c in TRANSIENT} == {3, 137, 143}
