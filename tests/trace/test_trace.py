"""The influence trace: a specification expands to checked steps, each step is exactly the run it would be on its
own, the trace holds the runs' own numbers, a repeated trace reuses finished steps, and a failed step is named
while the others complete."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import GROUPS, exact_config, save_tiny_model, write_jsonl
from pages import blank_stats, open_page

from influence_job.base.errors import InputError
from influence_job.cli.main import main
from influence_job.run.pipeline import run_job
from influence_job.trace.spec import load_spec

STEPS = (100, 200, 300)


def verl_layout(root, steps=STEPS):
    """verl's layout: merged checkpoints under global_step_<n>/actor/huggingface, rollouts as <n>.jsonl."""
    (root / "rollouts").mkdir(parents=True)
    for n in steps:
        save_tiny_model(root / "ckpt" / f"global_step_{n}" / "actor" / "huggingface", seed=n)
        write_jsonl(root / "rollouts" / f"{n}.jsonl", GROUPS)
    return root


def write_spec(root, **spec):
    path = root / "trace.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


PATTERN = {"model": "ckpt/global_step_{step}/actor/huggingface", "data": "rollouts/{step}.jsonl"}
# The steps' shared configuration: what exact_config sets besides the model and the data.
JOB = {"model": {"dtype": "float64", "attn_implementation": "eager"},
       "compute": {"device": "cpu", "micro_batch_tokens": 40}}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return verl_layout(tmp_path_factory.mktemp("verl"))


def test_a_pattern_expands_to_the_steps_it_names(layout):
    spec = load_spec(write_spec(layout, job=JOB, pattern={**PATTERN, "steps": "100:300:100"}), ["projection.seed=7"])
    steps = spec.steps
    assert [s.step for s in steps] == [100, 200, 300]
    assert steps[1].model == layout / "ckpt/global_step_200/actor/huggingface"
    assert steps[1].data == layout / "rollouts/200.jsonl"
    found = load_spec(write_spec(layout, job=JOB, pattern={**PATTERN, "steps": "all"})).steps
    assert [s.step for s in found] == [100, 200, 300]
    # The shared configuration as the `--set` words a cluster step's run gets, read back to the same configuration.
    assert spec.words == ("--set compute.device=cpu --set compute.micro_batch_tokens=40 "  # the file's order
                          "--set model.attn_implementation=eager --set model.dtype=float64 --set projection.seed=7")
    assert spec.job.projection.seed == 7 and spec.job.compute.micro_batch_tokens == 40


def test_missing_checkpoints_and_batches_are_named_before_anything_runs(layout):
    with pytest.raises(InputError, match=r"2 of 5 steps lack a file: step 0: checkpoint .*global_step_0.* and batch "
                       r".*0\.jsonl \(no such file\); step 400:"):
        load_spec(write_spec(layout, job=JOB, pattern={**PATTERN, "steps": "0:400:100"}))


@pytest.mark.parametrize("spec,message", [
    ({"pattern": {**PATTERN, "steps": "300:100:100"}}, "START ≤ STOP"),
    ({"pattern": {**PATTERN, "model": "ckpt/last"}}, r"pattern.model must hold \{step\} exactly once"),
    ({"pattern": PATTERN, "steps": [{"step": 1, "model": "m", "data": "d"}]}, "either 'steps'"),
    ({"steps": [{"step": 1, "model": "m", "data": "d"}] * 2}, "appears twice"),
    ({"pattern": PATTERN, "job": {"projection": {"factr": 2}}}, r"(?s)trace.yaml: job.*projection.factr: unknown key"),
])
def test_a_bad_specification_names_the_field(layout, spec, message):
    with pytest.raises(InputError, match=message):
        load_spec(write_spec(layout, **spec))


@pytest.fixture(scope="module")
def traced(layout, tmp_path_factory):
    """The three-step trace, run once: (its specification, its directory)."""
    spec = write_spec(layout, job=JOB, pattern={**PATTERN, "steps": "100:300:100"})
    out = tmp_path_factory.mktemp("traced") / "trace"
    assert main(["trace", str(spec), "--output", str(out), "-q"]) == 0
    return spec, out


