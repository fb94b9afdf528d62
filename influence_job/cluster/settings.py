"""Settings of the cluster job: one pydantic model behind the Hera definitions, the CLI and the Helm chart.

Field names are snake_case in Python and camelCase in Helm values (the chart's values.yaml keys are
exactly these aliases), so a values file converts to settings with ``ClusterSettings.from_values``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from influence_job import __version__

# Kubernetes quantities such as 64Gi, 500m, 32 (a pragmatic subset of the apimachinery grammar).
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"
DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CRON = r"^[0-9*/,\-A-Za-z?LW#]+( [0-9*/,\-A-Za-z?LW#]+){4}$"


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class NightlySettings(SettingsModel):
    enabled: bool = Field(True, description="Install the nightly CronWorkflow.")
    schedule: str = Field("0 2 * * *", pattern=CRON, description="Cron schedule (five fields) of the nightly run.")
    timezone: str = Field("UTC", description="Time zone of the schedule (IANA name).")
    model: str = Field("/data/models/qwen2.5-1.5b", description="Pinned model directory on the data volume.")
    dataset: str = Field("/data/datasets/nightly.jsonl", description="Pinned data set on the data volume.")
    overrides: str = Field("--set metrics.instance=influence-nightly",
                           description="Extra `--set KEY=VALUE` words for the nightly run (its Pushgateway group).")
    compare: bool = Field(
        True, description="Compare each nightly run with the baseline (`influence-job compare`) and fail the "
        "workflow on a regression; the first night (no baseline yet) promotes its run and passes."
    )
    baseline: str = Field(
        "/results/baseline", description="Baseline output directory on the results volume the nightly run "
        "compares to (promote another with `influence-job baseline promote RUN --to` this path)."
    )
    instance: str = Field(
        "influence-nightly", min_length=1,
        description="Pushgateway 'instance' of the nightly's verdict (keep it equal to the metrics.instance in "
        "overrides: the dashboard's nightly row and the alerts filter on it)."
    )
    successful_jobs_history_limit: int = Field(3, ge=0, description="Successful nightly workflows kept.")
    failed_jobs_history_limit: int = Field(5, ge=0, description="Failed nightly workflows kept.")
    starting_deadline_seconds: int = Field(3600, ge=0, description="How late a missed schedule may still start.")


class SemaphoreSettings(SettingsModel):
    """An Argo semaphore shared by every workflow of this template and the nightly (off by default): its limit, a
    number in a ConfigMap, is how many may hold the GPU pool at once, so nightly and ad-hoc runs queue."""

    config_map: str = Field("", description="ConfigMap holding the semaphore's limit; empty: no semaphore.")
    key: str = Field("influence-job", min_length=1, description="Key of the limit in that ConfigMap.")


class ArtifactRepositorySettings(SettingsModel):
    """Argo artifacts are opt-in: without a repository the publish step saves none (the report stays on the
    results volume and in the step's log), so a cluster without a default artifact repository still works."""

    config_map: str = Field("", description="ConfigMap of the artifact repository (artifactRepositoryRef); "
                            "empty: no artifacts.")
    key: str = Field("default-v1", min_length=1, description="Key of the repository in that ConfigMap.")


class SecuritySettings(SettingsModel):
    """Pod and container security of every step. The image runs as UID 10001; fsGroup makes a fresh results
    volume writable by it (the kubelet changes the volume's group on first mount)."""

    run_as_user: int = Field(10001, ge=1, description="runAsUser of every container (the image's user).")
    run_as_group: int = Field(10001, ge=1, description="runAsGroup of every container.")
    fs_group: int = Field(10001, ge=0, description="fsGroup: volumes are made writable by this group.")
    fs_group_change_policy: str = Field(
        "OnRootMismatch", pattern="^(OnRootMismatch|Always)$",
        description="fsGroupChangePolicy: OnRootMismatch changes ownership only when the volume's root does not "
        "match (fast on large volumes).")
    run_as_non_root: bool = Field(True, description="runAsNonRoot: refuse to start a container as root.")
    seccomp_profile: str = Field("RuntimeDefault", pattern="^(RuntimeDefault|Unconfined)$",
                                 description="seccompProfile type of the pods.")
    allow_privilege_escalation: bool = Field(False, description="allowPrivilegeEscalation of every container.")
    read_only_root_filesystem: bool = Field(
        True, description="readOnlyRootFilesystem of every container; /tmp (with HOME and the caches under it) is "
        "a writable emptyDir.")
    automount_service_account_token: bool = Field(
        False, description="Mount a service-account token into the pods' containers. Off: only the publish step, "
        "which writes the status, gets one (as publisherServiceAccount); Argo's executor uses serviceAccount's "
        "token Secret (executor.serviceAccountName).")


class ClusterSettings(SettingsModel):
    name: str = Field("influence-diagnostic", pattern=DNS_NAME, description="WorkflowTemplate name.")
    namespace: str | None = Field(None, description="Namespace of the Argo objects (the chart sets its own).")
    image: str = Field(
        f"ghcr.io/influence-job/influence-job:{__version__}", min_length=1, description="Job image (repo:tag)."
    )
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$",
                                   description="Image pull policy of every container.")
    service_account: str = Field(
        "influence-job", pattern=DNS_NAME,
        description="Service account of the pods and of Argo's executor (it reports task results; its token comes "
        "from the Secret <serviceAccount>.service-account-token, which the chart creates).")
    publisher_service_account: str = Field(
        "influence-job-publisher", pattern=DNS_NAME,
        description="Service account of the publish step, which writes the ConfigMap <workflow>-results and the "
        "Workflow's influence-job/* labels (the chart's Role <publisherServiceAccount>-status allows exactly that).")
    argo_token_secret: str = Field(
        "influence-job-submitter.service-account-token", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret holding the token `influence-job submit` uses (the chart creates it for the submitter "
        "service account); `influence-job preflight` checks that it exists.")
    gpus: int = Field(8, ge=1, le=64, description="GPUs of the run pod; torchrun starts one process per GPU.")
    gpu_product: str = Field("NVIDIA-H200", min_length=1, description="Required GPU product (node selector value).")
    gpu_product_label: str = Field("nvidia.com/gpu.product", description="Node label that names the GPU product.")
    cpu: str = Field("32", pattern=QUANTITY, description="CPU request of the run pod.")
    memory: str = Field("256Gi", pattern=QUANTITY, description="Memory request and limit of the run pod.")
    shm_size: str = Field("64Gi", pattern=QUANTITY, description="Size of the memory-backed /dev/shm.")
    data_claim: str = Field("influence-data", pattern=DNS_NAME,
                            description="PVC with models and data sets, mounted read-only at /data.")
    results_claim: str = Field("influence-results", pattern=DNS_NAME,
                               description="PVC the results are written to, mounted at /results.")
    config_map: str = Field("influence-job-config", pattern=DNS_NAME,
                            description="ConfigMap with the job's config.yaml (optional: built-in defaults).")
    model: str = Field("/data/models/qwen2.5-1.5b", description="Default model directory (a run parameter).")
    dataset: str = Field("/data/datasets/rollouts.jsonl", description="Default data set (a run parameter).")
    overrides: str = Field("", description="Default extra `--set KEY=VALUE` words (a run parameter).")
    active_deadline_seconds: int = Field(14400, ge=60, description="Deadline of the run step.")
    retry_limit: int = Field(
        2, ge=0, le=10,
        description="Retries of the run step after a transient interruption (eviction, preemption, node loss, "
        "SIGKILL/OOM, SIGTERM, a rank failure); never after exit 1 (validation), 2 (input) or 4 (a bug). "
        "A retry resumes from the checkpoint.")
    retry_backoff: str = Field("1m", pattern=r"^[0-9]+(s|m|h)$", description="Wait before the first retry.")
    retry_backoff_max: str = Field("30m", pattern=r"^[0-9]+(s|m|h)$",
                                   description="Longest wait between retries (the wait doubles each time).")
    trace_parallelism: int = Field(
        4, ge=1, le=256,
        description="Steps of an influence trace (`submit --trace`) that run at once, each a run pod with `gpus` "
        "GPUs: a trace does not take the whole pool.")
    workflow_deadline_seconds: int = Field(
        43200, ge=60, description="activeDeadlineSeconds of the whole workflow (retries and publish included).")
    pod_gc_strategy: str = Field(
        "OnPodSuccess", pattern="^(OnPodCompletion|OnPodSuccess|OnWorkflowCompletion|OnWorkflowSuccess)$",
        description="podGC strategy: when finished pods are deleted (failed ones stay for their logs by default).")
    ttl_seconds_after_success: int = Field(
        604800, ge=0, description="ttlStrategy: seconds a succeeded workflow is kept (default 7 days).")
    ttl_seconds_after_failure: int = Field(
        1209600, ge=0, description="ttlStrategy: seconds a failed workflow is kept (default 14 days).")
    nccl_debug: str = Field("WARN", pattern="^(VERSION|WARN|INFO|TRACE)$", description="NCCL_DEBUG of the run pod.")
    omp_num_threads: int = Field(
        4, ge=1, le=256,
        description="OMP_NUM_THREADS of each rank (torchrun's default of 1 starves CPU-side work; cpu / gpus is "
        "a good value).")
    metrics_linger_seconds: int = Field(
        30, ge=0, le=600,
        description="After the run ends, the pod stays up this long (≥ one scrape interval of your PodMonitor) so "
        "that Prometheus scrapes the sidecar's final values; Argo stops the sidecar when the run container exits.")
    metrics_port: int = Field(9400, ge=1024, le=65535, description="Port of the metrics sidecar's /metrics.")
    pushgateway: str = Field("", description="Pushgateway URL for final run metrics; empty: no push.")
    priority_class_name: str = Field(
        "", description="podPriorityClassName of the workflow's pods (a PriorityClass of your cluster); empty: none.")
    semaphore: SemaphoreSettings = Field(default_factory=SemaphoreSettings)
    artifact_repository: ArtifactRepositorySettings = Field(default_factory=ArtifactRepositorySettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    nightly: NightlySettings = Field(default_factory=NightlySettings)



def load_settings(values_file=None, overrides: list[str] | None = None) -> ClusterSettings:
    """Settings from a Helm-style values file (camelCase keys; chart-only keys ignored) and --set overrides."""
    from influence_job.inputs.config_files import read_yaml_mapping, validate_with_overrides

    data = {} if values_file is None else read_yaml_mapping(values_file, "values file")
    keys = {f.alias or n for n, f in ClusterSettings.model_fields.items()} | set(ClusterSettings.model_fields)
    data = {k: v for k, v in data.items() if k in keys}
    return validate_with_overrides(ClusterSettings, data, overrides, str(values_file or "defaults"), docs=VALUES_DOCS,
                                   what="cluster values")


VALUES_DOCS = ("the cluster values: `influence-job render --explain` lists them, and the chart's "
               "helm/influence-job/values.yaml documents each")
