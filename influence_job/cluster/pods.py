"""The pods of the cluster job, as Hera templates and Kubernetes fields: the run container (torchrun, its metrics
sidecar, retries, the GPU count as a pod-spec patch), the publish container, and what every pod shares (security
contexts, the writable /tmp, volumes, Argo's template metrics). The workflows (workflows.py) arrange them."""

from __future__ import annotations

import json

from hera.workflows import Container, Parameter, UserContainer
from hera.workflows import models as m

from influence_job.base.exit_codes import TRANSIENT
from influence_job.cluster.settings import ClusterSettings
from influence_job.outputs.headline import PUBLISHED

LABELS = {"app.kubernetes.io/name": "influence-job", "app.kubernetes.io/part-of": "influence-job"}
RESULTS_DIR = "/results/{{workflow.name}}"
# Keyed by the workflow, not the pod: a retried pod of the same workflow finds it and resumes.
CHECKPOINT_DIR = "/results/{{workflow.name}}.ckpt"
OUTPUTS_DIR = "/tmp/outputs"
METRICS_DIR = "/metrics"
CONFIG_FILE = "/etc/influence-job/config.yaml"
# Written by publish itself, not looked up in results.json: the names of the failed checks, comma-separated.
FAILED_CHECKS = "failed-checks"
# When Argo retries the run step (retryPolicy Always + this expression; a retry resumes from the checkpoint):
# - an Error (the pod was deleted: API eviction, preemption, drain, node loss) — always transient;
# - a Failure with no exit code (Argo passes "-1"): the container never ran or never reported, so the job itself
#   decided nothing — the node rejected the pod at admission ("Pod was rejected: ...", e.g. the GPU device plugin
#   not ready yet) or it failed before start with no message at all; the retry limit bounds the attempts;
# - a Failure with a transient exit code (exit_codes.TRANSIENT: 137 SIGKILL, the OOM killer, a kubelet kill; 143
#   SIGTERM before the pod was gone; 3 a torchrun rank died or timed out: NCCL errors and lost GPUs are usually
#   transient), or whose message says
#   the kubelet evicted it, the node went away or rejected the pod;
# - never exit 1 (validation failed), 2 (bad input) or 4 (a bug): those are deterministic.
# Argo passes lastRetry.exitCode as a string.
_RETRIED_CODES = ", ".join(f'"{c}"' for c in ("-1", *map(int, TRANSIENT)))  # as strings, as Argo passes them
RETRY_EXPRESSION = (
    f'lastRetry.status == "Error" || (lastRetry.status == "Failed" && (lastRetry.exitCode in [{_RETRIED_CODES}] '
    '|| lastRetry.message matches "(?i)(evict|low on resource|preempt|node .*(lost|shutdown)|rejected)"))'
)
RUN_INPUTS = ("image", "model", "dataset", "overrides", "gpus", "gpu-product")
# The run template's own inputs besides the workflow's: where it writes (main: the workflow's directory; a trace:
# each step's own, under the trace's directory).
RUN_PLACES = ("out", "checkpoint")
TRACE_INPUTS = ("spec", "trace-name")  # the trace entrypoint's arguments besides RUN_INPUTS (empty for main)
TRACES_DIR = "/results/traces"
GPU_RESOURCE = "nvidia.com/gpu"

RUN_SCRIPT = f"""set -eu
config=""
if [ -f {CONFIG_FILE} ]; then config="--config {CONFIG_FILE}"; fi
# $config and $OVERRIDES are split into words on purpose: OVERRIDES holds `--set KEY=VALUE` words.
# torchrun runs as a child so that this shell can (1) pass SIGTERM on (eviction) and report it as exit 143,
# which the retry expression retries, and (2) after a normal end, keep the pod up one metrics scrape
# interval so that Prometheus scrapes the sidecar's final values before Argo stops the sidecar with it.
stopped="" pid=""
trap 'stopped=1; [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true' TERM INT
torchrun --nproc-per-node "$GPUS" --no-python influence-job run --reuse $config \\
  --set model.builtin=null --set "model.path=$MODEL" --set "data.path=$DATASET" --output "$OUT" \\
  --set "output.checkpoint_dir=$CHECKPOINT" $OVERRIDES &
pid=$!
status=0
while :; do
  if wait "$pid"; then status=0; else status=$?; fi
  kill -0 "$pid" 2>/dev/null || break  # still running: a trapped signal interrupted the wait
done
if [ -n "$stopped" ]; then exit 143; fi
sleep "$METRICS_LINGER_SECONDS"
exit "$status"
"""


def inp(name: str) -> str:
    return "{{inputs.parameters.%s}}" % name


