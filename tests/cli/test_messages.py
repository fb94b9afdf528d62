"""Messages a user can act on: each names the field or line and the fix, in plain words."""

from __future__ import annotations

import json

from conftest import GROUPS, write_jsonl

from influence_job.cli.main import main


def test_explain_prints_effective_defaults_in_plain_words(capsys):
    assert main(["config", "--explain"]) == 0
    lines = {line.split(" (default ", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["output.dir"].startswith("output.dir (default influence-output):")
    assert lines["model.builtin"].startswith("model.builtin (default tiny-qwen2 when model.path is unset):")
    assert lines["data.path"].startswith("data.path (default the bundled example data):")
    assert lines["influence.enabled"].startswith("influence.enabled (default true):")
    text = "\n".join(lines.values())
    assert "PosixPath" not in text and "default None" not in text and "default '" not in text


def test_invalid_damping_is_one_sentence(capsys):
    assert main(["config", "--set", "curvature.damping=-1"]) == 2
    err = capsys.readouterr().err
    assert "curvature.damping: must be 'auto' or a positive number such as 0.001, got -1" in err
    assert "literal" not in err and "constrained-float" not in err
    assert len([line for line in err.splitlines() if line.startswith("  - ")]) == 1
    assert main(["config", "--set", "curvature.damping=1e-3"]) == 0  # YAML's string '1e-3' is a number here


def test_malformed_json_line_reads_naturally(tmp_path, capsys):
    """The file and line, what is wrong with it in plain words (test_bad_input.py has the other rejections)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GROUPS[0]) + "\n" + '{"prompt_id": "x", "prompt": "unterminated\n')
    assert main(["run", "--set", f"data.path={bad}", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: this line is not valid JSON: Unterminated string starting at column 30." in err
    assert "at at" not in err


def test_submit_checks_run_overrides_before_contacting_the_server(capsys):
    """Port 9 on loopback has no server: had the words gone unchecked, the error would be a refused connection."""
    code = main(["submit", "--argo-server", "http://127.0.0.1:9", "--run-set", "--set curvature.sourc=response"])
    err = capsys.readouterr().err
    assert code == 2
    assert "submit --run-set" in err and "curvature.sourc: unknown key" in err and "refused" not in err
    code = main(["submit", "--argo-server", "http://127.0.0.1:9", "--run-set", "--set curvature.damping=-1"])
    assert code == 2 and "curvature.damping: must be 'auto'" in capsys.readouterr().err
    code = main(["submit", "--argo-server", "http://127.0.0.1:9", "--run-set", "projection.factor=16"])
    assert code == 2 and "is not part of a `--set KEY=VALUE` pair" in capsys.readouterr().err


def test_render_checks_the_values_overrides_words(tmp_path, capsys):
    code = main(["render", "--set", "overrides=--set projection.factr=16", "--out", str(tmp_path)])
    assert code == 2 and "projection.factr: unknown key" in capsys.readouterr().err


def test_unknown_cluster_value_points_to_the_cluster_values(capsys):
    assert main(["render", "--set", "gpuz=4", "--out", "-"]) == 2
    err = capsys.readouterr().err
    assert "gpuz: unknown key" in err and "influence-job render --explain" in err and "values.yaml" in err
    assert "config --explain" not in err
    assert main(["render", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "gpus (default 8):" in out and "nightly.schedule (default 0 2 * * *):" in out
    assert "gpuProduct (default NVIDIA-H200):" in out  # the values file's own names


def test_data_without_contrast_warns_and_is_recorded(tmp_path, capsys):
    """Every prompt all-accepted or all-rejected: every influence row is skipped; say so, loudly."""
    groups = [{**g, "responses": [{**r, "accepted": g["prompt_id"] in "ac"} for r in g["responses"]]}
              for g in GROUPS]
    data = write_jsonl(tmp_path / "flat.jsonl", groups)
    out = tmp_path / "o"
    assert main(["run", "--set", f"data.path={data}", "--set", "projection.factor=64", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: no prompt has both accepted and rejected responses" in err
    results = json.loads((out / "results.json").read_text())
    assert results["influence"]["skipped_rows"] == results["n_responses"]
    assert len(results["warnings"]) == 1 and "data.accept_threshold" in results["warnings"][0]
    ok = json.loads((tmp_path / "ok" / "results.json").read_text()) if main(
        ["run", "-q", "--set", "projection.factor=64", "--output", str(tmp_path / "ok")]) == 0 else None
    assert ok["warnings"] == []