def test_each_step_is_the_run_it_would_be_alone_and_the_trace_holds_its_numbers(layout, traced, tmp_path, capsys):
    spec, out = traced
    trace = json.loads((out / "trace" / "trace.json").read_text())
    assert [s["step"] for s in trace["steps"]] == list(STEPS)
    assert {s["status"] for s in trace["steps"]} == {"computed"}
    table = pq.read_table(out / "trace" / "trace.parquet").to_pandas()
    for k, n in enumerate(STEPS):
        alone = tmp_path / f"alone-{n}"
        run_job(exact_config(layout / f"ckpt/global_step_{n}/actor/huggingface", layout / f"rollouts/{n}.jsonl",
                             out=alone))
        for name in ("similarity.npz", "influence_rows.npz"):
            with np.load(alone / name) as a, np.load(out / "steps" / str(n) / name) as b:
                assert all(a[key].tobytes() == b[key].tobytes() for key in a.files), (n, name)
        results = json.loads((alone / "results.json").read_text())
        cell = results["similarity"]["hinv"]["per_prompt"]["acc-rej"]["cos"]["mean"]
        assert trace["series"]["similarity.hinv.per_prompt.acc-rej.cos.mean"][k] == cell
        row = table[(table.step == n) & (table.statistic == "similarity.raw.all_prompt.acc-acc.dot.std")]
        assert row.value.item() == results["similarity"]["raw"]["all_prompt"]["acc-acc"]["dot"]["std"]
    # the weights differ between steps, so the trend is not flat
    assert len(set(trace["series"]["similarity.hinv.per_prompt.acc-rej.cos.mean"])) == len(STEPS)
    capsys.readouterr()
    # A repeated command reuses every step (same fingerprint) and writes the same numbers.
    assert main(["trace", str(spec), "--output", str(out)]) == 0
    again = json.loads((out / "trace" / "trace.json").read_text())
    assert {s["status"] for s in again["steps"]} == {"reused"} and again["series"] == trace["series"]
    assert "reused" in capsys.readouterr().err


def test_trace_page_renders_offline_in_chromium_and_links_each_steps_report(traced, browser):
    """No request leaves the file, no console error, each section draws something, and a step's link opens its
    report.html."""
    _, out = traced
    page_path = out / "trace" / "trace.html"
    context, page, requests, errors = open_page(browser, page_path)
    assert errors == []
    assert {r for r in requests if not r.startswith("data:")} == {page_path.resolve().as_uri()}
    for section in ("verdict", "trends", "steps"):
        spread, inked = blank_stats(page.locator(f"#{section}").screenshot())
        assert spread > 10 and inked > 0.01, (section, spread, inked)
    assert page.locator("#trends img").count() == 4  # cosines, dots, module-kind shares, cost
    links = page.locator("#steps a")
    assert links.count() == len(STEPS)
    links.nth(1).click()
    page.wait_for_load_state("load")
    assert page.url == (out / "steps" / "200" / "report.html").resolve().as_uri()
    assert "Influence diagnostic report" in page.locator("h1").inner_text()
    context.close()


def test_a_failed_step_is_named_and_the_others_complete(tmp_path, capsys):
    root = verl_layout(tmp_path / "verl", steps=(1, 2))
    (root / "rollouts" / "2.jsonl").write_text('{"prompt_id": "a", "prompt": "x", "responses": []}\n')
    spec = write_spec(root, job=JOB, pattern={**PATTERN, "steps": "all"})
    assert main(["trace", str(spec), "--output", str(tmp_path / "out"), "-q"]) == 1
    said = capsys.readouterr().out
    assert "step 2: failed:" in said and "1 with a result" in said
    trace = json.loads((tmp_path / "out" / "trace" / "trace.json").read_text())
    by_step = {s["step"]: s for s in trace["steps"]}
    assert by_step[1]["status"] == "computed" and by_step[1]["validation_passed"] is True
    assert by_step[2]["status"] == "failed" and "responses" in by_step[2]["reason"]
    assert all(values[1] is None for values in trace["series"].values())
    assert (tmp_path / "out" / "steps" / "1" / "results.json").is_file()