# With a read-only root file system, /tmp is the one writable place: HOME and the caches live under it.
WRITABLE_ENV = {"HOME": "/tmp/home", "XDG_CACHE_HOME": "/tmp/cache", "HF_HOME": "/tmp/cache/huggingface",
                "TRITON_CACHE_DIR": "/tmp/cache/triton", "TORCHINDUCTOR_CACHE_DIR": "/tmp/cache/inductor",
                "MPLCONFIGDIR": "/tmp/cache/matplotlib"}


def pod_security(s: ClusterSettings) -> m.PodSecurityContext:
    """The pods' security context (built unvalidated: the chart generator passes sentinels for its values)."""
    sec = s.security
    return m.PodSecurityContext.model_construct(
        run_as_non_root=sec.run_as_non_root, run_as_user=sec.run_as_user, run_as_group=sec.run_as_group,
        fs_group=sec.fs_group, fs_group_change_policy=sec.fs_group_change_policy,
        seccomp_profile=m.SeccompProfile.model_construct(type=sec.seccomp_profile),
    )


def container_security(s: ClusterSettings) -> m.SecurityContext:
    sec = s.security
    return m.SecurityContext.model_construct(
        allow_privilege_escalation=sec.allow_privilege_escalation,
        read_only_root_filesystem=sec.read_only_root_filesystem,
        capabilities=m.Capabilities(drop=["ALL"]),
    )


def writable(env: list[m.EnvVar] | None = None, mounts: list[m.VolumeMount] | None = None) -> dict:
    """Container keywords that give it the writable /tmp (env HOME and caches under it)."""
    return {
        "env": [*(env or []), *(m.EnvVar(name=k, value=v) for k, v in WRITABLE_ENV.items())],
        "volume_mounts": [*(mounts or []), m.VolumeMount(name="tmp", mount_path="/tmp")],
    }


def volumes(s: ClusterSettings) -> list[m.Volume]:
    return [
        m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource()),
        m.Volume(name="dshm", empty_dir=m.EmptyDirVolumeSource(medium="Memory", size_limit=s.shm_size)),
        m.Volume(name="data", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
            claim_name=s.data_claim, read_only=True)),
        m.Volume(name="results", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
            claim_name=s.results_claim)),
        m.Volume(name="metrics", empty_dir=m.EmptyDirVolumeSource()),
        m.Volume(name="config", config_map=m.ConfigMapVolumeSource(name=s.config_map, optional=True)),
    ]


def argo_metrics(prefix: str, extra: list[m.Prometheus] = ()) -> m.Metrics:
    return m.Metrics(prometheus=[
        m.Prometheus(name=f"influence_job_{prefix}_duration_seconds", help=f"Duration of the {prefix} step.",
                     gauge=m.Gauge(realtime=True, value="{{duration}}")),
        m.Prometheus(name=f"influence_job_{prefix}_result_total", help=f"Finished {prefix} steps by status.",
                     labels=[m.MetricLabel(key="status", value="{{status}}")],
                     counter=m.Counter(value="1")),
        *extra,
    ])


def small_resources() -> m.ResourceRequirements:
    """Requests of the light containers (sidecar, publish, compare)."""
    return m.ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"})


def gpu_patch() -> str:
    """The run pod's GPU count as a podSpecPatch (Argo's documented way to parameterise a field that is not a
    string). A resource quantity in the container itself cannot hold ``{{inputs.parameters.gpus}}``: Argo decodes
    a template into Kubernetes' types before it substitutes parameters, and a quantity must parse then. The patch
    is a string; Argo substitutes the parameter into it and merges it into the pod's ``main`` container (Argo's
    name for a template's container), so requests, limits and torchrun's ``--nproc-per-node`` read one value."""
    gpus = {GPU_RESOURCE: inp("gpus")}
    return json.dumps({"containers": [{"name": "main", "resources": {"requests": gpus, "limits": gpus}}]})


