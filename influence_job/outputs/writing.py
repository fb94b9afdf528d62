"""The output directory: checked before the run, written atomically, never replacing what is not ours.

A run writes its files into a staging directory beside the target (``<name>.partial-<pid>``: temporary
name, fsync, rename each), then swaps it with the target in one atomic ``renameat2(RENAME_EXCHANGE)``
(Linux; elsewhere two renames with stop signals blocked between them) and removes the old result. A crash
therefore leaves either the previous complete result or the new one under the target's name, and at most a
staging directory beside it, which the next run to the same target removes.

Every output directory holds a marker file, ``.influence-job``. An existing target is replaced only when it
is empty or is an influence-job output holding nothing but the files a run writes; anything else is
refused before the computation starts, as are targets whose replacement would remove the working
directory, the home directory or the file-system root.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np

from influence_job.base.errors import InputError

log = logging.getLogger(__name__)

MARKER = ".influence-job"
RESULT_FILES = ("results.json", "similarity.npz", "influence_rows.npz", "influence_rows.parquet", "report.md",
                "report.html")
TRACE_FILES = ("trace.json", "trace.parquet", "trace.html")  # a trace's own directory (influence_job.trace)
OWN_FILES = (*RESULT_FILES, "baseline.json", *TRACE_FILES)  # a baseline is an output directory plus its record
_TEMP_FILE = re.compile(r"^\..+\.tmp-\d+$")


def marker_bytes() -> bytes:
    from influence_job import __version__

    return (json.dumps({"written_by": "influence-job", "version": __version__}) + "\n").encode()


def _foreign_entries(path: Path) -> list[str]:
    """Entries of ``path`` that a run does not write (its files, the marker, its temporary files)."""
    return sorted(
        p.name for p in path.iterdir()
        if not (p.is_file() and (p.name in OWN_FILES or p.name == MARKER or _TEMP_FILE.match(p.name)))
    )


def is_own_output(path: Path) -> bool:
    """An influence-job output directory: it has the marker and nothing a run does not write."""
    return (path / MARKER).is_file() and not _foreign_entries(path)


def check_target(out_dir: Path, what: str = "output.dir", writer: str = "A run") -> Path:
    """Fail before the computation when ``out_dir`` cannot or must not be replaced; return it resolved.

    ``what`` names the path in messages (a run's output.dir, a baseline directory); ``writer`` says who
    replaces it. Also removes (or restores) what an earlier run that was killed hard left beside the target.
    """
    path = Path(out_dir).expanduser()
    target = path.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    role = what
    if target == target.parent or cwd.is_relative_to(target) or target == home:
        danger = ("the file-system root" if target == target.parent else "your home directory" if target == home
                else "the working directory or one of its parents")
        raise InputError(
            f"{role} {out_dir} is {danger} ({target}); {writer.lower()} replaces its directory as a whole. "
            "Choose a new directory."
        )
    parent = target.parent
    blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(
            f"{role} {out_dir} cannot be created: {blocker} is a file, not a directory. "
            "Choose a path whose parent is a directory."
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".influence-job-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(
            f"{role} {out_dir} cannot be written ({exc.strerror} in {parent}). Choose a writable location."
        ) from None
    _recover_interrupted(target)
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise InputError(
                f"{role} {out_dir} exists and is not a directory. Choose another path, or remove it."
            )
        entries = list(target.iterdir())
        if entries and not is_own_output(target):
            foreign = _foreign_entries(target)
            reason = (f"it holds files influence-job did not write ({', '.join(foreign[:3])}"
                      f"{', ...' if len(foreign) > 3 else ''})" if foreign
                      else f"it has no {MARKER} marker, so it is not an influence-job output")
            raise InputError(
                f"{role} {out_dir} already exists and {reason}. {writer} replaces its directory as a whole "
                "and never deletes what it did not write: choose another directory, or empty this one."
            )
    return target


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a pid reused by this process (containers restart with the same pids): not running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path):
    """(kind, path, pid) of the staging ('partial') and previous-result ('old') directories beside target."""
    pattern = re.compile(rf"^{re.escape(target.name)}\.(partial|old)-(\d+)$")
    if not target.parent.is_dir():
        return
    for p in sorted(target.parent.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            yield m.group(1), p, int(m.group(2))


def _recover_interrupted(target: Path) -> None:
    """Clean up after a run to the same target that was killed hard (SIGKILL, OOM) while writing."""
    for kind, path, pid in _leftovers(target):
        if _pid_alive(pid):
            log.warning("leaving %s alone: it belongs to process %d, which is still running", path, pid)
            continue
        if not (_foreign_entries(path) == [] and ((path / MARKER).is_file() or not any(path.iterdir()))):
            log.warning("leaving %s alone: it holds files influence-job did not write", path)
            continue
        if kind == "old" and not target.exists():
            os.replace(path, target)  # killed between the two renames of the fallback swap
            log.warning("restored the previous result %s from %s (a run was killed while replacing it)",
                        target, path.name)
            continue
        shutil.rmtree(path)
        log.warning("removed %s, left by an interrupted run (process %d)", path, pid)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_output_dir(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as the directory ``out_dir``, atomically replacing a previous output."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    try:
        staging.mkdir(parents=True)
    except FileExistsError:  # check_target removed ours, so this one holds something else
        raise InputError(f"{staging} exists and holds files influence-job did not write; remove it.") from None
    try:
        atomic_write_bytes(staging / MARKER, marker_bytes())
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        _fsync_dir(staging)
        if out_dir.exists():
            _swap(staging, out_dir)  # staging now holds the previous result
        else:
            os.replace(staging, out_dir)
        _fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the unfinished new result, or the replaced old one


def _swap(new: Path, target: Path) -> None:
    """Exchange ``new`` and ``target`` atomically; afterwards ``new``'s path holds the previous target."""
    if _rename_exchange(new, target):
        return
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    # Two renames: a stop signal between them would leave no result under the target's name.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        os.replace(target, old)
        os.replace(new, target)
        os.replace(old, new)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Linux's renameat2(RENAME_EXCHANGE); False where the platform or file system lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
