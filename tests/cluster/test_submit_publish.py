"""`influence-job submit` against a local HTTP server that STANDS IN FOR THE ARGO SERVER (no Kubernetes or
Argo can run on these machines): it serves Argo's `POST /api/v1/workflows/{namespace}` and `GET
/api/v1/workflows/{namespace}/{name}`, checks the bearer token, and validates the submitted body against
Argo's schema. And the publish step's logic on real result directories written by the engine."""

from __future__ import annotations

import json
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest
from argo_schema import SCHEMA, decode_errors, schema_errors
from conftest import exact_config
from kube_standin import JsonHandler

from influence_job.base.errors import InputError
from influence_job.cli.main import main
from influence_job.cluster.publish import publish
from influence_job.outputs.headline import PUBLISHED
from influence_job.run.pipeline import run_job

TOKEN = "s3cr3t-token"


class FakeArgo(JsonHandler):
    """Stand-in for Argo's API server: just enough of the two endpoints `submit` uses."""

    force_status: int | None = None
    received: list = []
    polls: dict = {}
    running_polls = 1  # polls answered "Running" before the final status
    final: dict | None = None  # the final status (default: Succeeded with two outputs)
    get_failures: list = []  # statuses the next polls answer with (transient server failures)

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
        # What Argo would refuse (its schema and its decoder), where the schema is at hand (tests/argo_schema.py).
        problems = schema_errors(wf) + decode_errors(wf) if SCHEMA.is_file() else []
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
        if type(self).get_failures:
            return self._reply(type(self).get_failures.pop(0), {"code": 14, "message": "the stand-in is unavailable"})
        n = type(self).polls[name] = type(self).polls.get(name, 0) + 1
        status = {"phase": "Running"} if n <= type(self).running_polls else type(self).final or {
            "phase": "Succeeded",
            "outputs": {"parameters": [{"name": "rows-emitted", "value": "96"},
                                       {"name": "validation-passed", "value": "true"}]},
        }
        return self._reply(200, {"metadata": {"name": name, "namespace": parts[3]}, "spec": {}, "status": status})


@pytest.fixture
def argo(monkeypatch):
    FakeArgo.force_status, FakeArgo.received, FakeArgo.polls = None, [], {}
    FakeArgo.running_polls, FakeArgo.final, FakeArgo.get_failures = 1, None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeArgo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ARGO_TOKEN", TOKEN)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def submit(url, *extra, preflight=False):
    return main(["submit", "--argo-server", url, "--namespace", "ml", "--token-env", "ARGO_TOKEN",
                 "--poll-seconds", "0.01", *([] if preflight else ["--no-preflight"]), *extra])


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


def test_submit_gpus_sets_the_runs_gpu_count_and_is_validated(argo, capsys):
    assert submit(argo, "--gpus", "4") == 0
    (_, wf), = FakeArgo.received
    assert {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}["gpus"] == "4"
    assert submit(argo, "--gpus", "0") == 2
    err = capsys.readouterr().err
    assert "gpus" in err and "greater than or equal to 1" in err and len(FakeArgo.received) == 1


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
    assert main(["submit", "--argo-server", f"http://127.0.0.1:{port}", "--no-preflight"]) == 2
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
    assert sorted(p.name for p in out.iterdir()) == sorted([*PUBLISHED, "failed-checks", "report.md", "report.html"])
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
    # The output parameters carry this run's verdict too, not the stale result's.
    assert (tmp_path / "o" / "validation-passed").read_text() == "false"
    assert (tmp_path / "o" / "failed-checks").read_text() == f"run-step-{status.lower()}"
    assert publish(results, tmp_path / "o2", echo=lines.append, run_status="Succeeded", run_exit_code="0") == 0


