"""Baselines for the nightly comparison: a run's result files, promoted atomically, with who/when/which.

A baseline is an output directory like a run's (results.json, similarity.npz, influence_rows.npz,
report.md, the .influence-job marker) plus ``baseline.json``. Promotion goes through the same atomic
writer and the same ownership rules as a run's output: it replaces an earlier baseline or an empty
directory, never anything else.
"""

from __future__ import annotations

import datetime
import getpass
import json
import socket
from pathlib import Path

from influence_job.base.errors import InputError
from influence_job.outputs.results import read_results
from influence_job.outputs.writing import RESULT_FILES, check_target, write_output_dir

RECORD = "baseline.json"


def promote(run_dir: Path, to_dir: Path, reason: str = "promoted by hand") -> dict:
    """Make ``run_dir``'s result the baseline at ``to_dir``; returns the record written beside it."""
    run_dir = Path(run_dir).resolve()
    results = read_results(run_dir)  # a valid result of this version, or a clear error
    if not results.validation.passed:
        failed = [c.name for c in results.validation.checks if not c.passed]
        raise InputError(f"{run_dir} failed validation ({', '.join(failed)}); a failing run cannot be a baseline.")
    target = check_target(to_dir, "baseline directory", "A promotion")
    if target.is_dir() and any(target.iterdir()) and not (target / RECORD).is_file():
        raise InputError(
            f"baseline directory {to_dir} holds an influence-job run output, not a baseline (it has no "
            f"{RECORD}); promoting over it would destroy that run. Choose another directory, or empty this one."
        )
    files = {name: (run_dir / name).read_bytes() for name in RESULT_FILES if (run_dir / name).is_file()}
    record = {
        "run": str(run_dir),
        "promoted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "promoted_by": f"{_user()}@{socket.gethostname()}",
        "reason": reason,
        "fingerprint": results.fingerprint.run,
        "model": results.model,
    }
    files[RECORD] = (json.dumps(record, indent=2) + "\n").encode()
    write_output_dir(target, files)
    return record


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"
