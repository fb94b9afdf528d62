"""Writing the output directory atomically.

Files are written into a staging directory beside the target (temporary name, fsync, rename each), and
the staging directory replaces the target in one rename at the end: a crash leaves either the previous
complete result or a ``*.partial-*`` directory, never a half-written result under the target's name.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from influence_job.errors import InputError


def check_writable(out_dir: Path) -> None:
    """Fail before the computation when the output's parent cannot take a new directory."""
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".influence-job-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"output.dir {out_dir} cannot be written ({exc.strerror} in {parent}). Choose a writable "
            "location with --output DIR or --set output.dir=DIR."
        ) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output.dir {out_dir} exists and is not a directory. Choose another path.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def json_safe(obj):
    """Replace NaN/Inf by null and numpy scalars by Python numbers: results.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_output_dir(out_dir: Path, files: dict[str, bytes]) -> None:
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        _fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def results_json_bytes(results: dict) -> bytes:
    return (json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n").encode()
