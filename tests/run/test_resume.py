"""Resume after an interruption: a killed run, repeated, computes only the modules it had not saved,
and its results equal an uninterrupted run's; a changed run never mixes with an old checkpoint.

Every run is the real command line (float64 tiny Qwen2, see float64_qwen2.py) in a subprocess; kills are
real signals sent when the K-th module's progress line is logged (stop_driver.py), so K modules are saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import GROUPS, write_jsonl
from tolerances import rel_err

HERE = Path(__file__).parents[1]  # the tests folder: its helpers
DRIVER, CLI = str(HERE / "stop_driver.py"), str(HERE / "float64_cli.py")
EQUAL = 1e-12  # the bound; contributions are read back bit for bit, so only summation order differs


def args(model_dir, data, out, *extra):
    return ["run", "--set", f"model.path={model_dir}", "--set", "model.dtype=float64",
            "--set", "model.attn_implementation=eager", "--set", f"data.path={data}", "--set", "compute.device=cpu",
            "--set", "projection.factor=4", "--set", "compute.micro_batch_tokens=60", "--output", str(out), *extra]


def env():
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def cli(*words, launcher=(sys.executable, CLI)):
    return subprocess.run([*launcher, *words], capture_output=True, text=True, timeout=600, env=env())


def killed_at(module: int, sig: str, *words, ranks: int = 1):
    launcher = ([sys.executable, DRIVER] if ranks == 1 else
                ["torchrun", "--standalone", "--nproc-per-node", str(ranks), DRIVER])
    return subprocess.run([*launcher, f"module:{module}", sig, "1", "--", *words], capture_output=True, text=True,
                          timeout=600, env=env())


def torchrun(ranks: int):
    return ("torchrun", "--standalone", "--nproc-per-node", str(ranks), CLI)


def load(out: Path) -> dict:
    with np.load(out / "similarity.npz") as s, np.load(out / "influence_rows.npz") as r:
        return {"raw": s["raw"], "hinv": s["hinv"], "scores": r["scores"],
                "results": json.loads((out / "results.json").read_text())}


def assert_same_result(a: dict, b: dict) -> None:
    assert rel_err(a["raw"], b["raw"]) <= EQUAL and rel_err(a["hinv"], b["hinv"]) <= EQUAL
    ok = ~np.isnan(b["scores"])
    np.testing.assert_array_equal(np.isnan(a["scores"]), ~ok)
    assert rel_err(a["scores"][ok], b["scores"][ok]) <= EQUAL
    for kind in ("raw", "hinv"):
        for scope, cells in b["results"]["similarity"][kind].items():
            for cat, cell in cells.items():
                other = a["results"]["similarity"][kind][scope][cat]
                for k, v in cell.items():
                    for x, y in ([(other[k], v)] if not isinstance(v, dict) else
                                 [(other[k][s], v[s]) for s in v]):
                        assert (x is None and y is None) or x == pytest.approx(y, rel=EQUAL, abs=EQUAL)
    assert [c["passed"] for c in a["results"]["validation"]["checks"]] == \
        [c["passed"] for c in b["results"]["validation"]["checks"]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("resume-data") / "d.jsonl", GROUPS)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    proc = cli(*args(tiny_model_dir, data, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not Path(f"{out}.ckpt").exists()  # removed after success
    return load(out)


def test_sigkill_then_same_command_resumes(tiny_model_dir, data, uninterrupted, tmp_path):
    out = tmp_path / "out"
    killed = killed_at(3, "SIGKILL", *args(tiny_model_dir, data, out))
    assert killed.returncode == -signal.SIGKILL
    assert len(list((tmp_path / "out.ckpt" / "modules").iterdir())) == 3
    resumed = cli(*args(tiny_model_dir, data, out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: 3 of 14 modules done (from {tmp_path / 'out.ckpt'}); computing the other 11" in resumed.stderr
    assert "[curvature_solve] module 11/11" in resumed.stderr and "module 12/" not in resumed.stderr
    got = load(out)
    assert got["results"]["checkpoint"]["resumed_modules"] == 3
    assert got["results"]["checkpoint"]["computed_modules"] == 11
    assert_same_result(got, uninterrupted)
    # Every cost reported is this attempt's, and every report says the run was resumed.
    modules, perf = got["results"]["modules"], got["results"]["performance"]
    assert [m["resumed"] for m in modules] == [True] * 3 + [False] * 11
    assert perf["hessian_solve_seconds"] == pytest.approx(sum(m["solve_seconds"] for m in modules[3:]), abs=1e-12)
    assert perf["diagnostics_seconds"] == pytest.approx(sum(m["diagnostic_seconds"] for m in modules[3:]), abs=1e-12)
    assert perf["hessian_solve_seconds"] <= perf["phase_seconds"]["curvature_solve"] <= perf["wall_seconds"]
    note = "resumed: 3 of 14 modules from an earlier attempt; the times are this attempt's (11 modules computed)"
    assert note in resumed.stdout and note in (out / "report.html").read_text()
    assert note.capitalize() in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # checkpoint removed after success


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_ranks(tiny_model_dir, data, uninterrupted, tmp_path, before, after):
    out = tmp_path / "out"
    killed = killed_at(2, "SIGKILL", *args(tiny_model_dir, data, out), ranks=before)
    assert killed.returncode != 0
    saved = len(list((tmp_path / "out.ckpt" / "modules").iterdir()))
    assert 2 <= saved < 14
    resumed = cli(*args(tiny_model_dir, data, out), launcher=torchrun(after) if after > 1 else (sys.executable, CLI))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {saved} of 14 modules done" in resumed.stderr
    got = load(out)
    assert got["results"]["environment"]["world_size"] == after
    assert got["results"]["checkpoint"]["resumed_modules"] == saved
    assert_same_result(got, uninterrupted)


def test_changed_damping_or_data_starts_fresh(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert killed_at(3, "SIGKILL", *args(tiny_model_dir, data, out)).returncode == -signal.SIGKILL
    changed = cli(*args(tiny_model_dir, data, out, "--set", "curvature.damping=0.5"))
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "is for another run (changed: settings curvature.damping); set it aside as out.ckpt.stale-" in \
        changed.stderr
    assert "resuming" not in changed.stderr
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("out.ckpt.stale-")]
    assert len(stale) == 1 and len(list((stale[0] / "modules").iterdir())) == 3  # kept, not deleted
    reference = tmp_path / "reference"
    assert cli(*args(tiny_model_dir, data, reference, "--set", "curvature.damping=0.5")).returncode == 0
    assert_same_result(load(out), load(reference))

    other = write_jsonl(tmp_path / "other.jsonl", GROUPS[:4])
    assert killed_at(3, "SIGKILL", *args(tiny_model_dir, data, tmp_path / "b")).returncode == -signal.SIGKILL
    proc = cli(*args(tiny_model_dir, other, tmp_path / "b"))
    assert proc.returncode == 0 and "(changed: data)" in proc.stderr
    assert load(tmp_path / "b")["results"]["n_prompts"] == 4


def test_corrupt_checkpoint_file_is_recomputed(tiny_model_dir, data, uninterrupted, tmp_path):
    out = tmp_path / "out"
    assert killed_at(4, "SIGKILL", *args(tiny_model_dir, data, out)).returncode == -signal.SIGKILL
    victim = tmp_path / "out.ckpt" / "modules" / "0001.ckpt"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    resumed = cli(*args(tiny_model_dir, data, out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"checkpoint file {victim} is unreadable or corrupt (checksum mismatch): recomputing" in resumed.stderr
    assert "resuming: 3 of 14 modules done" in resumed.stderr
    assert_same_result(load(out), uninterrupted)


def test_sigterm_keeps_the_checkpoint_and_says_how_to_resume(tiny_model_dir, data, uninterrupted, tmp_path):
    out = tmp_path / "out"
    stopped = killed_at(5, "SIGTERM", *args(tiny_model_dir, data, out))
    assert stopped.returncode == 143
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("influence-job:")]
    assert lines == [f"influence-job: stopped by SIGTERM during [curvature_solve]; nothing was written to {out}; "
                     f"5 of 14 modules are saved in {tmp_path / 'out.ckpt'}: run the same command to resume."]
    ckpt = tmp_path / "out.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt"]
    assert sorted(p.name for p in ckpt.iterdir()) == [".influence-job", "fingerprint.json", "modules"]
    assert sorted(p.name for p in (ckpt / "modules").iterdir()) == [f"{i:04d}.ckpt" for i in range(5)]
    assert cli(*args(tiny_model_dir, data, out)).returncode == 0
    assert_same_result(load(out), uninterrupted)


def test_fresh_and_keep_checkpoint(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert killed_at(3, "SIGKILL", *args(tiny_model_dir, data, out)).returncode == -signal.SIGKILL
    proc = cli(*args(tiny_model_dir, data, out, "--fresh", "--keep-checkpoint"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--fresh: removed the checkpoint" in proc.stderr and "resuming" not in proc.stderr
    assert "[curvature_solve] module 14/14" in proc.stderr
    assert len(list((tmp_path / "out.ckpt" / "modules").iterdir())) == 14  # kept


def test_foreign_checkpoint_directory_is_refused(tiny_model_dir, data, tmp_path):
    (tmp_path / "out.ckpt").mkdir()
    (tmp_path / "out.ckpt" / "mine.txt").write_text("x")
    proc = cli(*args(tiny_model_dir, data, tmp_path / "out"))
    assert proc.returncode == 2 and "was not written by influence-job" in proc.stderr
    assert (tmp_path / "out.ckpt" / "mine.txt").exists()


def test_results_json_validates_against_the_published_schema(tmp_path):
    """The schema `influence-job schema results` prints accepts what a run writes (checked by jsonschema, an
    independent validator) and rejects a result missing a field."""
    schema = json.loads(subprocess.run(["influence-job", "schema", "results"], capture_output=True, text=True,
                                       check=True).stdout)
    out = tmp_path / "out"
    assert subprocess.run(["influence-job", "run", "-q", "--set", "projection.factor=64", "--output", str(out)],
                          capture_output=True, env=env()).returncode == 0
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, schema)
    del results["similarity"]["hinv"]["per_prompt"]["acc-rej"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(results, schema)
