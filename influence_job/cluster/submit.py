"""Submitting a run to an Argo server through Hera's WorkflowsService, with clear errors."""

from __future__ import annotations

import os
import time

import requests
from hera.exceptions import HeraException, InternalServerError
from hera.workflows import WorkflowsService
from hera.workflows.models import WorkflowCreateRequest

from influence_job.base.errors import InputError
from influence_job.base.exit_codes import ExitCode

FINAL_PHASES = ("Succeeded", "Failed", "Error")


def _explain(exc: Exception, server: str, namespace: str, token_env: str | None) -> InputError:
    if isinstance(exc, requests.exceptions.SSLError):
        return InputError(f"TLS failure talking to {server}: {exc}. Check the server's certificate, or pass "
                          "--insecure for a self-signed one you trust.")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return InputError(f"cannot connect to the Argo server at {server} (connection refused or unreachable). "
                          "Check --argo-server, or port-forward it: kubectl -n argo port-forward svc/argo-server 2746.")
    if isinstance(exc, requests.exceptions.Timeout):
        return InputError(f"the Argo server at {server} did not answer in time.")
    status = getattr(exc, "status_code", None)
    detail = str(exc).strip()[:300]
    if status == 401:
        where = f"${token_env}" if token_env else "no token (pass --token-env VAR)"
        return InputError(f"the Argo server rejected the credentials (401 Unauthorized; token from {where}). "
                          "Use a valid service-account token.")
    if status == 403:
        return InputError(f"the token may not create workflows in namespace {namespace!r} (403 Forbidden). Grant "
                          "its service account the chart's Role influence-job-submitter (or use the token of the "
                          "service account influence-job-submitter), or choose another --namespace.")
    if status == 404:
        return InputError(f"not found (404) on {server}: the namespace {namespace!r} or the WorkflowTemplate does "
                          f"not exist there. Install the Helm chart into that namespace first. ({detail})")
    if status is not None and status >= 500 or type(exc) is HeraException:
        return InputError(f"the Argo server failed ({status or 'server error'}): {detail}. Retry later or check "
                          "the argo-server logs.")
    return InputError(f"the Argo server refused the request ({status}): {detail}")


def service(server: str, namespace: str, token_env: str | None, insecure: bool) -> WorkflowsService:
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise InputError(f"--token-env {token_env}: the environment variable is not set or empty.")
    if not server.startswith(("http://", "https://")):
        raise InputError(f"--argo-server {server!r} needs a scheme, e.g. https://argo.example:2746")
    return WorkflowsService(host=server, token=token, namespace=namespace, verify_ssl=not insecure)


def _transient(exc: Exception) -> bool:
    """A poll failure worth retrying: the server or the network hiccuped, the request itself was fine."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    return isinstance(exc, InternalServerError) or type(exc) is HeraException  # 5xx, 429 and other odd statuses


def submit(workflow, server: str, namespace: str, token_env: str | None = None, insecure: bool = False,
           wait: bool = False, poll_seconds: float = 10.0, timeout_seconds: float | None = None, kube=None,
           echo=print) -> int:
    """Create the workflow; with ``wait``, follow it to its end and return 0 (Succeeded), 1 (Failed/Error, with
    the reasons) or 124 (still running after ``timeout_seconds``). ``kube`` (an ApiClient, optional) lets the
    reasons come from the pods' status and events as well as from Argo's node messages."""
    svc = service(server, namespace, token_env, insecure)
    try:
        created = svc.create_workflow(WorkflowCreateRequest(workflow=workflow.build()), namespace=namespace)
    except (HeraException, requests.exceptions.RequestException) as exc:
        raise _explain(exc, server, namespace, token_env) from None
    name = created.metadata.name
    echo(f"submitted workflow {name} in namespace {namespace}")
    if not wait:
        return 0
    wf = _follow(svc, name, namespace, server, token_env, poll_seconds, timeout_seconds, kube, echo)
    if wf is None:
        echo(f"gave up waiting after {timeout_seconds:.0f} s: workflow {name} is still running. Follow it with "
             f"`argo -n {namespace} watch {name}`, or wait longer with --timeout.")
        return ExitCode.TIMED_OUT
    phase = wf.status.phase
    echo(f"workflow {name} finished: {phase}" + (f" ({wf.status.message})" if wf.status.message else ""))
    outputs = wf.status.outputs.parameters if wf.status.outputs and wf.status.outputs.parameters else []
    if outputs:
        width = max(len(p.name) for p in outputs)
        for p in outputs:
            echo(f"  {p.name:<{width}}  {p.value}")
    if phase != "Succeeded":
        for line in _reasons(wf, kube, namespace, name, echo):
            echo(f"  why: {line}")
    return 0 if phase == "Succeeded" else 1



def _follow(svc, name, namespace, server, token_env, poll_seconds, timeout_seconds, kube, echo):
    """Poll until a final phase (the Workflow) or the deadline (None). Transient errors are retried until the
    deadline; problems a pending pod reports (unschedulable, image pull) are printed once as they appear."""
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    failures, told = 0, set()
    while True:
        try:
            wf = svc.get_workflow(name, namespace=namespace)
            failures = 0
        except (HeraException, requests.exceptions.RequestException) as exc:
            if not _transient(exc):
                raise _explain(exc, server, namespace, token_env) from None
            failures += 1
            echo(f"poll failed ({_explain(exc, server, namespace, token_env)}); retrying (attempt {failures})")
        else:
            if wf.status and wf.status.phase in FINAL_PHASES:
                return wf
            if kube is not None:
                for line in _pending_problems(kube, namespace, name, echo):
                    if line not in told:
                        told.add(line)
                        echo(f"waiting: {line}")
        if deadline is not None and time.monotonic() >= deadline:
            return None
        pause = min(poll_seconds * 2 ** min(failures, 5), 300) if failures else poll_seconds
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))


def _pending_problems(kube, namespace, name, echo) -> list[str]:
    from influence_job.cluster.explain import from_pods
    from influence_job.cluster.kube import api_errors

    try:
        return from_pods(kube, namespace, name, events=False)
    except api_errors() as exc:  # pod details are a help, never a reason to stop following
        echo(f"note: cannot read the workflow's pods ({type(exc).__name__}); following the Workflow only")
        return []


def _reasons(wf, kube, namespace, name, echo) -> list[str]:
    from influence_job.cluster.explain import from_pods, from_workflow
    from influence_job.cluster.kube import api_errors

    lines = from_workflow(wf)
    if kube is not None:
        try:
            lines += from_pods(kube, namespace, name)
        except api_errors() as exc:
            echo(f"note: cannot read the workflow's pods and events ({type(exc).__name__}): reasons from Argo only")
    return list(dict.fromkeys(lines)) or ["Argo gave no reason; see `argo -n %s logs %s`" % (namespace, name)]