def test_gather_builds_the_trace_of_existing_outputs(tmp_path, tiny_model_dir, tiny_data):
    for name in ("night-3", "night-12"):
        run_job(exact_config(tiny_model_dir, tiny_data, out=tmp_path / name))
    (tmp_path / "broken-7").mkdir()
    assert main(["trace", "--gather", str(tmp_path / "night-12"), str(tmp_path / "night-3"),
                 str(tmp_path / "broken-7"), "--output", str(tmp_path / "t")]) == 1
    trace = json.loads((tmp_path / "t" / "trace" / "trace.json").read_text())
    assert [(s["step"], s["status"]) for s in trace["steps"]] == [(3, "gathered"), (7, "failed"), (12, "gathered")]
    assert "cannot read" in trace["steps"][1]["reason"]


def test_a_trace_never_writes_into_a_directory_it_does_not_own(tmp_path, tiny_model_dir, tiny_data):
    run_job(exact_config(tiny_model_dir, tiny_data, out=tmp_path / "run"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["trace", "--gather", str(tmp_path / "run"), "--output", str(tmp_path / "mine")]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_list_and_collect_are_the_cluster_fan_out_and_gather(layout, tmp_path):
    """The cluster runs `trace --list` to expand the steps (withParam items), each step as a run in its own pod
    writing to the item's `out`, then `trace --collect`: the same trace as a local one, failed steps named."""
    spec = write_spec(layout, job=JOB, pattern={**PATTERN, "steps": "100:300:100"})
    out, params = tmp_path / "trace", tmp_path / "params"
    assert main(["trace", str(spec), "--output", str(out), "--list", str(params)]) == 0
    items = json.loads((params / "steps").read_text())
    assert (params / "count").read_text() == "3"
    overrides = items[0]["overrides"]
    assert {k: v for k, v in items[0].items() if k != "overrides"} == {
        "step": "100", "model": str(layout / "ckpt/global_step_100/actor/huggingface"),
        "dataset": str(layout / "rollouts/100.jsonl"), "out": str(out / "steps" / "100"),
        "checkpoint": str(out / "steps" / "100.ckpt")}
    assert overrides.endswith("--set model.dtype=float64 --set metrics.instance=trace --set metrics.trace_step=100")
    assert [p.name for p in out.iterdir()] == [".influence-job-trace"]  # checked and marked before any step runs
    for item in items[:2]:  # the third step's pod "failed": no output
        assert main(["run", "-q", "--reuse", "--set", "model.builtin=null", "--set", f"model.path={item['model']}",
                     "--set", f"data.path={item['dataset']}", "--output", item["out"],
                     *item["overrides"].split()]) == 0
    assert main(["trace", str(spec), "--output", str(out), "--collect", "--outputs", str(params)]) == 1
    trace = json.loads((out / "trace" / "trace.json").read_text())
    assert [s["status"] for s in trace["steps"]] == ["gathered", "gathered", "failed"]
    assert "no result" in trace["steps"][2]["reason"]
    assert [(params / n).read_text() for n in ("steps", "failed", "failed-steps")] == ["3", "1", "300"]


def test_run_reuse_skips_a_finished_output_with_the_same_fingerprint(tiny_model_dir, tiny_data, tmp_path, capsys):
    words = ["--set", "model.builtin=null", "--set", f"model.path={tiny_model_dir}", "--set",
             f"data.path={tiny_data}", "--set", "model.dtype=float64", "--set", "model.attn_implementation=eager",
             "--output", str(tmp_path / "o")]
    assert main(["run", "-q", *words]) == 0
    before = (tmp_path / "o" / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["run", "-q", "--reuse", *words]) == 0
    assert "nothing to do (--reuse)" in capsys.readouterr().out
    assert (tmp_path / "o" / "results.json").read_bytes() == before
    # another setting that changes the numbers: computed again
    assert main(["run", "-q", "--reuse", *words, "--set", "projection.factor=2"]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert (tmp_path / "o" / "results.json").read_bytes() != before


def test_trace_json_validates_against_its_published_schema(traced):
    """`influence-job schema trace` (checked by jsonschema, an independent validator) accepts what a trace writes
    and rejects a step without its status."""
    import subprocess

    import jsonschema

    _, out = traced
    schema = json.loads(subprocess.run(["influence-job", "schema", "trace"], capture_output=True, text=True,
                                       check=True).stdout)
    trace = json.loads((out / "trace" / "trace.json").read_text())
    jsonschema.validate(trace, schema)
    del trace["steps"][0]["status"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(trace, schema)


def test_a_trace_under_torchrun_runs_every_step_on_every_rank(tmp_path):
    """Two gloo ranks: each step is a two-rank run (the float64 Qwen2 of tests/float64_cli.py, so that sharding
    changes nothing beyond float64 rounding), a failing step fails on both ranks alike and the next one still runs,
    and rank 0 alone writes the trace."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tolerances import SOLVE_RTOL, rel_err

    cli = str(Path(__file__).parents[1] / "float64_cli.py")
    root = verl_layout(tmp_path / "verl", steps=(1, 2, 3))
    (root / "rollouts" / "2.jsonl").write_text('{"prompt_id": "a", "prompt": "x", "responses": []}\n')
    spec = write_spec(root, job={**JOB, "projection": {"factor": 4}}, pattern={**PATTERN, "steps": "all"})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, cli, "trace", str(spec), "--output", str(tmp_path / "one"), "-q"],
                         capture_output=True, text=True, timeout=600, env=env)
    two = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", cli, "trace", str(spec), "--output",
                          str(tmp_path / "two"), "-q"], capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 1 and two.returncode == 1, one.stderr[-2000:] + two.stderr[-3000:]
    trace = json.loads((tmp_path / "two" / "trace" / "trace.json").read_text())
    assert [(s["step"], s["status"]) for s in trace["steps"]] == [(1, "computed"), (2, "failed"), (3, "computed")]
    for n in (1, 3):
        assert json.loads((tmp_path / "two" / "steps" / str(n) / "results.json").read_text())[
            "environment"]["world_size"] == 2
        with np.load(tmp_path / "one" / "steps" / str(n) / "similarity.npz") as a, \
                np.load(tmp_path / "two" / "steps" / str(n) / "similarity.npz") as b:
            assert rel_err(b["hinv"], a["hinv"]) < SOLVE_RTOL


def test_a_trace_whose_steps_all_failed_still_renders_without_warnings(tmp_path):
    import warnings

    from influence_job.trace.page import render_trace
    from influence_job.trace.table import TraceStep, build_trace

    failed = TraceStep(step=1, label="1", model="m", data="d", output=str(tmp_path / "1"), status="failed",
                       reason="bad batch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = render_trace(build_trace([failed], [None]), tmp_path)
    assert "failed: 1" in page and "bad batch" in page


@pytest.mark.parametrize("when", ["log:trace step 2/2", "write-files"])
def test_a_stopped_trace_keeps_its_finished_steps_and_goes_on_when_repeated(tmp_path, when):
    """SIGTERM as the second step starts, or while the first step's output is written (tests/stop_driver.py; the
    write finishes, then the trace stops before the next step): exit 143, one line, the first step's output kept,
    no trace written, no temporary file; the same command then reuses the first step and finishes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    driver = str(Path(__file__).parents[1] / "stop_driver.py")
    root = verl_layout(tmp_path / "verl", steps=(1, 2))
    spec = write_spec(root, job=JOB, pattern={**PATTERN, "steps": "all"})
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    stopped = subprocess.run([sys.executable, driver, when, "SIGTERM", "1", "--", "trace", str(spec),
                              "--output", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("influence-job:")]
    assert lines == [f"influence-job: stopped by SIGTERM; the finished steps under {out}/steps are kept and the "
                     "trace is as it was; repeating the command reuses them and goes on."]
    assert sorted(p.name for p in out.iterdir()) == [".influence-job-trace", "steps"]
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["1"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]
    assert main(["trace", str(spec), "--output", str(out)]) == 0
    trace = json.loads((out / "trace" / "trace.json").read_text())
    assert [(s["step"], s["status"]) for s in trace["steps"]] == [(1, "reused"), (2, "computed")]


def test_trace_needs_a_specification_or_outputs_to_gather(tmp_path, capsys):
    assert main(["trace", "--output", str(tmp_path / "t")]) == 2
    assert main(["trace", str(tmp_path / "spec.yaml"), "--gather", str(tmp_path), "--output", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.count("trace needs either a specification") == 2
    assert main(["trace", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "t")]) == 2
    assert "cannot read trace specification" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
