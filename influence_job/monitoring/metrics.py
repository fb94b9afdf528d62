"""Prometheus metrics of a run: live through prometheus-client's multiprocess directory (read by the
`influence-job exporter` sidecar), and a final summary pushed to a Pushgateway so nightly history
outlives the pod.

Every series carries the prefix ``influence_job_`` and base units in its name. Gauges use non-live
multiprocess modes, so the sidecar keeps serving a rank's final values after the rank has exited.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import torch

from influence_job.base.memory import cgroup_peak_bytes, peak_rss_bytes
from influence_job.outputs.headline import HEADLINE
from influence_job.outputs.results import Results

log = logging.getLogger(__name__)

PREFIX = "influence_job"
DONE_MARKER = "job.done"
SOLVE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 600)


class JobMetrics:
    """The live metrics of one process (rank) of a run.

    With ``directory`` set (or PROMETHEUS_MULTIPROC_DIR in the environment) values go to that
    multiprocess directory; otherwise to a private registry that nothing exports.
    """

    def __init__(self, directory: str | Path | None, rank: int = 0, world_size: int = 1):
        directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # where the value files are written
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        # prometheus-client chooses its value store (in memory, or files in the multiprocess directory) when
        # first imported; choose again now that the directory is known.
        values.ValueClass = values.get_value_class()
        self.directory = Path(directory) if directory else None
        self.rank = str(rank)
        # A private registry: the exporter reads the files, nothing exposes this process's registry.
        kw = {"registry": CollectorRegistry()}

        def gauge(name, doc, labels=(), mode="max"):
            return Gauge(f"{PREFIX}_{name}", doc, labels, multiprocess_mode=mode, **kw)

        self.phase = gauge("phase_duration_seconds", "Seconds each phase took.", ["phase", "rank"])
        self.phase_start = gauge("phase_started_timestamp_seconds", "Unix time each phase started.",
                                   ["phase", "rank"])
        self.solve = Histogram(f"{PREFIX}_module_solve_seconds", "Curvature+solve seconds per module.",
                               ["kind", "solver"], buckets=SOLVE_BUCKETS, **kw)
        self.modules_done = gauge("modules_done", "Modules whose curvature+solve finished.", ["rank"])
        self.modules = gauge("modules", "Modules the run processes.", ["rank"])
        self.responses = Counter(f"{PREFIX}_responses_processed", "Responses through forward+backward.",
                                 ["rank"], **kw)
        self.tokens = Counter(f"{PREFIX}_tokens_processed", "Token positions through forward+backward.",
                              ["rank"], **kw)
        self.rows_emitted = gauge("rows_emitted", "Token-influence rows emitted.", ["rank"])
        self.nonfinite = gauge("nonfinite_values", "Non-finite values found in the outputs.", ["rank"])
        self.validation = gauge("validation_passed", "1 when every validation check passed, else 0.", ["rank"])
        self.gpu_alloc = gauge("peak_gpu_memory_allocated_bytes", "Peak GPU memory allocated by tensors.", ["rank"])
        self.gpu_reserved = gauge("peak_gpu_memory_reserved_bytes", "Peak GPU memory reserved by the allocator.",
                                  ["rank"])
        # Device-level memory of this rank's own GPU (every process on it, as nvidia-smi shows): the ranks report
        # it because they hold the GPUs; the metrics sidecar is given none and sees none.
        self.gpu_used = gauge("gpu_memory_used_bytes", "Memory in use on the rank's GPU (all processes).",
                              ["gpu", "rank"], mode="mostrecent")
        self.gpu_total = gauge("gpu_memory_total_bytes", "Memory size of the rank's GPU.", ["gpu", "rank"],
                               mode="mostrecent")
        self.host_rss = gauge("peak_host_memory_bytes", "Peak resident set size of the process.", ["rank"])
        self.cgroup = gauge("container_peak_memory_bytes", "Peak memory of the container (cgroup).", ["rank"])
        self.world = gauge("world_size", "Processes in the run.", ["rank"])
        self.wall = gauge("wall_seconds", "Wall time of the run.", ["rank"])
        self.world.labels(self.rank).set(world_size)

    def phase_started(self, name: str, timestamp: float) -> None:
        self.phase_start.labels(name, self.rank).set(timestamp)

    def phase_done(self, name: str, seconds: float) -> None:
        self.phase.labels(name, self.rank).set(seconds)
        self.sample_memory()

    def batch_done(self, responses: int, tokens: int) -> None:
        self.responses.labels(self.rank).inc(responses)
        self.tokens.labels(self.rank).inc(tokens)

    def module_done(self, kind: str, solver: str, seconds: float, done: int, total: int) -> None:
        self.solve.labels(kind, solver).observe(seconds)
        self.modules_done.labels(self.rank).set(done)
        self.modules.labels(self.rank).set(total)
        self.sample_gpu()

    def sample_gpu(self) -> None:
        """The current device's memory in use and size (cudaMemGetInfo; no NVML needed)."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            free, total = torch.cuda.mem_get_info()
            index = str(torch.cuda.current_device())
            self.gpu_used.labels(index, self.rank).set(total - free)
            self.gpu_total.labels(index, self.rank).set(total)

    def sample_memory(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.gpu_alloc.labels(self.rank).set(torch.cuda.max_memory_allocated())
            self.gpu_reserved.labels(self.rank).set(torch.cuda.max_memory_reserved())
            self.sample_gpu()
        else:
            self.gpu_alloc.labels(self.rank).set(0)
            self.gpu_reserved.labels(self.rank).set(0)
        self.host_rss.labels(self.rank).set(peak_rss_bytes())
        peak = cgroup_peak_bytes()
        if peak is not None:
            self.cgroup.labels(self.rank).set(peak)

    def finished(self, results: Results | None, wall_seconds: float) -> None:
        """Final values, then the marker that tells the exporter the job has ended."""
        self.sample_memory()
        self.wall.labels(self.rank).set(wall_seconds)
        if results is not None:
            self.rows_emitted.labels(self.rank).set(results.validation.rows_emitted)
            self.nonfinite.labels(self.rank).set(results.validation.nan_count)
            self.validation.labels(self.rank).set(1 if results.validation.passed else 0)
        else:
            self.validation.labels(self.rank).set(0)
        if self.directory is not None:
            (self.directory / DONE_MARKER).touch()


def pushgateway_url(cfg) -> str | None:
    """Where a run's final figures go: metrics.pushgateway, else $INFLUENCE_PUSHGATEWAY, else nowhere."""
    return cfg.metrics.pushgateway or os.environ.get("INFLUENCE_PUSHGATEWAY") or None


def summary_gauges(results: Results | None, wall_seconds: float) -> dict[str, tuple[str, float]]:
    """The final figures a Pushgateway keeps for the nightly trends: name → (help, value)."""
    out = {
        "run_success": ("1 when the run finished and validation passed, else 0.",
                        1.0 if results is not None and results.validation.passed else 0.0),
        "run_wall_seconds": ("Wall time of the run.", wall_seconds),
        "run_finished_timestamp_seconds": ("Unix time the run ended.", time.time()),
    }
    if results is None:
        return out
    for figure in HEADLINE:
        value = figure.value(results) if figure.gauge else None
        if value is not None:
            out[figure.gauge] = (figure.help, float(value) if isinstance(value, bool) else value)
    return out


def push_summary(url: str, results: Results | None, wall_seconds: float, job: str = PREFIX,
                 instance: str | None = None, step: int | None = None) -> None:
    """Push the final summary to a Pushgateway, grouped by job and instance (and a trace's step); a failed push only
    warns."""
    group = {"instance": instance or socket.gethostname(), **({"step": str(step)} if step is not None else {})}
    _push(url, job, group, {f"{PREFIX}_{name}": value for name, value in summary_gauges(results, wall_seconds).items()})


def push_trace_steps(url: str, steps: int, job: str, instance: str) -> None:
    """A trace's number of steps, grouped by the trace (its instance): beside its steps' pushed summaries, the
    dashboard's count of finished and failed steps."""
    _push(url, job, {"instance": instance},
          {f"{PREFIX}_trace_steps": ("Steps of the trace (its steps push their own run summaries).", float(steps))})


def _push(url: str, job: str, group: dict[str, str], gauges: dict[str, tuple[str, float]]) -> None:
    from prometheus_client import CollectorRegistry, push_to_gateway
    from prometheus_client.core import GaugeMetricFamily

    class Figures:
        """Yields the figures directly: no value store, so nothing lands in the multiprocess directory."""

        def collect(self):
            for name, (doc, value) in gauges.items():
                yield GaugeMetricFamily(name, doc, value=value)

    registry = CollectorRegistry()
    registry.register(Figures())
    try:
        push_to_gateway(url, job=job, registry=registry, grouping_key=group, timeout=10)
        log.info("pushed metrics to %s (job=%s, %s)", url, job, ", ".join(f"{k}={v}" for k, v in group.items()))
    except OSError as exc:
        log.warning("could not push metrics to the Pushgateway at %s: %s", url, exc)