def test_hera_python_path_example_submits_the_same_workflow(argo):
    """examples/submit_with_hera.py against the local stand-in for Argo's server (FakeArgo checks the request
    and validates the posted workflow against Argo's schema)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "submit_with_hera.py"
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


# ---- submit: preflight first, then --wait with reasons -------------------------------------------------------------
# Kubernetes calls go to tests/kube_standin.py, a local HTTP server that STANDS IN FOR THE KUBERNETES API SERVER,
# with the chart's submitter Roles as its RBAC; Argo's calls go to FakeArgo above.

POD = "influence-diagnostic-x7k2p-run-1234"


def _pod(status: dict, memory: str = "256Gi") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "namespace": "ml",
                         "labels": {"workflows.argoproj.io/workflow": "influence-diagnostic-x7k2p"},
                         "annotations": {"workflows.argoproj.io/node-name": "influence-diagnostic-x7k2p[0].run"}},
            "spec": {"containers": [{"name": "main", "image": "img", "resources": {"limits": {"memory": memory}}},
                                    {"name": "metrics", "image": "img"}]},
            "status": status}


def _container(name: str, state: dict) -> dict:
    return {"name": name, "image": "img", "imageID": "", "ready": False, "restartCount": 0, "state": state}


def _event(reason: str, message: str) -> dict:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{POD}.{reason.lower()}", "namespace": "ml"},
            "involvedObject": {"kind": "Pod", "name": POD, "namespace": "ml"}, "reason": reason, "message": message,
            "type": "Warning", "lastTimestamp": "2026-12-01T07:00:00Z"}


def _failed_run(message: str, exit_code: str | None = None) -> dict:
    node = {"id": "influence-diagnostic-x7k2p-1234", "name": "influence-diagnostic-x7k2p[0].run",
            "displayName": "run", "type": "Pod", "phase": "Failed", "message": message}
    if exit_code:
        node["outputs"] = {"exitCode": exit_code}
    return {"phase": "Failed", "message": "child 'influence-diagnostic-x7k2p-1234' failed",
            "nodes": {node["id"]: node}}


SCENARIOS = {
    "oom": (_pod({"phase": "Failed", "containerStatuses": [
        _container("main", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
        _container("metrics", {"terminated": {"exitCode": 143, "reason": "Error"}})]}),
        [], _failed_run("OOMKilled (exit code 137)", "137"),
        ["step run: Failed, exit code 137 (killed by SIGKILL (the OOM killer or the kubelet): the checkpoint keeps "
         "the finished modules; retried): OOMKilled",
         f"pod {POD} (influence-diagnostic-x7k2p[0].run): container main: OOMKilled (exit 137): it used more than "
         "the memory limit 256Gi; raise memory"]),
    "evicted": (_pod({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
                [_event("Evicted", "The node was low on resource: memory.")],
                _failed_run("The node was low on resource: memory."),
                [f"pod {POD} (influence-diagnostic-x7k2p[0].run): evicted by the kubelet: The node was low on "
                 "resource: memory.", f"pod {POD} event Evicted: The node was low on resource: memory."]),
    "image": (_pod({"phase": "Pending", "containerStatuses": [_container("main", {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.local/influence-job:nope\""}})]}),
        [_event("Failed", "Failed to pull image \"registry.local/influence-job:nope\": not found")],
        _failed_run("Pod was active on the node longer than the specified deadline"),
        ["container main: ImagePullBackOff: the image cannot be pulled: check the image (--set image=REPO:TAG)",
         f"pod {POD} event Failed: Failed to pull image \"registry.local/influence-job:nope\": not found"]),
    "unschedulable": (_pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}),
        [_event("FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")],
        _failed_run("Pod was active on the node longer than the specified deadline"),
        ["unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.; check gpus and gpuProduct",
         f"pod {POD} event FailedScheduling: 0/3 nodes are available"]),
}


@pytest.fixture
def kube(tmp_path):
    from kube_standin import KubeStandIn
    from test_kube_status import SUBMITTER, ready_cluster

    with KubeStandIn(SUBMITTER) as api:
        ready_cluster(api)
        api.kubeconfig_file = str(api.kubeconfig(tmp_path / "kubeconfig"))
        yield api


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_wait_explains_a_failed_run_from_the_pods_status_and_events(argo, kube, capsys, scenario):
    pod, events, final, expected = SCENARIOS[scenario]
    kube.add("", "pods", pod)
    for event in events:
        kube.add("", "events", event)
    FakeArgo.final = final
    code = submit(argo, "--wait", "--kubeconfig", kube.kubeconfig_file, preflight=True)
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert out.count("ok  ") == 5  # preflight ran first and passed
    assert "finished: Failed" in out
    why = [line.strip() for line in out.splitlines() if line.strip().startswith("why:")]
    for fragment in expected:
        assert any(fragment in line for line in why), (fragment, why)
    assert not any("container metrics" in line for line in why)  # Argo stopping the sidecar is not a reason


def test_wait_reports_a_pending_pods_problem_once_while_it_waits(argo, kube, capsys):
    pod, events, _, _ = SCENARIOS["unschedulable"]
    kube.add("", "pods", pod)
    FakeArgo.running_polls = 4
    assert submit(argo, "--wait", "--kubeconfig", kube.kubeconfig_file, preflight=True) == 0
    out = capsys.readouterr().out
    waiting = [line for line in out.splitlines() if line.startswith("waiting:")]
    assert len(waiting) == 1 and "unschedulable: 0/3 nodes are available" in waiting[0]
    assert "finished: Succeeded" in out


def test_submit_stops_before_submitting_when_preflight_fails(argo, kube, capsys):
    del kube.objects[("argoproj.io", "ml", "workflowtemplates", "influence-diagnostic")]
    assert submit(argo, "--wait", "--kubeconfig", kube.kubeconfig_file, preflight=True) == 2
    out, err = capsys.readouterr()
    assert "FAIL template" in out and "preflight: 1 check(s) failed" in err and "--no-preflight" in err
    assert FakeArgo.received == []  # nothing was submitted


def test_submit_without_kubernetes_credentials_says_how_to_skip_preflight(argo, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert submit(argo, preflight=True) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes credentials: the kubeconfig" in err and "--no-preflight" in err
    assert FakeArgo.received == []


def test_wait_survives_transient_poll_errors(argo, capsys):
    FakeArgo.get_failures = [503, 502, 500]
    assert submit(argo, "--wait") == 0
    out = capsys.readouterr().out
    assert out.count("poll failed") == 3 and "retrying (attempt 3)" in out and "finished: Succeeded" in out


def test_wait_stops_on_a_poll_error_that_is_not_transient(argo, capsys):
    FakeArgo.get_failures = [403]
    assert submit(argo, "--wait") == 2
    assert "403 Forbidden" in capsys.readouterr().err


def test_wait_gives_up_after_its_timeout(argo, capsys):
    FakeArgo.running_polls = 10**9
    assert submit(argo, "--wait", "--timeout", "0.3") == 124
    out = capsys.readouterr().out
    assert "gave up waiting after 0 s: workflow influence-diagnostic-x7k2p is still running" in out
    assert "--timeout" in out


def test_submit_trace_posts_the_trace_entrypoint_with_the_specification(argo, capsys, tmp_path):
    """`submit --trace`: the stand-in Argo server (this test's local HTTP endpoint, not a real Argo) receives a
    Workflow of the installed template's trace entrypoint carrying the specification's text and the trace's name."""
    spec = tmp_path / "GRPO run 7.yaml"
    spec.write_text("job: {projection: {factor: 16}}\npattern:\n  model: /data/ckpt/global_step_{step}/actor/hf\n"
                    "  data: /data/rollouts/{step}.jsonl\n  steps: '100:300:100'\n")
    assert submit(argo, "--trace", str(spec), "--run-set", "--set curvature.source=response") == 0, capsys.readouterr()
    (_, wf), = FakeArgo.received
    assert wf["spec"]["entrypoint"] == "trace" and wf["spec"]["workflowTemplateRef"] == {"name": "influence-diagnostic"}
    args = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert args["spec"] == spec.read_text() and args["trace-name"] == "grpo-run-7"
    assert args["overrides"] == "--set curvature.source=response"
    assert submit(argo, "--trace", str(spec), "--trace-name", "Run_7") == 2
    assert "--trace-name 'Run_7'" in capsys.readouterr().err
    spec.write_text("pattern: {model: 'ckpt/global_step_{step}', data: '/data/{step}.jsonl'}\n")
    assert submit(argo, "--trace", str(spec)) == 2
    assert "pattern.model (ckpt/global_step_{step}) is relative" in capsys.readouterr().err
    spec.write_text("job: {projection: {factr: 2}}\npattern: {model: '/m/{step}', data: '/d/{step}.jsonl'}\n")
    assert submit(argo, "--trace", str(spec)) == 2
    assert "projection.factr: unknown key" in capsys.readouterr().err
    assert len(FakeArgo.received) == 1  # nothing invalid was submitted
