"""`influence-job exporter`: the metrics sidecar. Serves /metrics for a prometheus-client multiprocess
directory shared with the job's ranks, adds GPU memory and utilisation from NVML where present, keeps
serving the final values for a grace period after the job has written its end marker, and exits
cleanly (code 0) on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from influence_job.errors import InputError
from influence_job.metrics import DONE_MARKER, PREFIX

log = logging.getLogger(__name__)


class NvmlCollector:
    """Per-GPU memory and utilisation read from NVML at scrape time."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.count = pynvml.nvmlDeviceGetCount()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory size (NVML).", labels=["gpu"])
        util = GaugeMetricFamily(f"{PREFIX}_gpu_utilization_ratio", "GPU busy fraction (NVML).", labels=["gpu"])
        for i in range(self.count):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_metric([str(i)], mem.used)
            total.add_metric([str(i)], mem.total)
            util.add_metric([str(i)], self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        yield from (used, total, util)


def nvml_collector():
    """NVML when the driver library is there, else None (CPU machines)."""
    try:
        return NvmlCollector()
    except Exception as exc:  # noqa: BLE001 - pynvml raises its own error types, or ImportError
        log.info("no NVML GPU metrics: %s", exc)
        return None


def serve(directory: Path, port: int, address: str = "0.0.0.0", grace_seconds: float = 60.0,
          poll_seconds: float = 0.5) -> int:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(directory))
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    gpu = nvml_collector()
    if gpu is not None:
        registry.register(gpu)
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise InputError(
            f"exporter cannot listen on {address}:{port}: {exc.strerror}. Choose another --port."
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("serving %s on http://%s:%d/metrics", directory, address, port)
    done_at = None
    while not stop.wait(poll_seconds):
        if done_at is None and (directory / DONE_MARKER).exists():
            done_at = time.monotonic()
            log.info("the job has ended; serving its final values for %.0f s", grace_seconds)
        if done_at is not None and time.monotonic() - done_at >= grace_seconds:
            break
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    log.info("exporter stopped")
    return 0
