"""The run's verdict as Kubernetes-native status, written by the publish step through the `kubernetes` client.

- ConfigMap ``<workflow>-results``: the summary tables, the verdict, the failed checks and where the results
  are; owned by the Workflow, so Kubernetes deletes it with the Workflow (ttlStrategy, `argo delete`).
- Labels on the Workflow: ``influence-job/validation=passed|failed`` and ``influence-job/rows-emitted``, so that
  ``kubectl get wf -l influence-job/validation=failed`` lists the failed runs; annotations with the failed checks
  and the results path.

The Role that allows exactly this (configmaps create/update, workflows patch) is ``PUBLISHER_RULES``; the chart
renders it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from influence_job.cluster.kube import api_errors, explain_api_error
from influence_job.cluster.pods import LABELS

ARGO_GROUP, ARGO_VERSION = "argoproj.io", "v1alpha1"
VALIDATION_LABEL = "influence-job/validation"
ROWS_LABEL = "influence-job/rows-emitted"
FAILED_CHECKS_ANNOTATION = "influence-job/failed-checks"
RESULTS_ANNOTATION = "influence-job/results"
# A ConfigMap holds at most 1 MiB; the report's tables are a few KiB, this leaves room for the rest.
REPORT_LIMIT = 512 * 1024
# The publisher's Role, exactly what publish_status does: create the ConfigMap (update it when a retried publish
# finds it), and patch the Workflow's labels. resourceNames cannot narrow `create`, so none are given.
PUBLISHER_RULES = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update"]},
    {"apiGroups": [ARGO_GROUP], "resources": ["workflows"], "verbs": ["patch"]},
]


@dataclass
class Verdict:
    """What the publish step concluded, in the plain terms the status carries."""

    passed: bool
    rows_emitted: int | None
    failed_checks: list[str]
    summary: str  # the report's tables (report.md), or why there are none
    figures: dict[str, str]  # the published key figures, by output-parameter name
    results_path: str


def configmap_body(verdict: Verdict, workflow: str, uid: str, namespace: str) -> dict:
    summary = verdict.summary
    if len(summary.encode()) > REPORT_LIMIT:
        summary = summary.encode()[:REPORT_LIMIT].decode(errors="ignore") + \
            f"\n\n[truncated: the whole report is {verdict.results_path}/report.md]\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{workflow}-results",
            "namespace": namespace,
            "labels": {**LABELS, "app.kubernetes.io/component": "results",
                       "workflows.argoproj.io/workflow": workflow, **labels(verdict)},
            "ownerReferences": [{"apiVersion": f"{ARGO_GROUP}/{ARGO_VERSION}", "kind": "Workflow", "name": workflow,
                                 "uid": uid}],
        },
        "data": {
            "validation": "passed" if verdict.passed else "failed",
            "failed-checks": ",".join(verdict.failed_checks),
            "results": verdict.results_path,
            "report.md": summary,
            **verdict.figures,
        },
    }


def labels(verdict: Verdict) -> dict[str, str]:
    out = {VALIDATION_LABEL: "passed" if verdict.passed else "failed"}
    if verdict.rows_emitted is not None:
        out[ROWS_LABEL] = str(verdict.rows_emitted)
    return out


def workflow_patch(verdict: Verdict) -> dict:
    """A JSON merge patch: it sets these labels and annotations and leaves the others alone."""
    return {"metadata": {"labels": labels(verdict), "annotations": {
        FAILED_CHECKS_ANNOTATION: ",".join(verdict.failed_checks), RESULTS_ANNOTATION: verdict.results_path}}}


def publish_status(api, verdict: Verdict, workflow: str, uid: str, namespace: str) -> None:
    """Write the ConfigMap (replacing a retried publish's) and label the Workflow; InputError on a refusal."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = configmap_body(verdict, workflow, uid, namespace)
    name = body["metadata"]["name"]
    fix = ("The publish step's service account needs the chart's Role <publisherServiceAccount>-status "
           "(configmaps create/update, workflows patch).")
    core = client.CoreV1Api(api)
    try:
        try:
            core.create_namespaced_config_map(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_config_map(name, namespace, body)  # a retried publish: same name, new verdict
    except api_errors() as exc:
        raise explain_api_error(exc, f"write ConfigMap {name} in namespace {namespace}", fix) from None
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, "workflows", workflow, workflow_patch(verdict))
    except api_errors() as exc:
        raise explain_api_error(exc, f"label Workflow {workflow} in namespace {namespace}", fix) from None
