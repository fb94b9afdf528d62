"""The job as stages over plain data, each a timed phase: load (config, data, model, fingerprint, checkpoint)
→ capture (u, v, G of the modules still to do) → exchange (factors to the ranks that own modules) →
curvature_solve (one module at a time; each contribution saved to the checkpoint as it is done) → reduce
(every module's contribution summed in module order) → statistics (statistics, influence rows,
diagnostics, validation, the typed results) → report → write (the output directory, atomically).

The stages themselves live in stages.py and assemble.py; this module runs them in order and carries a run's
state between them (``Run``).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from influence_job.base.errors import InputError
from influence_job.base.memory import peak_rss_bytes
from influence_job.inputs.config import JobConfig
from influence_job.inputs.data import Dataset, configured_dataset
from influence_job.inputs.model import choose_unprojected, layer_index, load_model, open_model, select_modules
from influence_job.maths.capture import capture
from influence_job.maths.engine import make_layout
from influence_job.monitoring.metrics import JobMetrics
from influence_job.outputs.report import render_report
from influence_job.outputs.report_html import render_html
from influence_job.outputs.results import CheckpointInfo, Performance, Results, read_results
from influence_job.outputs.tables import influence_rows_table, parquet_bytes
from influence_job.outputs.writing import check_target, is_own_output, npz_bytes, write_output_dir
from influence_job.planning.estimate import similarity_layers
from influence_job.planning.plan import make_plan
from influence_job.planning.profiles import device_profile
from influence_job.planning.workload import workload_of
from influence_job.run.assemble import assemble_results, token_strings
from influence_job.run.checkpoint import (
    Checkpoint,
    ContributionStore,
    MemoryStore,
    check_checkpoint_dir,
    checkpoint_dir,
    config_part,
    fingerprint,
    prepare,
)
from influence_job.run.distributed import Comm, init_comm, local_shard
from influence_job.run.progress import Progress
from influence_job.run.stages import Totals, exchange_stage, reduce_stage, solve_stage
from influence_job.run.stops import Stopped, committing, new_work

log = logging.getLogger("influence_job")


@dataclass
class RunResult:
    results: Results | None
    raw: np.ndarray
    hinv: np.ndarray
    rows: dict[str, np.ndarray]
    phase_seconds: dict[str, float] = field(default_factory=dict)


class _Phases:
    """Times each phase, logs its start and end, and reports both to the live metrics."""

    def __init__(self, metrics: JobMetrics | None):
        self.seconds: dict[str, float] = {}
        self.metrics = metrics

    @contextmanager
    def __call__(self, name: str):
        try:
            log.info("[%s] ...", name)
            if self.metrics:
                self.metrics.phase_started(name, time.time())
            t0 = time.perf_counter()
            yield
        except Stopped as stop:
            stop.phase = stop.phase or name  # the innermost phase names the stop
            raise
        self.seconds[name] = time.perf_counter() - t0
        if self.metrics:
            self.metrics.phase_done(name, self.seconds[name])
        log.info("[%s] done in %.2f s", name, self.seconds[name])

    def book_apart(self, name: str, part: str, seconds: float) -> None:
        """Book ``seconds`` of phase ``name`` as a phase of its own, ``part``: work that had to run interleaved
        with it (the diagnostics need each module's factors, which are freed as soon as its solve is done)."""
        self.seconds[name] -= seconds
        self.seconds[part] = seconds
        if self.metrics:
            self.metrics.phase_done(name, self.seconds[name])
            self.metrics.phase_done(part, seconds)
        log.info("[%s] of which %.2f s were [%s]", name, seconds, part)


def load_inputs(cfg: JobConfig, device: torch.device):
    """The load phase: model config and tokenizer, then the data (validated before any weight loads),
    then the weights; returns (dataset, model, selected modules, unprojected module name, model name)."""
    source = open_model(cfg.model)
    ds = configured_dataset(cfg, source)
    model = load_model(cfg.model, source, device)
    selected = select_modules(model, cfg.modules)
    unprojected_name = choose_unprojected(cfg.diagnostics.unprojected_module, [n for n, _ in selected])
    log.info("model %s: %d modules selected; data: %d prompts, %d responses (%d accepted)",
             source.name, len(selected), len(ds.prompt_ids), ds.n, sum(r.accepted for r in ds.responses))
    return ds, model, selected, unprojected_name, source.name


def capture_inputs(cfg: JobConfig, ds: Dataset, model, selected, unprojected_name, device,
                   metrics: JobMetrics | None = None):
    """The capture phase (one process): factors of every module, and the layout of responses and tokens."""
    cap = _capture(cfg, ds, model, selected, unprojected_name, device, metrics)
    arrays = ds.arrays
    return cap, make_layout(cap, arrays["prompt_index"], arrays["accepted"], arrays["advantage"])


def _capture(cfg, ds, model, selected, unprojected_name, device, metrics):
    bar = None

    def progress(k: int, n: int, responses: int, tokens: int) -> None:
        nonlocal bar
        bar = bar or Progress("capture", n, "micro-batch")
        bar.step(k, f"{tokens} tokens")
        if metrics:
            metrics.batch_done(responses, tokens)

    return capture(model, selected, ds, cfg, device, unprojected_name, progress=progress)


@dataclass
class Run:
    """One run's state between its stages: what it was given, where it writes, and what the load stage found."""

    cfg: JobConfig
    comm: Comm
    phases: _Phases
    metrics: JobMetrics | None
    write: bool
    out_dir: Path | None
    started: float  # perf_counter at the start: the wall time results.json reports
    ds: Dataset
    names: list[str]  # every selected module, in model order
    unprojected: str | None  # the unprojected comparison's module
    model_name: str
    fingerprint: dict | None
    store: ContributionStore

    @property
    def remaining(self) -> list[int]:
        """Indices of the modules this attempt computes (the others come from the checkpoint)."""
        return [i for i in range(len(self.names)) if i not in self.store.done]


def run_job(cfg: JobConfig, write: bool = True, metrics: JobMetrics | None = None,
            comm: Comm | None = None, fresh: bool = False) -> RunResult:
    """The whole job, stage by stage. With several ranks every rank calls it; rank 0 returns the results and
    writes them, the others return ``results=None``.

    A run that writes its output keeps a checkpoint (run/checkpoint.py): repeating an interrupted run's command
    skips the modules it had finished.
    """
    new_work()
    started, phases = time.perf_counter(), _Phases(metrics)
    comm = comm or init_comm(cfg.compute.device, cfg.compute.timeout_seconds)
    out_dir = check_target(cfg.output.dir) if write and comm.is_root else None
    if write and comm.is_root:
        check_checkpoint_dir(cfg)  # before any weight loads
    if comm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(comm.device)
    with phases("load"):
        ds, model, selected, unprojected, model_name = load_inputs(cfg, comm.device)
        if comm.is_root:
            # Times need this CPU's rates, a second's probe the run does not need: on a CPU the line gives flops.
            log.info("%s", make_plan(cfg, workload_of(cfg, model_name, model.config, ds, model),
                                     device_profile(comm.device, measure=False), comm.world).summary())
        # Hashing the weight files reads them whole: rank 0 alone does it, and open_store shares the result.
        fp = fingerprint(cfg, ds) if comm.is_root else None
        store = open_store(cfg, fp, len(selected), fresh, write, comm)
    run = Run(cfg, comm, phases, metrics, write, out_dir, started, ds, [n for n, _ in selected], unprojected,
              model_name, store.fingerprint if write else fp, store)
    try:
        local = _capture_stage(run, model, selected)
        # The weights are released here, before the curvature stage: the factors are all the later stages need.
        del model, selected
        return _after_capture(run, local)
    except Stopped as stop:
        stop.note = store.resume_note(len(run.names))
        raise


def _capture_stage(run: Run, model, selected):
    """This rank's factors of the modules still to do."""
    remaining = run.remaining
    if len(remaining) < len(run.names) and run.comm.is_root:
        log.info("resuming: %d of %d modules done (from %s); computing the other %d", len(run.store.done),
                 len(run.names), run.store.path, len(remaining))
    unprojected_left = run.unprojected if any(run.names[i] == run.unprojected for i in remaining) else None
    with run.phases("capture"):
        return _capture(run.cfg, local_shard(run.ds, run.comm), model, [selected[i] for i in remaining],
                        unprojected_left, run.comm.device, run.metrics)


def _after_capture(run: Run, local) -> RunResult:
    """Every stage after the capture. Ranks other than 0 stop after the reduce: rank 0 holds the sums and alone
    assembles, reports and writes the result."""
    cfg, comm, phases, arrays = run.cfg, run.comm, run.phases, run.ds.arrays
    sim_layers = similarity_layers(cfg, [layer_index(name) for name in run.names])
    with phases("exchange"):
        cap, layout, owned = exchange_stage(cfg, run.ds, local, run.remaining, sim_layers, comm)
    with phases("curvature_solve"):
        diagnostic_seconds = solve_stage(owned, layout, arrays["prompt_index"], sim_layers, cfg, run.store,
                                         run.metrics, len(run.names))
    phases.book_apart("curvature_solve", "diagnostics", diagnostic_seconds)
    with phases("reduce"):
        peak_gpu = int(torch.cuda.max_memory_allocated(comm.device)) if comm.device.type == "cuda" else 0
        totals, gathered = reduce_stage(run.store, len(run.names), int(layout.token_offsets[-1]), arrays, comm, {
            "peak_gpu": peak_gpu, "peak_host": peak_rss_bytes(), "phase_seconds": dict(phases.seconds)})
    if not comm.is_root:
        return RunResult(results=None, raw=None, hinv=None, rows={}, phase_seconds=phases.seconds)
    with phases("statistics"):
        results, rows = assemble_results(cfg, run.ds, cap, layout, totals, run.model_name, run.fingerprint,
                                         comm.device, comm.world, _checkpoint_info(run),
                                         lambda: _performance(run, totals, gathered))
    if run.write:
        similarity = {"raw": totals.raw, "hinv": totals.hinv, "prompt_index": arrays["prompt_index"],
                      "accepted": arrays["accepted"], "reward": arrays["reward"], "advantage": arrays["advantage"],
                      "log_prob": cap.log_prob}
        _write(run, results, similarity, rows)
    return RunResult(results=results, raw=totals.raw, hinv=totals.hinv, rows=rows,
                     phase_seconds=phases.seconds)


def _checkpoint_info(run: Run) -> CheckpointInfo:
    store, n_modules = run.store, len(run.names)
    return CheckpointInfo(dir=str(store.path) if store.path else None,
                          kept=bool(store.path) and run.cfg.output.keep_checkpoint,
                          resumed_modules=len(store.done), computed_modules=n_modules - len(store.done))


def _performance(run: Run, totals: Totals, gathered: list[dict]) -> Performance:
    """This attempt's costs, measured before writing: the write phase is in the log but not in results.json."""
    computed = [m for m in totals.records if not m.resumed]
    return Performance(
        wall_seconds=time.perf_counter() - run.started,
        phase_seconds=dict(run.phases.seconds),
        # This attempt's modules only (summed over ranks' work), like the wall time and the phases: a resumed
        # module's seconds belong to the attempt that computed it.
        hessian_solve_seconds=sum(m.solve_seconds for m in computed),
        # The diagnostics computed beside the solves (unprojected comparison, curvature similarity), booked as
        # their own phase (phase_seconds["diagnostics"]) so that the solves' time is not misread.
        diagnostics_seconds=sum(m.diagnostic_seconds for m in computed),
        peak_gpu_mem_bytes=max(g["peak_gpu"] for g in gathered),  # the largest rank's peak
        peak_host_mem_bytes=max(g["peak_host"] for g in gathered),
        # Each rank's phases up to the reduce (phase_seconds above are rank 0's, which writes the result).
        rank_phase_seconds=[g["phase_seconds"] for g in gathered],
    )


def _write(run: Run, results: Results, similarity: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> None:
    """The report, then the output directory in one atomic step; the checkpoint goes unless it is to be kept."""
    tokens = token_strings(run.ds)
    with run.phases("report"):
        html = render_html(results, similarity, rows, tokens).encode()  # before the write: it takes a while
    with run.phases("write"), committing():
        write_output_dir(run.out_dir, {
            "results.json": results.to_json().encode(),
            "similarity.npz": npz_bytes(similarity),
            "influence_rows.npz": npz_bytes(rows),
            "influence_rows.parquet": parquet_bytes(influence_rows_table(rows, tokens)),
            "report.md": render_report(results).encode(),
            "report.html": html,
        })
    if not run.cfg.output.keep_checkpoint:
        run.store.remove()


def matching_result(cfg: JobConfig) -> Results | None:
    """The result output.dir already holds when it is this configuration's (the same fingerprint: settings that
    change numbers, data records, model files, package version), else None. Reading it costs the data's tokenization
    and a hash of the weight files, not a run."""
    target = Path(cfg.output.dir)
    if not (target / "results.json").is_file() or not is_own_output(target):
        return None
    try:
        previous = read_results(target)
        current = fingerprint(cfg, configured_dataset(cfg, open_model(cfg.model)))["run"]
    except InputError:
        return None  # unreadable, or from another version: computed again
    return previous if previous.fingerprint.run == current else None


def open_store(cfg: JobConfig, fp: dict | None, n_modules: int, fresh: bool, write: bool,
               comm: Comm) -> ContributionStore:
    """Where module contributions go: the run's checkpoint directory when it writes an output (rank 0 checks
    it and tells the other ranks its fingerprint and which modules are done), else memory."""
    if not write:
        return MemoryStore()
    ckpt = prepare(cfg, fp, n_modules, fresh) if comm.is_root else None
    shared = comm.all_gather_object({"done": sorted(ckpt.done), "fingerprint": fp} if ckpt else None,
                                    "share the checkpoint's fingerprint and finished modules")[0]
    if ckpt is None:
        ckpt = Checkpoint(checkpoint_dir(cfg).resolve(), shared["fingerprint"], settings=config_part(cfg))
        ckpt.done = {i: ckpt.file(i) for i in shared["done"]}
    return ckpt