def run_template(s: ClusterSettings) -> Container:
    port = s.metrics_port
    sidecar = UserContainer(
        name="metrics",
        image=inp("image"),
        image_pull_policy=s.image_pull_policy,
        command=["influence-job", "exporter", "--dir", METRICS_DIR, "--port", str(port)],
        ports=[m.ContainerPort(container_port=port, name="metrics")],
        # The sidecar requests no GPU and must see none (CUDA images set NVIDIA_VISIBLE_DEVICES=all, which would
        # show it every GPU of the node): the ranks report their own GPUs' memory through the metrics directory.
        **writable(env=[m.EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="void")],
                   mounts=[m.VolumeMount(name="metrics", mount_path=METRICS_DIR)]),
        resources=small_resources(),
        security_context=container_security(s),
    )
    return Container(
        name="run",
        image=inp("image"),
        image_pull_policy=s.image_pull_policy,
        command=["sh", "-c", RUN_SCRIPT],
        inputs=[Parameter(name=n) for n in (*RUN_INPUTS, *RUN_PLACES)],
        **writable(env=[
            m.EnvVar(name="MODEL", value=inp("model")),
            m.EnvVar(name="DATASET", value=inp("dataset")),
            m.EnvVar(name="OVERRIDES", value=inp("overrides")),
            m.EnvVar(name="GPUS", value=inp("gpus")),
            m.EnvVar(name="OUT", value=inp("out")),
            m.EnvVar(name="CHECKPOINT", value=inp("checkpoint")),
            m.EnvVar(name="PROMETHEUS_MULTIPROC_DIR", value=METRICS_DIR),
            m.EnvVar(name="INFLUENCE_PUSHGATEWAY", value=s.pushgateway),
            m.EnvVar(name="NCCL_DEBUG", value=s.nccl_debug),
            m.EnvVar(name="TORCH_NCCL_ASYNC_ERROR_HANDLING", value="1"),  # a failed collective ends the ranks
            m.EnvVar(name="OMP_NUM_THREADS", value=str(s.omp_num_threads)),
            m.EnvVar(name="METRICS_LINGER_SECONDS", value=str(s.metrics_linger_seconds)),
        ], mounts=[
            m.VolumeMount(name="dshm", mount_path="/dev/shm"),
            m.VolumeMount(name="data", mount_path="/data", read_only=True),
            m.VolumeMount(name="results", mount_path="/results"),
            m.VolumeMount(name="metrics", mount_path=METRICS_DIR),
            m.VolumeMount(name="config", mount_path="/etc/influence-job", read_only=True),
        ]),
        security_context=container_security(s),
        resources=m.ResourceRequirements(requests={"cpu": s.cpu, "memory": s.memory}, limits={"memory": s.memory}),
        pod_spec_patch=gpu_patch(),
        node_selector={s.gpu_product_label: inp("gpu-product")},
        tolerations=[m.Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")],
        retry_strategy=m.RetryStrategy(
            limit=s.retry_limit, retry_policy="Always", expression=RETRY_EXPRESSION,
            backoff=m.Backoff(duration=s.retry_backoff, factor=2, max_duration=s.retry_backoff_max),
        ),
        active_deadline_seconds=s.active_deadline_seconds,
        sidecars=[sidecar],
        labels={**LABELS, "app.kubernetes.io/component": "run"},
        metrics=argo_metrics("run"),
    )


def publish_template(s: ClusterSettings) -> Container:
    rows = m.Prometheus(
        name="influence_job_rows_emitted", help="Token-influence rows the last run emitted.",
        gauge=m.Gauge(realtime=False, value="{{outputs.parameters.rows-emitted}}"),
        when="{{status}} == Succeeded",
    )
    return Container(
        name="publish",
        image=inp("image"),
        image_pull_policy=s.image_pull_policy,
        command=["influence-job", "publish", "--results", RESULTS_DIR, "--out", OUTPUTS_DIR,
                 "--run-status", inp("run-status"), "--run-exit-code", inp("run-exit-code"),
                 "--workflow", "{{workflow.name}}", "--workflow-uid", "{{workflow.uid}}",
                 "--namespace", "{{workflow.namespace}}", "--results-claim", s.results_claim],
        inputs=[Parameter(name="image"), Parameter(name="run-status"), Parameter(name="run-exit-code")],
        **writable(mounts=[m.VolumeMount(name="results", mount_path="/results", read_only=True)]),
        security_context=container_security(s),
        resources=small_resources(),
        # The one step that calls the API (the status: cluster.status), as the account allowed exactly that.
        service_account_name=s.publisher_service_account,
        automount_service_account_token=True,
        outputs=m.Outputs(
            parameters=[
                m.Parameter(name=name, global_name=name, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{name}"))
                for name in (*PUBLISHED, FAILED_CHECKS)
            ],
            artifacts=[m.Artifact(name="report", path=f"{OUTPUTS_DIR}/report.md", archive=m.ArchiveStrategy(none={})),
                       m.Artifact(name="report-html", path=f"{OUTPUTS_DIR}/report.html",
                                  archive=m.ArchiveStrategy(none={}))]
            if s.artifact_repository.config_map else None,
        ),
        labels={**LABELS, "app.kubernetes.io/component": "publish"},
        metrics=argo_metrics("publish", [rows]),
    )
