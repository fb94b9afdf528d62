"""Why a workflow's pod failed or waits, in words: read from Argo's node status and, with Kubernetes
credentials, from the pods' own status and their Warning events (OOMKilled, Unschedulable, ImagePullBackOff,
evictions), each with what to do about it."""

from __future__ import annotations

from influence_job.base.exit_codes import TRANSIENT, ExitCode

# What the run step's exit code means (influence_job/base/exit_codes.py), and whether the cluster retries it.
EXIT_MEANINGS = {int(c): c.meaning + ("; retried" if c in TRANSIENT else "")
                 for c in ExitCode if c not in (ExitCode.OK, ExitCode.NOT_COMPARABLE, ExitCode.TIMED_OUT)}
WAITING = {
    "ImagePullBackOff": "the image cannot be pulled: check the image (--set image=REPO:TAG) and the pull secret",
    "ErrImagePull": "the image cannot be pulled: check the image (--set image=REPO:TAG) and the pull secret",
    "InvalidImageName": "the image name is invalid: check --set image=REPO:TAG",
    "CreateContainerConfigError": "the container's configuration refers to something missing (a ConfigMap, Secret "
                                  "or key): see the event below",
    "CrashLoopBackOff": "the container keeps failing at start: see its log",
}
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
NODE_ANNOTATION = "workflows.argoproj.io/node-name"


def from_workflow(wf) -> list[str]:
    """One line per failed or errored pod step in the Workflow's status (always available through Argo)."""
    nodes = (wf.status.nodes or {}) if wf.status else {}
    lines = []
    for node in nodes.values():
        if node.type != "Pod" or node.phase not in ("Failed", "Error"):
            continue
        code = node.outputs.exit_code if node.outputs else None
        meaning = f" ({EXIT_MEANINGS[int(code)]})" if code and code.isdigit() and int(code) in EXIT_MEANINGS else ""
        lines.append(f"step {node.display_name}: {node.phase}" + (f", exit code {code}{meaning}" if code else "")
                     + (f": {node.message}" if node.message else ""))
    return lines


def pod_problems(pod) -> list[str]:
    """What is wrong with one pod, from its status alone."""
    status, out = pod.status, []
    if status is None:
        return out
    if status.reason == "Evicted":
        out.append(f"evicted by the kubelet: {status.message or 'node pressure'} (the run step retries it)")
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            out.append(f"unschedulable: {cond.message}; check gpus and gpuProduct with `influence-job preflight`, or "
                       "wait for capacity")
    limits = {c.name: (c.resources.limits if c.resources else None) or {} for c in pod.spec.containers} \
        if pod.spec else {}
    for cs in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason in WAITING:
            out.append(f"container {cs.name}: {waiting.reason}: {WAITING[waiting.reason]}"
                       + (f" ({waiting.message})" if waiting.message else ""))
        for term in (cs.state.terminated if cs.state else None, cs.last_state.terminated if cs.last_state else None):
            if term is None:
                continue
            if term.reason == "OOMKilled":
                limit = limits.get(cs.name, {}).get("memory", "its limit")
                out.append(f"container {cs.name}: OOMKilled (exit {term.exit_code}): it used more than the memory "
                           f"limit {limit}; raise memory (--set memory=...) or lower compute.micro_batch")
            elif term.exit_code and cs.name == "main":  # Argo's name for the step's container; sidecars are killed
                meaning = EXIT_MEANINGS.get(term.exit_code, term.reason or "")
                out.append(f"container {cs.name}: exit code {term.exit_code}" + (f" ({meaning})" if meaning else ""))
            break  # the current state if terminated, else the last one
    return list(dict.fromkeys(out))


def from_pods(api, namespace: str, workflow: str, events: bool = True) -> list[str]:
    """One line per problem of the workflow's pods, then their Warning events (most recent three per pod)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    lines = []
    for pod in core.list_namespaced_pod(namespace, label_selector=f"{WORKFLOW_LABEL}={workflow}").items:
        step = (pod.metadata.annotations or {}).get(NODE_ANNOTATION, pod.metadata.name)
        lines += [f"pod {pod.metadata.name} ({step}): {p}" for p in pod_problems(pod)]
        if events:
            found = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
            warnings = [e for e in found.items if e.type == "Warning"]
            warnings.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
            lines += [f"pod {pod.metadata.name} event {e.reason}: {e.message}" for e in warnings[-3:]]
    return lines
