"""Submitting a run to an Argo server through Hera's WorkflowsService, with clear errors."""

from __future__ import annotations

import os
import time

import requests
from hera.exceptions import HeraException
from hera.workflows import WorkflowsService
from hera.workflows.models import WorkflowCreateRequest

from influence_job.errors import InputError

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


def submit(workflow, server: str, namespace: str, token_env: str | None = None, insecure: bool = False,
           wait: bool = False, poll_seconds: float = 10.0, echo=print) -> int:
    svc = service(server, namespace, token_env, insecure)
    try:
        created = svc.create_workflow(WorkflowCreateRequest(workflow=workflow.build()), namespace=namespace)
        name = created.metadata.name
        echo(f"submitted workflow {name} in namespace {namespace}")
        if not wait:
            return 0
        while True:
            wf = svc.get_workflow(name, namespace=namespace)
            phase = wf.status.phase if wf.status else None
            if phase in FINAL_PHASES:
                break
            time.sleep(poll_seconds)
    except (HeraException, requests.exceptions.RequestException) as exc:
        raise _explain(exc, server, namespace, token_env) from None
    echo(f"workflow {name} finished: {phase}" + (f" ({wf.status.message})" if wf.status.message else ""))
    outputs = wf.status.outputs.parameters if wf.status.outputs and wf.status.outputs.parameters else []
    if outputs:
        width = max(len(p.name) for p in outputs)
        for p in outputs:
            echo(f"  {p.name:<{width}}  {p.value}")
    return 0 if phase == "Succeeded" else 1
