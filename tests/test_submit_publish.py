"""`influence-job submit` against a local HTTP server that STANDS IN FOR THE ARGO SERVER (no Kubernetes or
Argo can run on these machines): it serves Argo's `POST /api/v1/workflows/{namespace}` and `GET
/api/v1/workflows/{namespace}/{name}`, checks the bearer token, and validates the submitted body against
Argo's schema. And the publish step's logic on real result directories written by the engine."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from argo_schema import errors
from conftest import exact_config

from influence_job.cli import main
from influence_job.cluster.publish import publish
from influence_job.cluster.workflows import PUBLISHED
from influence_job.errors import InputError
from influence_job.pipeline import run_job

TOKEN = "s3cr3t-token"


class FakeArgo(BaseHTTPRequestHandler):
    """Stand-in for Argo's API server: just enough of the two endpoints `submit` uses."""

    force_status: int | None = None
    received: list = []
    polls: dict = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"code": 16, "message": "token not valid"})
            return False
        if self.force_status:
            self._reply(self.force_status, {"code": 2, "message": f"forced {self.force_status}"})
            return False
        return True

    def do_POST(self):  # noqa: N802
        if not self._authorised():
            return None
        parts = self.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "workflows"] or len(parts) != 4:
            return self._reply(404, {"message": "no such route"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        wf = body["workflow"]
        problems = errors(wf)
        if problems:
            return self._reply(400, {"message": "; ".join(problems)})
        type(self).received.append((parts[3], wf))
        wf = {**wf, "metadata": {**wf["metadata"], "name": wf["metadata"]["generateName"] + "x7k2p",
                                 "namespace": parts[3]}}
        return self._reply(200, wf)

    def do_GET(self):  # noqa: N802
        if not self._authorised():
            return None
        parts = self.path.split("?")[0].strip("/").split("/")
        name = parts[4]
        n = type(self).polls[name] = type(self).polls.get(name, 0) + 1
        status = {"phase": "Running"} if n < 2 else {
            "phase": "Succeeded",
            "outputs": {"parameters": [{"name": "rows-emitted", "value": "96"},
                                       {"name": "validation-passed", "value": "true"}]},
        }
        return self._reply(200, {"metadata": {"name": name, "namespace": parts[3]}, "spec": {}, "status": status})


@pytest.fixture
def argo(monkeypatch):
    FakeArgo.force_status, FakeArgo.received, FakeArgo.polls = None, [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeArgo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ARGO_TOKEN", TOKEN)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def submit(url, *extra):
    return main(["submit", "--argo-server", url, "--namespace", "ml", "--token-env", "ARGO_TOKEN",
                 "--poll-seconds", "0.01", *extra])


def test_submit_posts_a_valid_workflow_with_the_token_and_waits(argo, capsys):
    code = submit(argo, "--wait", "--model", "/data/models/m", "--dataset", "/data/d.jsonl",
                  "--run-set", "--set curvature.source=response", "--set", "gpus=2")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "submitted workflow influence-diagnostic-x7k2p in namespace ml" in out
    assert "finished: Succeeded" in out and "rows-emitted" in out and "96" in out
    (namespace, wf), = FakeArgo.received
    assert namespace == "ml"
    assert wf["spec"]["workflowTemplateRef"] == {"name": "influence-diagnostic"}
    args = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert args["model"] == "/data/models/m" and args["dataset"] == "/data/d.jsonl"
    assert args["overrides"] == "--set curvature.source=response" and args["gpus"] == "2"


@pytest.mark.parametrize("status,fragment", [
    (403, "403 Forbidden"), (404, "404"), (500, "server failed"), (503, "server failed")])
def test_submit_error_statuses(argo, capsys, status, fragment):
    FakeArgo.force_status = status
    assert submit(argo) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_submit_bad_token(argo, capsys, monkeypatch):
    monkeypatch.setenv("ARGO_TOKEN", "wrong")
    assert submit(argo) == 2
    assert "401 Unauthorized" in capsys.readouterr().err
    monkeypatch.delenv("ARGO_TOKEN")
    assert submit(argo) == 2
    assert "ARGO_TOKEN: the environment variable is not set" in capsys.readouterr().err


def test_submit_connection_refused(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    assert main(["submit", "--argo-server", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot connect to the Argo server" in capsys.readouterr().err


def test_submit_tls_failure(argo, capsys):
    # The stand-in speaks plain HTTP; an https:// URL makes the TLS handshake fail.
    assert submit(argo.replace("http://", "https://")) == 2
    assert "TLS failure" in capsys.readouterr().err


def test_publish_passing_results(tiny_model_dir, tiny_data, tmp_path, capsys):
    results = tmp_path / "results"
    run_job(exact_config(tiny_model_dir, tiny_data, out=results))
    out = tmp_path / "outputs"
    assert main(["publish", "--results", str(results), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "## HINV" in stdout and "validation: PASSED" in stdout
    r = json.loads((results / "results.json").read_text())
    assert (out / "rows-emitted").read_text() == str(r["n_responses"])
    assert (out / "validation-passed").read_text() == "true"
    assert float((out / "hinv-per-prompt-acc-acc-mean").read_text()) == \
        r["similarity"]["hinv"]["per_prompt"]["acc-acc"]["dot"]["mean"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*PUBLISHED, "failed-checks", "report.md"])
    assert (out / "nan-count").read_text() == "0" and (out / "failed-checks").read_text() == ""


def test_publish_failed_validation_and_missing_results(tiny_model_dir, tiny_data, tmp_path):
    results = tmp_path / "results"
    run_job(exact_config(tiny_model_dir, tiny_data, out=results, projection={"factor": 4},
                         validation={"fidelity_sigma": 1e-12}))
    lines = []
    assert publish(results, tmp_path / "o1", echo=lines.append) == 1
    assert (tmp_path / "o1" / "validation-passed").read_text() == "false"
    assert any("projection_fidelity: FAILED" in line for line in lines)
    assert (tmp_path / "o1" / "failed-checks").read_text() == "projection_fidelity"
    lines.clear()
    assert publish(tmp_path / "nothing-here", tmp_path / "o2", echo=lines.append) == 1
    assert "the run step failed before writing" in lines[0]
    assert (tmp_path / "o2" / "rows-emitted").read_text() == "null"


@pytest.mark.parametrize("status,code", [("Failed", "1"), ("Error", "143")])
def test_publish_fails_when_the_run_failed_despite_a_passing_stale_result(tiny_model_dir, tiny_data, tmp_path,
                                                                          status, code):
    """An earlier attempt left a passing results.json; this attempt's run step failed (or its pod was evicted)."""
    results = tmp_path / "results"
    run_job(exact_config(tiny_model_dir, tiny_data, out=results))
    lines = []
    assert publish(results, tmp_path / "o", echo=lines.append, run_status=status, run_exit_code=code) == 1
    assert any(f"the run step ended {status} (exit code {code})" in line for line in lines)
    assert lines[-1] == "validation: PASSED; run step: FAILED"
    assert publish(results, tmp_path / "o2", echo=lines.append, run_status="Succeeded", run_exit_code="0") == 0


def test_hera_python_path_example_submits_the_same_workflow(argo):
    """examples/submit_with_hera.py against the local stand-in for Argo's server (FakeArgo checks the request
    and validates the posted workflow against Argo's schema)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "submit_with_hera.py"
    spec = importlib.util.spec_from_file_location("submit_with_hera", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    name = example.submit(argo, "ml", TOKEN, "/data/models/m", "/data/d.jsonl", "--set projection.factor=16")
    assert name == "influence-diagnostic-x7k2p"
    namespace, wf = FakeArgo.received[-1]
    assert namespace == "ml" and wf["spec"]["workflowTemplateRef"] == {"name": "influence-diagnostic"}
    args = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert args["overrides"] == "--set projection.factor=16" and args["model"] == "/data/models/m"
    with pytest.raises(InputError, match="projection.factr: unknown key"):
        example.submit(argo, "ml", TOKEN, "/data/models/m", "/data/d.jsonl", "--set projection.factr=16")
