"""Per-module checkpoints: what a later run needs to skip the modules an interrupted run finished.

A module's contribution (its RAW and HINV N×N terms, its token-score terms, its record, and its pieces of
the diagnostics) depends only on the module, the data and the configuration — not on the world size or
on which run computed it — so it is saved, one file per module, as soon as the module is done, and the
final sums always read every module's contribution from the store in module order: an interrupted and
resumed run adds exactly what an uninterrupted one adds.

The directory (default ``<output>.ckpt``) holds a marker, ``fingerprint.json`` (a hash of everything that
determines the result, and its parts for people) and ``modules/NNNN.ckpt`` files, each a SHA-256 of its
payload followed by the payload (an npz): a truncated or corrupt file fails the check and its module is
recomputed, never trusted. A different fingerprint never mixes: the old directory is set aside as
``<dir>.stale-<time>-<pid>`` and the run starts fresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

import influence_job
from influence_job.base.errors import InputError
from influence_job.outputs.results import ModuleRecord
from influence_job.outputs.writing import MARKER, atomic_write_bytes, marker_bytes

log = logging.getLogger(__name__)

# Settings that change how the work is done but not its numbers beyond float rounding: a resumed run may
# change them (e.g. a smaller micro-batch after an out-of-memory kill). The data and model paths are left
# out too: their contents are fingerprinted instead, so a moved file keeps its checkpoint.
NOT_IN_FINGERPRINT = {
    "output": None,
    "metrics": None,
    "compute": {"device", "micro_batch_tokens", "token_chunk", "timeout_seconds", "gram_dtype"},
    "data": {"path"},
    "model": {"path"},
}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "config.json")


@dataclass
class ModuleContribution:
    """One module's share of the result, in global response order (independent of the world size)."""

    index: int
    record: ModuleRecord  # as computed: resumed and contribution are the reduce's
    raw: np.ndarray  # N×N float64
    hinv: np.ndarray  # N×N float64
    scores: np.ndarray | None  # (response tokens,) float64, NaN for prompts without contrast
    fidelity: dict | None = None  # the unprojected comparison, for that one module
    curvature_similarity: dict[str, np.ndarray] | None = None  # P×P 'frobenius' and 'spectrum' cosines

    def to_bytes(self) -> bytes:
        arrays = {"raw": self.raw, "hinv": self.hinv}
        if self.scores is not None:
            arrays["scores"] = self.scores
        for k, v in (self.curvature_similarity or {}).items():
            arrays[f"curv_{k}"] = v
        record = self.record.model_dump(mode="json", exclude={"resumed", "contribution"})
        meta = {"index": self.index, "record": record, "fidelity": self.fidelity,
                "has_scores": self.scores is not None, "curv": sorted(self.curvature_similarity or {})}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        payload = buf.getvalue()
        return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> ModuleContribution:
        """Raises ValueError when the checksum does not match (a truncated or corrupt file) or the record is not a
        module record."""
        digest, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch")
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                index=meta["index"], record=ModuleRecord.model_validate(meta["record"]), raw=z["raw"], hinv=z["hinv"],
                scores=z["scores"] if meta["has_scores"] else None, fidelity=meta["fidelity"],
                curvature_similarity={k: z[f"curv_{k}"] for k in meta["curv"]} or None,
            )


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_part(cfg) -> dict:
    """The resolved configuration without the settings that do not change the numbers."""
    return settings_part(cfg.model_dump(mode="json"))


