"""A trace specification: the steps of a training run to diagnose, each a checkpoint directory and the batch that
step trained on, and the job configuration they share.

Written out step by step, or as a pattern with ``{step}`` in both paths and a step range (``100:1000:100``, both
ends included, as a reader of "steps 100 to 1000 every 100" means it) or ``all`` (every step for which the model
pattern or the data pattern matches something). A step whose checkpoint or batch is missing is an error that names
it, before anything runs. Relative paths are read from the specification file's directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from influence_job.base.errors import InputError
from influence_job.inputs.config import JobConfig
from influence_job.inputs.config_files import read_yaml_mapping, validate_with_overrides

DOCS = "docs/usage.md (Tracing a training run)"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepEntry(_Section):
    step: int = Field(ge=0, description="The training step.")
    model: Path = Field(description="The step's checkpoint: a local Hugging Face model directory.")
    data: Path = Field(description="The batch the step trained on, in any data format `run` reads.")


class StepPattern(_Section):
    model: str = Field(description="The checkpoint directory with {step} where the step number goes, e.g. "
                       "'ckpt/global_step_{step}/actor/huggingface' (verl's merged checkpoints).")
    data: str = Field(description="The batch file with {step}, e.g. 'rollouts/{step}.jsonl' (verl's "
                      "rollout_data_dir).")
    steps: str = Field("all", description="'START:STOP:EVERY' (both ends included), or 'all': every step whose "
                       "checkpoint or batch exists.")

    @model_validator(mode="after")
    def _placeholders(self):
        for name in ("model", "data"):
            if getattr(self, name).count("{step}") != 1:
                raise ValueError(f"pattern.{name} must hold {{step}} exactly once (got {getattr(self, name)!r})")
        if self.steps != "all":
            _range(self.steps)
        return self


class TraceSpec(_Section):
    """A trace specification file: ``job`` and one of ``steps`` or ``pattern``."""

    job: dict[str, Any] = Field(
        default_factory=dict, description="The job configuration the steps share (the keys of `influence-job "
        "config --explain`); each step sets model.path, data.path and output.dir itself.")
    steps: list[StepEntry] | None = Field(None, description="The steps, written out.")
    pattern: StepPattern | None = Field(None, description="The steps, as a pattern and a range.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.steps is None) == (self.pattern is None):
            raise ValueError("give either 'steps' (a list of {step, model, data}) or 'pattern' (model, data, steps)")
        if self.steps is not None and len({s.step for s in self.steps}) != len(self.steps):
            raise ValueError("a step number appears twice in 'steps'")
        return self


@dataclass(frozen=True)
class Step:
    """One step of a trace, its paths resolved."""

    step: int
    model: Path
    data: Path


def _range(text: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m.group(3)) == 0 or int(m.group(2)) < int(m.group(1)):
        raise ValueError(f"steps must be 'START:STOP:EVERY' with START ≤ STOP and EVERY > 0, or 'all' (got {text!r})")
    start, stop, every = map(int, m.groups())
    return range(start, stop + 1, every)


@dataclass(frozen=True)
class LoadedSpec:
    """A specification read and checked: the steps' shared configuration, as a model and as the `--set` words a
    cluster step's run is given, and the steps."""

    job: JobConfig
    words: str
    steps: list[Step]


def load_spec(path: Path, overrides: list[str] | None = None) -> LoadedSpec:
    """The shared job configuration (with ``--set`` overrides) and the expanded, checked steps."""
    path = Path(path)
    spec, job, words = _read(path, overrides)
    base = path.resolve().parent
    steps = ([Step(s.step, base / s.model, base / s.data) for s in sorted(spec.steps, key=lambda s: s.step)]
             if spec.steps is not None else _expand(spec.pattern, base))
    _check(steps, path)
    return LoadedSpec(job, words, steps)


def cluster_spec(path: Path) -> str:
    """The specification's text for a trace on the cluster, checked here as far as it can be without the cluster's
    files (those are checked in the trace's first pod): its fields, the job configuration and its `--set` words,
    and absolute paths (the pod reads the specification from a file of its own, so a relative path has no base)."""
    path = Path(path)
    spec, _, _ = _read(path, None)
    fields = ("model", "data")
    paths = ([(f"pattern.{n}", getattr(spec.pattern, n)) for n in fields] if spec.pattern is not None
             else [(f"steps[{k}].{n}", str(getattr(s, n))) for k, s in enumerate(spec.steps) for n in fields])
    relative = [f"{where} ({value})" for where, value in paths if not value.startswith("/")]
    if relative:
        raise InputError(f"trace specification {path}: {relative[0]} is relative; a trace on the cluster needs "
                         "absolute paths in its pods (e.g. /data/checkpoints/global_step_{step}/actor/huggingface).")
    return path.read_text()


def _read(path: Path, overrides: list[str] | None) -> tuple[TraceSpec, JobConfig, str]:
    """The specification validated, its job configuration, and that configuration as `--set` words."""
    spec = validate_with_overrides(TraceSpec, read_yaml_mapping(path, "trace specification"), None, str(path),
                                   docs=DOCS, what="trace specification")
    job = validate_with_overrides(JobConfig, dict(spec.job), overrides, f"{path}: job")
    pairs = [f"{key}={text}" for key, text in _flat(spec.job)] + list(overrides or [])
    spaced = [pair for pair in pairs if any(c.isspace() for c in pair)]
    if spaced:
        raise InputError(f"trace specification {path}: {spaced[0]!r} holds white space, which a cluster step's "
                         "`--set KEY=VALUE` words cannot carry; give the value without spaces.")
    return spec, job, " ".join(f"--set {pair}" for pair in pairs)


def _flat(mapping: dict[str, Any], prefix: str = ""):
    """(dotted key, the value as text the `--set` parser reads back as that value) of every leaf of the job
    mapping: JSON (a subset of YAML), except a plain string YAML reads as itself."""
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        elif isinstance(value, str) and value and yaml.safe_load(value) == value:
            yield f"{prefix}{key}", value
        else:
            yield f"{prefix}{key}", json.dumps(value, separators=(",", ":"))


def _expand(pattern: StepPattern, base: Path) -> list[Step]:
    model, data = (base / pattern.model).as_posix(), (base / pattern.data).as_posix()
    numbers = _range(pattern.steps) if pattern.steps != "all" else sorted(_found(model) | _found(data))
    return [Step(n, Path(model.replace("{step}", str(n))), Path(data.replace("{step}", str(n)))) for n in numbers]


def _found(pattern: str) -> set[int]:
    """The step numbers for which ``pattern`` names an existing path."""
    head, _, tail = pattern.partition("{step}")
    matcher = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + r"$")
    return {int(m.group(1)) for p in Path("/").glob(pattern.replace("{step}", "*").lstrip("/"))
            if (m := matcher.match(p.as_posix()))}


def _check(steps: list[Step], path: Path) -> None:
    if not steps:
        raise InputError(f"trace specification {path}: no step found. Check the pattern's paths and steps range.")
    missing = []
    for s in steps:
        lacks = [what for what, ok in ((f"checkpoint {s.model} (no config.json)", (s.model / "config.json").is_file()),
                                       (f"batch {s.data} (no such file)", s.data.is_file())) if not ok]
        if lacks:
            missing.append(f"step {s.step}: " + " and ".join(lacks))
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"trace specification {path}: {len(missing)} of {len(steps)} steps lack a file: {shown}. "
                         "Every step needs its checkpoint directory and its batch; fix the paths or the steps.")
