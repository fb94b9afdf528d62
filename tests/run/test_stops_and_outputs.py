"""Outputs never destroy data, and stops are clean.

Each run here is the real command line on the built-in tiny model; signals are real signals (see
stop_driver.py for how one lands inside a given phase).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from influence_job.cli.main import main
from influence_job.outputs import writing as outputs

DRIVER = str(Path(__file__).parents[1] / "stop_driver.py")
PHASES = ["load", "capture", "exchange", "curvature_solve", "reduce", "statistics", "report", "write"]
SMALL = ["--set", "projection.factor=64", "--set", "diagnostics.curvature_similarity=false"]


def run_cli(args, cwd, **kw):
    return subprocess.run(["influence-job", "run", *SMALL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, **kw)


def driven(phase, sig, count, out, cwd):
    return subprocess.run([sys.executable, DRIVER, phase, sig, str(count), "--", "run", *SMALL, "--output", str(out)],
                          capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def snapshot(path: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A complete earlier result, copied into each test's directory."""
    base = tmp_path_factory.mktemp("previous")
    proc = run_cli(["--output", "out"], cwd=base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return snapshot(base / "out")


def lay_out(previous: dict, where: Path) -> Path:
    out = where / "out"
    out.mkdir()
    for name, data in previous.items():
        (out / name).write_bytes(data)
    return out


# ---- §2: outputs that never destroy data ---------------------------------------------------------------------

def test_foreign_directory_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("my notes")
    proc = run_cli(["--output", str(target)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "holds files influence-job did not write (notes.txt, sub)" in proc.stderr
    assert "choose another directory, or empty this one" in proc.stderr
    assert "[capture]" not in proc.stderr  # refused before the run
    assert (target / "notes.txt").read_text() == "my notes" and (target / "sub").is_dir()


def test_own_output_with_a_users_file_added_is_refused(previous, tmp_path):
    out = lay_out(previous, tmp_path)
    (out / "analysis.ipynb").write_text("{}")
    proc = run_cli(["--output", str(out)], cwd=tmp_path)
    assert proc.returncode == 2 and "analysis.ipynb" in proc.stderr
    assert (out / "analysis.ipynb").exists()


def test_directory_with_result_names_but_no_marker_is_refused(tmp_path):
    target = tmp_path / "look-alike"
    target.mkdir()
    (target / "results.json").write_text("{}")  # somebody else's results.json
    proc = run_cli(["--output", str(target)], cwd=tmp_path)
    assert proc.returncode == 2 and "no .influence-job marker" in proc.stderr
    assert (target / "results.json").read_text() == "{}"


def test_empty_directory_and_own_output_are_replaced(previous, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["--output", str(empty)], cwd=tmp_path).returncode == 0
    assert (empty / ".influence-job").is_file() and (empty / "results.json").is_file()
    out = lay_out(previous, tmp_path)
    proc = run_cli(["--output", str(out), "--set", "curvature.source=response"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["config"]["curvature"]["source"] == "response"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # nothing left beside them


@pytest.mark.parametrize("target,what", [
    (".", "the working directory or one of its parents"),
    ("..", "the working directory or one of its parents"),
    ("/", "the file-system root"),
    ("~", "your home directory"),
    ("{cwd_parent}", "the working directory or one of its parents"),
])
def test_dangerous_targets_are_refused_before_the_run(tmp_path, target, what):
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    target = target.format(cwd_parent=tmp_path)
    proc = subprocess.run(["influence-job", "run", "--output", target], capture_output=True, text=True, cwd=work,
                          timeout=300, env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert what in proc.stderr and "[load]" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert work.exists() and home.exists()


def test_output_parent_that_is_a_file_reads_naturally(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_cli(["--output", str(tmp_path / "afile" / "out")], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{tmp_path / 'afile'} is a file, not a directory" in proc.stderr
    assert "File exists" not in proc.stderr


def test_unexpected_failure_exits_4_not_1(tmp_path, monkeypatch, capsys):
    """1 means 'a validation check failed'; a crash has its own code and keeps its traceback."""
    from influence_job.run import assemble

    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(assemble, "matrix_stats", broken)
    code = main(["run", *SMALL, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 4
    assert "Traceback" in err and "unexpected failure (RuntimeError: simulated bug)" in err
    assert not (tmp_path / "o").exists()


# ---- §3: clean stops -----------------------------------------------------------------------------------------

def _stop_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("influence-job:")]


# Every phase is stopped once, by SIGTERM and SIGINT in turn: how a stop is handled does not depend on the signal
# (one handler, one exit code per signal), so each signal still meets phases of every stage.
@pytest.mark.parametrize(("phase", "sig", "code"), [
    (phase, *(("SIGTERM", 143), ("SIGINT", 130))[i % 2]) for i, phase in enumerate(PHASES)])
def test_stop_in_each_phase_keeps_previous_result(previous, tmp_path, phase, sig, code):
    """Before [curvature_solve] nothing is saved; from [reduce] on every module is in the checkpoint."""
    out = lay_out(previous, tmp_path)
    proc = driven(phase, sig, 1, out, tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    saved = PHASES.index(phase) > PHASES.index("curvature_solve")
    note = f"; 14 of 14 modules are saved in {tmp_path / 'out.ckpt'}: run the same command to resume" if saved else ""
    assert _stop_lines(proc.stderr) == [
        f"influence-job: stopped by {sig} during [{phase}]; nothing new was written: the previous output "
        f"{out} is intact{note}."
    ]
    assert snapshot(out) == previous
    # no staging directory, no temporary file; the checkpoint once modules are saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.ckpt"] if saved else ["out"]


def test_stop_without_previous_output_says_so(tmp_path):
    proc = driven("capture", "SIGTERM", 1, tmp_path / "new", tmp_path)
    assert proc.returncode == 143
    assert _stop_lines(proc.stderr)[-1].endswith(f"during [capture]; nothing was written to {tmp_path / 'new'}.")
    assert list(tmp_path.iterdir()) == []


def test_one_signal_during_the_write_lets_it_finish(previous, tmp_path):
    """Between two files of the write: the write completes (the new result is whole), then the run ends."""
    out = lay_out(previous, tmp_path)
    proc = driven("write-files", "SIGTERM", 1, out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _stop_lines(proc.stderr)[-1].startswith("influence-job: SIGTERM arrived while the result was being "
                                                   "written; the write finished first")
    assert outputs.is_own_output(out) and snapshot(out).keys() == previous.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_second_signal_during_the_write_stops_it_cleanly(previous, tmp_path):
    out = lay_out(previous, tmp_path)
    proc = driven("write-files", "SIGTERM", 2, out, tmp_path)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert _stop_lines(proc.stderr)[-1].startswith("influence-job: stopped by SIGTERM during [write]")
    assert snapshot(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.ckpt"]


def test_hard_kill_leftovers_are_removed_by_the_next_run(previous, tmp_path):
    out = lay_out(previous, tmp_path)
    killed = driven("write-files", "SIGKILL", 1, out, tmp_path)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("out", "out.ckpt")]
    assert len(leftovers) == 1 and leftovers[0].startswith("out.partial-")  # what a SIGKILL leaves
    assert snapshot(out) == previous
    proc = run_cli(["--output", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"removed {tmp_path / leftovers[0]}, left by an interrupted run" in proc.stderr
    assert "resuming: 14 of 14 modules done" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_kill_between_the_fallback_renames_is_recovered(previous, tmp_path):
    """Where renameat2 is missing, the swap is two renames; a kill between them leaves only '<out>.old-PID'.
    The next run puts the previous result back before it starts."""
    out = lay_out(previous, tmp_path)
    os.replace(out, tmp_path / "out.old-999999999")  # the state right after the first rename
    outputs.check_target(out)
    assert snapshot(out) == previous and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_swap_replaces_the_result(previous, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_rename_exchange", lambda a, b: False)
    out = lay_out(previous, tmp_path)
    outputs.write_output_dir(out, {"results.json": b"{}\n"})
    assert (out / "results.json").read_bytes() == b"{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftover_of_a_running_process_or_with_foreign_files_is_kept(tmp_path):
    out = tmp_path / "out"
    alive = tmp_path / f"out.partial-{os.getppid()}"  # a live process that is not this one
    alive.mkdir()
    (alive / ".influence-job").write_text("{}")
    foreign = tmp_path / "out.partial-999999999"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    outputs.check_target(out)
    assert alive.exists() and (foreign / "thesis.tex").exists()
