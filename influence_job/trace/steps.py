"""A trace's steps run locally, one after another (under torchrun, every rank takes part in every step): each step
is an ordinary run whose output directory is ``DIR/steps/<step>``, exactly what `influence-job run` writes for
that checkpoint and batch. A step whose output already holds a result with the same fingerprint is reused, not
recomputed, so a repeated trace command finishes what an interrupted one left; an interrupted step resumes from
its checkpoint as a run does. A step that fails (a bad batch, a broken checkpoint) is recorded with its reason and
the others go on: the trace names it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from influence_job.base.errors import DistributedError, InputError
from influence_job.inputs.config import JobConfig
from influence_job.inputs.config_files import validate_with_overrides
from influence_job.inputs.data import configured_dataset
from influence_job.inputs.model import open_model
from influence_job.outputs.results import read_results
from influence_job.outputs.writing import is_own_output
from influence_job.run.checkpoint import fingerprint
from influence_job.run.distributed import Comm
from influence_job.run.pipeline import run_job
from influence_job.trace.spec import Step

log = logging.getLogger("influence_job")


@dataclass
class StepOutcome:
    """What became of one step: ``computed`` or ``reused`` (its output holds the result), or ``failed``."""

    step: Step
    output: Path
    status: str
    reason: str | None = None


def step_output(out_dir: Path, step: Step) -> Path:
    return Path(out_dir) / "steps" / str(step.step)


def step_config(job: JobConfig, step: Step, out_dir: Path) -> JobConfig:
    """The shared configuration with the step's checkpoint, batch and output directory."""
    data = job.model_dump(mode="json")
    data["model"] = {**data["model"], "builtin": None, "path": str(step.model)}
    data["data"] = {**data["data"], "path": str(step.data)}
    data["output"] = {**data["output"], "dir": str(step_output(out_dir, step)), "checkpoint_dir": None}
    return validate_with_overrides(JobConfig, data, None, f"trace step {step.step}")


def run_steps(job: JobConfig, steps: list[Step], out_dir: Path, comm: Comm, fresh: bool = False) -> list[StepOutcome]:
    """Every step in order; ``fresh`` recomputes steps whose outputs could be reused (and their checkpoints)."""
    outcomes = []
    for k, step in enumerate(steps, 1):
        cfg = step_config(job, step, out_dir)
        target = step_output(out_dir, step)
        started = time.perf_counter()
        if not fresh and _reusable(cfg, target):
            outcomes.append(StepOutcome(step, target, "reused"))
            log.info("trace step %d/%d (step %d): reused %s (same fingerprint)", k, len(steps), step.step, target)
            continue
        log.info("trace step %d/%d (step %d): %s with %s", k, len(steps), step.step, step.model, step.data)
        try:
            run_job(cfg, comm=comm, fresh=fresh)
        except DistributedError:
            raise  # the process group is broken: no later step can run
        except InputError as exc:
            outcomes.append(StepOutcome(step, target, "failed", str(exc)))
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the trace; the trace names it
            log.exception("trace step %d failed", step.step)
            outcomes.append(StepOutcome(step, target, "failed", f"{type(exc).__name__}: {exc}"))
        else:
            outcomes.append(StepOutcome(step, target, "computed"))
        done = outcomes[-1]
        log.info("trace step %d/%d (step %d): %s in %.1f s%s", k, len(steps), step.step, done.status,
                 time.perf_counter() - started, f": {done.reason}" if done.reason else "")
    return outcomes


def _reusable(cfg: JobConfig, target: Path) -> bool:
    """The step's output holds a valid result of this configuration, checkpoint and batch (its fingerprint)."""
    if not (target / "results.json").is_file() or not is_own_output(target):
        return False
    try:
        previous = read_results(target).fingerprint.run
        return previous == fingerprint(cfg, configured_dataset(cfg, open_model(cfg.model)))["run"]
    except InputError:
        return False  # unreadable or from another version: computed again
