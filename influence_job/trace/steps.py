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
from influence_job.monitoring.metrics import push_summary, push_trace_steps, pushgateway_url
from influence_job.outputs.results import Results, read_results
from influence_job.run.distributed import Comm
from influence_job.run.pipeline import matching_result, run_job
from influence_job.run.stops import new_work
from influence_job.trace.spec import LoadedSpec, Step

log = logging.getLogger("influence_job")


@dataclass
class StepOutcome:
    """What became of one step: ``computed``, ``reused`` or ``gathered`` (its output holds ``results``; rank 0
    only under torchrun), or ``failed`` with the reason."""

    step: Step
    output: Path
    status: str
    results: Results | None = None
    reason: str | None = None


def step_output(out_dir: Path, step: Step) -> Path:
    return Path(out_dir) / "steps" / str(step.step)


def trace_name(out_dir: Path) -> str:
    """A trace's name in its metrics (the Pushgateway 'instance' of its steps): its directory's name."""
    return Path(out_dir).resolve().name


def step_config(job: JobConfig, step: Step, out_dir: Path) -> JobConfig:
    """The shared configuration with the step's checkpoint, batch, output directory and metrics labels."""
    data = job.model_dump(mode="json")
    data["model"] = {**data["model"], "builtin": None, "path": str(step.model)}
    data["data"] = {**data["data"], "path": str(step.data)}
    data["output"] = {**data["output"], "dir": str(step_output(out_dir, step)), "checkpoint_dir": None}
    data["metrics"] = {**data["metrics"], "instance": trace_name(out_dir), "trace_step": step.step}
    return validate_with_overrides(JobConfig, data, None, f"trace step {step.step}")


def run_steps(job: JobConfig, steps: list[Step], out_dir: Path, comm: Comm, fresh: bool = False) -> list[StepOutcome]:
    """Every step in order; ``fresh`` recomputes steps whose outputs could be reused (and their checkpoints). With a
    Pushgateway (metrics.pushgateway or $INFLUENCE_PUSHGATEWAY), the trace's size and each step's summary are
    pushed as they are known, as the cluster's steps push theirs."""
    url = pushgateway_url(job) if comm.is_root else None
    if url:
        push_trace_steps(url, len(steps), job.metrics.job, trace_name(out_dir))
    outcomes = []
    for k, step in enumerate(steps, 1):
        new_work()  # a stop between steps stops the trace, one during the last write stops it here
        cfg = step_config(job, step, out_dir)
        target = step_output(out_dir, step)
        started = time.perf_counter()
        if not fresh and (done := matching_result(cfg)) is not None:
            outcomes.append(StepOutcome(step, target, "reused", done))
            log.info("trace step %d/%d (step %d): reused %s (same fingerprint)", k, len(steps), step.step, target)
            continue
        log.info("trace step %d/%d (step %d): %s with %s", k, len(steps), step.step, step.model, step.data)
        try:
            results = run_job(cfg, comm=comm, fresh=fresh).results
        except DistributedError:
            raise  # the process group is broken: no later step can run
        except InputError as exc:
            outcomes.append(StepOutcome(step, target, "failed", reason=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the trace; the trace names it
            log.exception("trace step %d failed", step.step)
            outcomes.append(StepOutcome(step, target, "failed", reason=f"{type(exc).__name__}: {exc}"))
        else:
            outcomes.append(StepOutcome(step, target, "computed", results))
        done, seconds = outcomes[-1], time.perf_counter() - started
        log.info("trace step %d/%d (step %d): %s in %.1f s%s", k, len(steps), step.step, done.status, seconds,
                 f": {done.reason}" if done.reason else "")
        if url:
            push_summary(url, done.results, seconds, cfg.metrics.job, cfg.metrics.instance, step.step)
    return outcomes


def collect_steps(steps: list[Step], out_dir: Path) -> list[StepOutcome]:
    """The steps' results as their outputs hold them, running nothing (the cluster's gather step, after the steps
    ran in their own pods): a step without a readable result is failed, with why."""
    outcomes = []
    for step in steps:
        target = step_output(out_dir, step)
        try:
            outcomes.append(StepOutcome(step, target, "gathered", read_results(target)))
        except InputError as exc:
            outcomes.append(StepOutcome(step, target, "failed", reason=f"no result: {exc}"))
    return outcomes


def step_items(spec: LoadedSpec, out_dir: Path) -> list[dict[str, str]]:
    """The steps as the cluster's fan-out iterates them (Argo withParam items, every value a string): each step's
    paths, and the `--set` words of its run — the shared configuration and the metrics labels a local trace sets."""
    name = trace_name(out_dir)
    return [{"step": str(s.step), "model": str(s.model), "dataset": str(s.data), "out": str(step_output(out_dir, s)),
             "checkpoint": f"{step_output(out_dir, s)}.ckpt",
             "overrides": f"{spec.words} --set metrics.instance={name} --set metrics.trace_step={s.step}".strip()}
            for s in spec.steps]
