"""Two ranks (torchrun, gloo on CPU) give the single-process results; a dead rank stops the others with a
clear error instead of a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl
from services import free_port
from tolerances import MODEL_RTOL, SOLVE_RTOL, rel_err

from influence_job.planning.assignment import assign_modules, shard_prompts

FLOAT64_CLI = str(Path(__file__).parents[1] / "float64_cli.py")


def _text(seed: str, n: int) -> str:
    return (" " + seed * n)[:n]


def _group(pid: str, prompt: str, rewards: list[float], length: int) -> dict:
    return {"prompt_id": pid, "prompt": prompt,
            "responses": [{"response": _text(f"{pid}{k} ", length), "reward": r} for k, r in enumerate(rewards)]}


# Two prompts with contrast holding half the tokens, then three without contrast (all accepted / all
# rejected) holding the other half: the token-balanced cut gives rank 1 only prompts without contrast.
GROUPS = [
    _group("a", "Qa:", [1, -1, 1], 37),
    _group("b", "Qb:", [1, -1], 37),
    _group("c", "Q?", [1, 2], 31),
    _group("d", "Q!", [-1, 0], 31),
    _group("e", "Q.", [1, 1], 31),
]
TOKENS_PER_PROMPT = [sum(len((g["prompt"] + r["response"]).encode()) for r in g["responses"]) for g in GROUPS]


def args(model_dir, data, out, *extra):
    return ["run", "-q", "--set", f"model.path={model_dir}", "--set", "model.dtype=float64",
            "--set", "model.attn_implementation=eager", "--set", f"data.path={data}", "--set", "compute.device=cpu",
            "--set", "projection.factor=4", "--output", str(out), *extra]


def env():
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def test_sharding_and_assignment():
    assert shard_prompts([10, 10, 10, 10, 10], 2) == [(0, 2), (2, 5)]
    assert shard_prompts([5, 5, 5], 4) == [(0, 1), (1, 1), (1, 2), (2, 3)]  # a rank may hold no prompt
    owners = assign_modules([8.0, 1.0, 4.0, 4.0, 1.0], 2)
    load = [sum(c for c, o in zip([8.0, 1.0, 4.0, 4.0, 1.0], owners, strict=True) if o == r) for r in (0, 1)]
    assert sorted(load) == [9.0, 9.0]


@pytest.mark.parametrize("source,scope", [("token", "global"), ("response", "per_prompt")])
def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path, source, scope):
    data = write_jsonl(tmp_path / "d.jsonl", GROUPS)
    assert shard_prompts(TOKENS_PER_PROMPT, 2) == [(0, 2), (2, 5)]  # rank 1: no prompt with contrast
    extra = ("--set", f"curvature.source={source}", "--set", f"curvature.scope={scope}")
    # Both through float64_cli.py: the float64 Qwen2, so that sharding's other padding changes nothing.
    single = subprocess.run([sys.executable, FLOAT64_CLI, *args(tiny_model_dir, data, tmp_path / "one", *extra)],
                            capture_output=True, text=True, timeout=300, env=env())
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", FLOAT64_CLI,
                            *args(tiny_model_dir, data, tmp_path / "two", *extra)],
                           capture_output=True, text=True, timeout=300, env=env())
    assert multi.returncode == 0, multi.stderr[-3000:]
    with np.load(tmp_path / "one" / "similarity.npz") as a, np.load(tmp_path / "two" / "similarity.npz") as b:
        assert a.files == b.files
        for key in a.files:
            assert rel_err(b[key], a[key]) < (SOLVE_RTOL if key == "hinv" else MODEL_RTOL), key
    with np.load(tmp_path / "one" / "influence_rows.npz") as a, np.load(tmp_path / "two" / "influence_rows.npz") as b:
        scored = ~np.isnan(a["scores"])
        np.testing.assert_array_equal(np.isnan(b["scores"]), ~scored)
        assert rel_err(b["scores"][scored], a["scores"][scored]) < SOLVE_RTOL
        np.testing.assert_array_equal(b["skipped"], a["skipped"])
        assert b["skipped"].sum() == 6
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert rb["environment"]["world_size"] == 2
    for kind in ("raw", "hinv"):
        for scope_key, cells in ra["similarity"][kind].items():
            for cat, cell in cells.items():
                other = rb["similarity"][kind][scope_key][cat]
                assert other["n"] == cell["n"]
                for stat in ("dot", "cos") if "dot" in cell else ():
                    for k, v in cell[stat].items():
                        assert (v is None and other[stat][k] is None) or other[stat][k] == pytest.approx(
                            v, rel=SOLVE_RTOL, abs=SOLVE_RTOL)
    assert [m["name"] for m in rb["modules"]] == [m["name"] for m in ra["modules"]]
    assert [(c["name"], c["passed"]) for c in rb["validation"]["checks"]] == \
        [(c["name"], c["passed"]) for c in ra["validation"]["checks"]]
    assert rb["validation"]["passed"]


def _start_rank(rank: int, port: int, model_dir, data, out, timeout: float) -> subprocess.Popen:
    e = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
         "LOCAL_RANK": str(rank)}
    cmd = [sys.executable, "-m", "influence_job", *args(model_dir, data, out, "--set",
                                                        f"compute.timeout_seconds={timeout}")]
    cmd.remove("-q")  # keep the phase log lines: the test waits for rank 1's "[load]"
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def test_killed_rank_stops_the_other_with_a_clear_error(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", GROUPS)
    port = free_port()
    rank0 = _start_rank(0, port, tiny_model_dir, data, tmp_path / "out", timeout=30)
    rank1 = _start_rank(1, port, tiny_model_dir, data, tmp_path / "out", timeout=30)
    for line in rank1.stderr:  # rank 1 has joined the group and started loading: kill it there
        if line.startswith("[load]"):
            break
    rank1.send_signal(signal.SIGKILL)
    rank1.wait(timeout=30)
    t0 = time.monotonic()
    _, err = rank0.communicate(timeout=120)
    assert rank0.returncode == 3, err[-2000:]
    assert "rank 0 of 2: the collective step" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()


def test_missing_rank_times_out_instead_of_hanging(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", GROUPS)
    t0 = time.monotonic()
    rank0 = _start_rank(0, free_port(), tiny_model_dir, data, tmp_path / "out", timeout=5)
    _, err = rank0.communicate(timeout=120)
    assert rank0.returncode == 3, err[-2000:]
    assert "the process group did not form" in err
    assert time.monotonic() - t0 < 60
