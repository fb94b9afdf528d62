"""Real Prometheus and Pushgateway servers (Debian packages) started on loopback ports for the tests."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.2)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


class Server:
    def __init__(self, args: list[str], ready_url: str, log: Path):
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_http(ready_url)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_pushgateway(tmp: Path) -> tuple[Server, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"], url + "/-/ready",
                    tmp / "pushgateway.log")
    return server, url


def start_prometheus(tmp: Path, targets: dict[str, str]) -> tuple[Server, str]:
    """Prometheus scraping each target (job name → host:port) every second; Pushgateway jobs keep labels."""
    port = free_port()
    jobs = [{"job_name": name, "scrape_interval": "1s", "honor_labels": name == "pushgateway",
             "static_configs": [{"targets": [target]}]} for name, target in targets.items()]
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                  "scrape_configs": jobs}))
    url = f"http://127.0.0.1:{port}"
    server = Server(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}"], url + "/-/ready", tmp / "prometheus.log")
    return server, url


def query(prometheus: str, expr: str) -> list[dict]:
    body = json.loads(get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prometheus: str, expr: str, predicate, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, expr)
        if result and predicate(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr} did not satisfy the condition within {timeout} s: {result}")
        time.sleep(0.5)