def settings_part(config: dict) -> dict:
    """A dumped configuration (as results.json keeps it) without the settings that do not change the numbers."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, keys in NOT_IN_FINGERPRINT.items():
        if keys is None:
            data.pop(section, None)
        elif section in data:
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
    return data


def data_fingerprint(ds) -> str:
    """Hash of the input records as the job reads them: ids, token ids, rewards, labels, metadata."""
    h = hashlib.sha256()
    for r in ds.responses:
        h.update(json.dumps([r.prompt_id, r.response_id, r.reward, r.accepted, r.prompt_ids, r.response_ids,
                             r.meta], sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(model_cfg) -> str:
    """A built-in model is its name and seed; a directory is the content of its config and weight files."""
    if model_cfg.builtin is not None:
        return _hash_json({"builtin": model_cfg.builtin, "seed": model_cfg.seed})
    h = hashlib.sha256()
    files = sorted({p for pattern in WEIGHT_FILES for p in Path(model_cfg.path).glob(pattern)})
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(cfg, ds) -> dict:
    """Everything that determines the result, hashed; ``run`` is the hash of the parts."""
    parts = {
        "config": _hash_json(config_part(cfg)),
        "data": data_fingerprint(ds),
        "model": model_fingerprint(cfg.model),
        "package": influence_job.__version__,
    }
    return {"run": _hash_json(parts), **parts}


def checkpoint_dir(cfg) -> Path:
    return Path(cfg.output.checkpoint_dir or f"{cfg.output.dir}.ckpt")


class ContributionStore(Protocol):
    """Where a run keeps its modules' contributions until the reduce: the checkpoint directory (Checkpoint, a run
    that writes an output) or memory (MemoryStore). ``done`` holds the modules an earlier attempt finished."""

    path: Path | None
    done: dict

    def save(self, contribution: ModuleContribution) -> None: ...

    def load(self, index: int) -> ModuleContribution: ...

    def handover(self) -> list[ModuleContribution]:
        """What rank 0 must receive from this rank."""

    def take(self, contributions: list[ModuleContribution]) -> None: ...

    def remove(self) -> None: ...

    def resume_note(self, n_modules: int) -> str | None: ...


@dataclass
class Checkpoint:
    """A run's checkpoint directory (rank 0 prepares it; every rank saves the modules it computes)."""

    path: Path
    fingerprint: dict
    settings: dict = field(default_factory=dict)  # the fingerprinted configuration, so a change can be named
    done: dict[int, Path] = field(default_factory=dict)  # module index → its verified file

    @property
    def modules(self) -> Path:
        return self.path / "modules"

    def file(self, index: int) -> Path:
        return self.modules / f"{index:04d}.ckpt"

    def save(self, contribution: ModuleContribution) -> None:
        """Written atomically as soon as the module is done; the directory is made on the first save."""
        if not self.modules.is_dir():
            self.modules.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path / MARKER, marker_bytes())
            record = {**self.fingerprint, "settings": self.settings}
            atomic_write_bytes(self.path / "fingerprint.json", json.dumps(record, indent=2).encode())
        atomic_write_bytes(self.file(contribution.index), contribution.to_bytes())

    def load(self, index: int) -> ModuleContribution:
        return ModuleContribution.from_bytes(self.file(index).read_bytes())

    def saved_count(self) -> int:
        return len(list(self.modules.glob("*.ckpt"))) if self.modules.is_dir() else 0

    def handover(self) -> list[ModuleContribution]:
        return []  # every rank's contributions are already in the shared directory

    def take(self, contributions: list[ModuleContribution]) -> None:
        pass

    def resume_note(self, n_modules: int) -> str | None:
        """For the stop line: what is saved and how to continue."""
        saved = self.saved_count()
        if not saved:
            return None
        return f"{saved} of {n_modules} modules are saved in {self.path}: run the same command to resume"

    def remove(self) -> None:
        if self.path.is_dir() and (self.path / MARKER).is_file():
            shutil.rmtree(self.path)


def check_checkpoint_dir(cfg) -> None:
    """Refuse, before the run, a checkpoint directory this program did not write."""
    path = checkpoint_dir(cfg).resolve()
    if path.exists() and (not path.is_dir() or not (path / MARKER).is_file()):
        raise InputError(
            f"checkpoint directory {path} exists but was not written by influence-job. Move it away, or set "
            "output.checkpoint_dir to another path."
        )


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configuration parts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def prepare(cfg, fp: dict, n_modules: int, fresh: bool) -> Checkpoint:
    """Open the checkpoint for this run (rank 0): keep verified modules of the same fingerprint, set aside
    a checkpoint of another, start over with ``fresh``; refuse a directory this program did not write."""
    ckpt = Checkpoint(checkpoint_dir(cfg).resolve(), fp, settings=config_part(cfg))
    path = ckpt.path
    if not path.exists():
        return ckpt
    check_checkpoint_dir(cfg)
    try:
        old = json.loads((path / "fingerprint.json").read_text())
    except (OSError, ValueError):
        old = None
    if fresh:
        shutil.rmtree(path)
        log.info("--fresh: removed the checkpoint %s; starting from the beginning", path)
        return ckpt
    if old is None or old.get("run") != fp["run"]:
        changed = [k for k in ("data", "model", "package") if (old or {}).get(k) != fp[k]]
        if (old or {}).get("config") != fp["config"]:
            keys = changed_settings((old or {}).get("settings", {}), ckpt.settings)
            changed.append("settings " + ", ".join(keys) if keys else "configuration")
        aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(path, aside)
        log.warning("checkpoint %s is for another run (changed: %s); set it aside as %s and starting fresh",
                    path, "; ".join(changed) or "its fingerprint", aside.name)
        return ckpt
    for index in range(n_modules):
        f = ckpt.file(index)
        if not f.is_file():
            continue
        try:
            ModuleContribution.from_bytes(f.read_bytes())
        except (ValueError, OSError, KeyError) as exc:
            log.warning("checkpoint file %s is unreadable or corrupt (%s): recomputing that module", f, exc)
            f.unlink()
            continue
        ckpt.done[index] = f
    return ckpt


class MemoryStore:
    """Contributions kept in memory, for runs that write no output (library use, tests, benchmarks)."""

    path = None

    def __init__(self):
        self.done: dict[int, None] = {}
        self.kept: dict[int, ModuleContribution] = {}

    def save(self, contribution: ModuleContribution) -> None:
        self.kept[contribution.index] = contribution

    def load(self, index: int) -> ModuleContribution:
        return self.kept[index]

    def handover(self) -> list[ModuleContribution]:
        """What rank 0 must receive from this rank (everything: nothing is shared on disk)."""
        return list(self.kept.values())

    def take(self, contributions: list[ModuleContribution]) -> None:
        self.kept.update({c.index: c for c in contributions})

    def remove(self) -> None:
        self.kept.clear()

    def resume_note(self, n_modules: int) -> str | None:
        return None
