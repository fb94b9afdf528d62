"""`influence-job preflight`: what a run needs from the cluster, checked before a GPU pod waits hours for it.

Each check reads the API through the `kubernetes` client and yields one line: ``ok`` with what it found, or
``FAIL`` with what is missing and the fix. The chart's submitter Role (and ClusterRole
influence-job-preflight, for nodes and storage classes) allows exactly these reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from influence_job.base.errors import InputError
from influence_job.cluster.kube import api_errors, explain_api_error
from influence_job.cluster.pods import GPU_RESOURCE
from influence_job.cluster.settings import ClusterSettings

FIX_403 = ("Use the chart's submitter account (Role influence-job-submitter and ClusterRole "
           "influence-job-preflight), or pass --no-preflight to submit without these checks.")


@dataclass
class Check:
    name: str
    ok: bool
    line: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.line}"


def _get(call, action: str):
    """The object, or None when it does not exist; InputError for any other refusal."""
    from kubernetes.client.exceptions import ApiException

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise explain_api_error(exc, action, FIX_403) from None
    except api_errors() as exc:
        raise explain_api_error(exc, action, FIX_403) from None


def check_template(api, s: ClusterSettings, namespace: str) -> Check:
    from kubernetes import client

    found = _get(lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
        "argoproj.io", "v1alpha1", namespace, "workflowtemplates", s.name),
        f"read WorkflowTemplate {s.name} in namespace {namespace}")
    if found is None:
        return Check("template", False, f"WorkflowTemplate {s.name} is not installed in namespace {namespace}; "
                     f"install the chart there: helm install influence-job helm/influence-job -n {namespace}")
    return Check("template", True, f"WorkflowTemplate {s.name} is installed in namespace {namespace}")


def check_claim(api, claim: str, role: str, namespace: str) -> Check:
    from kubernetes import client

    core = client.CoreV1Api(api)
    pvc = _get(lambda: core.read_namespaced_persistent_volume_claim(claim, namespace),
               f"read PersistentVolumeClaim {claim} in namespace {namespace}")
    name = f"{role} volume"
    if pvc is None:
        value = "dataClaim" if role == "data" else "resultsClaim"
        return Check(name, False, f"PersistentVolumeClaim {claim} does not exist in namespace {namespace}; create "
                     f"it (the chart creates the results claim with resultsVolume.create) or set {value}")
    phase = pvc.status.phase if pvc.status else None
    if phase == "Bound":
        return Check(name, True, f"PersistentVolumeClaim {claim} is bound")
    storage_class = pvc.spec.storage_class_name
    if phase == "Pending" and storage_class:
        sc = _get(lambda: client.StorageV1Api(api).read_storage_class(storage_class),
                  f"read StorageClass {storage_class}")
        if sc is not None and sc.volume_binding_mode == "WaitForFirstConsumer":
            return Check(name, True, f"PersistentVolumeClaim {claim} is pending until its first pod (StorageClass "
                         f"{storage_class} binds on first use)")
    return Check(name, False, f"PersistentVolumeClaim {claim} is {phase or 'in no phase'}, not Bound; see why with "
                 f"kubectl -n {namespace} describe pvc {claim}")


def check_token_secret(api, s: ClusterSettings, namespace: str) -> Check:
    from kubernetes import client

    secret = _get(lambda: client.CoreV1Api(api).read_namespaced_secret(s.argo_token_secret, namespace),
                  f"read Secret {s.argo_token_secret} in namespace {namespace}")
    if secret is None:
        return Check("argo token", False, f"Secret {s.argo_token_secret} does not exist in namespace {namespace}; "
                     "install the chart with rbac.submitter=true, or set argoTokenSecret to your token's Secret")
    if not (secret.data or {}).get("token"):
        return Check("argo token", False, f"Secret {s.argo_token_secret} holds no token yet; Kubernetes fills a "
                     "service-account-token Secret within seconds: check that its service account exists")
    return Check("argo token", True, f"Secret {s.argo_token_secret} holds a token")


def check_gpus(api, s: ClusterSettings) -> Check:
    from kubernetes import client

    core = client.CoreV1Api(api)
    want = f"{s.gpu_product_label}={s.gpu_product}"
    nodes = _get(lambda: core.list_node(label_selector=want), f"list nodes with {want}")
    items = nodes.items if nodes is not None else []
    fits = [n.metadata.name for n in items if _gpus(n) >= s.gpus and not n.spec.unschedulable]
    if fits:
        return Check("gpus", True, f"{len(fits)} node(s) have {s.gpus} allocatable {GPU_RESOURCE} of {s.gpu_product} "
                     f"({', '.join(sorted(fits)[:5])})")
    if items:
        seen = ", ".join(f"{n.metadata.name}: {_gpus(n)}{' (cordoned)' if n.spec.unschedulable else ''}"
                         for n in items[:5])
        return Check("gpus", False, f"no schedulable node has {s.gpus} allocatable {GPU_RESOURCE} of {s.gpu_product} "
                     f"({seen}); lower gpus (--set gpus=N) or free a node")
    every = _get(lambda: core.list_node(), "list nodes")
    products = sorted({(n.metadata.labels or {}).get(s.gpu_product_label) for n in (every.items if every else [])}
                      - {None})
    hint = (f"products present: {', '.join(products)}" if products
            else f"no node carries the label {s.gpu_product_label}")
    return Check("gpus", False, f"no node has the label {want} ({hint}); set gpuProduct (--set gpuProduct=...) or "
                 "gpuProductLabel, or check the GPU operator's feature discovery")


def _gpus(node) -> int:
    try:
        return int((node.status.allocatable or {}).get(GPU_RESOURCE, 0))
    except (AttributeError, ValueError):
        return 0


def preflight(api, s: ClusterSettings, namespace: str) -> list[Check]:
    return [
        check_template(api, s, namespace),
        check_claim(api, s.data_claim, "data", namespace),
        check_claim(api, s.results_claim, "results", namespace),
        check_token_secret(api, s, namespace),
        check_gpus(api, s),
    ]


def run_preflight(s: ClusterSettings, namespace: str, api, echo=print) -> None:
    """Print one line per check; InputError naming the failed checks when any failed."""
    checks = preflight(api, s, namespace)
    for check in checks:
        echo(str(check))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise InputError(f"preflight: {len(failed)} check(s) failed ({', '.join(failed)}); fix them as said above "
                         "(or submit with --no-preflight).")
