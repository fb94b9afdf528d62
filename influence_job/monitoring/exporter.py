"""`influence-job exporter`: the metrics sidecar. Serves /metrics for a prometheus-client multiprocess
directory shared with the job's ranks (they report their own GPUs' memory there: the sidecar is given no
GPU and looks at none), keeps serving the final values for a grace period after the job has written its end
marker, and exits cleanly (code 0) on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from influence_job.base.errors import InputError
from influence_job.monitoring.metrics import DONE_MARKER

log = logging.getLogger(__name__)


def serve(directory: Path, port: int, address: str = "0.0.0.0", grace_seconds: float = 60.0,
          poll_seconds: float = 0.5) -> int:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(directory))
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
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
