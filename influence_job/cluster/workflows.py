"""The Argo objects, built with Hera from ClusterSettings: one source for `hera generate yaml workflows/`,
`influence-job render`, `influence-job submit` and the Helm chart's templates.

WorkflowTemplate ``influence-diagnostic``: entrypoint ``main`` = step ``run`` (one GPU pod, torchrun, a
metrics sidecar; continues on failure so that) step ``publish`` always reads the results, exposes the key
figures as global output parameters and the report as an artifact, and fails the workflow when the
validation failed or no result was written. Entrypoint ``trace`` (trace_workflow.py) runs an influence trace: the
same run template once per training step, fanned out. CronWorkflow ``influence-nightly`` runs ``main`` through a
templateRef on pinned inputs, then optionally ``influence-job compare`` against a stored baseline.
"""

from __future__ import annotations

from hera.workflows import Container, CronWorkflow, Parameter, Step, Steps, Workflow, WorkflowTemplate
from hera.workflows import models as m

from influence_job.cluster.pods import (
    CHECKPOINT_DIR,
    LABELS,
    OUTPUTS_DIR,
    RESULTS_DIR,
    RUN_INPUTS,
    container_security,
    inp,
    pod_security,
    publish_template,
    run_template,
    small_resources,
    volumes,
    writable,
)
from influence_job.cluster.settings import ClusterSettings
from influence_job.cluster.trace_workflow import trace_steps


def _main_steps(run: Container, publish: Container) -> Steps:
    with Steps(name="main", inputs=[Parameter(name=n) for n in RUN_INPUTS]) as steps:
        # Failed (non-zero exit) and Errored (pod deleted, evicted) alike go on to publish, which is told how the
        # run ended: a stale passing results.json from an earlier attempt must not make the workflow pass.
        run(arguments={**{n: inp(n) for n in RUN_INPUTS}, "out": RESULTS_DIR, "checkpoint": CHECKPOINT_DIR},
            continue_on=m.ContinueOn(failed=True, error=True))
        publish(arguments={"image": inp("image"), "run-status": "{{steps.run.status}}",
                           "run-exit-code": "{{steps.run.exitCode}}"})
    return steps


def workflow_options(s: ClusterSettings) -> dict:
    """Workflow-spec fields shared by the WorkflowTemplate and the CronWorkflow; optional ones only when set."""
    options = {"volumes": volumes(s), "security_context": pod_security(s),
               # No token in containers that don't call the API; Argo's executor gets its own (a Secret).
               "automount_service_account_token": s.security.automount_service_account_token,
               "executor": m.ExecutorConfig(service_account_name=s.service_account)}
    if s.priority_class_name:
        options["pod_priority_class_name"] = s.priority_class_name
    if s.semaphore.config_map:
        options["synchronization"] = m.Synchronization(semaphores=[m.SemaphoreRef(
            config_map_key_ref=m.ConfigMapKeySelector(name=s.semaphore.config_map, key=s.semaphore.key))])
    if s.artifact_repository.config_map:
        options["artifact_repository_ref"] = m.ArtifactRepositoryRef(
            config_map=s.artifact_repository.config_map, key=s.artifact_repository.key)
    return options


def run_arguments(s: ClusterSettings, model: str, dataset: str, overrides: str) -> list[Parameter]:
    values = {"image": s.image, "model": model, "dataset": dataset, "overrides": overrides,
              "gpus": str(s.gpus), "gpu-product": s.gpu_product}
    return [Parameter(name=k, value=v) for k, v in values.items()]


def trace_arguments(spec: str, trace_name: str) -> list[Parameter]:
    return [Parameter(name="spec", value=spec), Parameter(name="trace-name", value=trace_name)]


def build_workflow_template(s: ClusterSettings) -> WorkflowTemplate:
    with WorkflowTemplate(
        name=s.name,
        namespace=s.namespace,
        labels=LABELS,
        entrypoint="main",
        service_account_name=s.service_account,
        # The trace entrypoint's arguments too: declared, so that every parameter a template reads exists.
        arguments=run_arguments(s, s.model, s.dataset, s.overrides) + trace_arguments("", "trace"),
        **workflow_options(s),
        active_deadline_seconds=s.workflow_deadline_seconds,
        pod_gc=m.PodGC(strategy=s.pod_gc_strategy),
        ttl_strategy=m.TTLStrategy(seconds_after_success=s.ttl_seconds_after_success,
                                   seconds_after_failure=s.ttl_seconds_after_failure),
        metrics=m.Metrics(prometheus=[
            m.Prometheus(name="influence_job_workflow_result_total",
                         help="Finished influence-job workflows by final status.",
                         labels=[m.MetricLabel(key="status", value="{{workflow.status}}")],
                         counter=m.Counter(value="1")),
            m.Prometheus(name="influence_job_workflow_duration_seconds", help="Duration of the last workflow.",
                         gauge=m.Gauge(realtime=False, value="{{workflow.duration}}")),
        ]),
    ) as wt:
        run = run_template(s)
        _main_steps(run, publish_template(s))
        trace_steps(s, run)
    return wt


def build_cron_workflow(s: ClusterSettings) -> CronWorkflow:
    n = s.nightly
    compare_dir = f"{RESULTS_DIR}.compare"  # the table stays on the results volume beside the run
    compare = Container(
        name="compare",
        image=inp("image"),
        image_pull_policy=s.image_pull_policy,
        command=["influence-job", "compare", inp("baseline"), RESULTS_DIR, "--promote-if-missing",
                 "--outputs", OUTPUTS_DIR, "--outputs", compare_dir, "--instance", n.instance],
        inputs=[Parameter(name="image"), Parameter(name="baseline")],
        **writable(env=[m.EnvVar(name="INFLUENCE_PUSHGATEWAY", value=s.pushgateway)],
                   mounts=[m.VolumeMount(name="results", mount_path="/results")]),  # promotes the first baseline
        security_context=container_security(s),
        resources=small_resources(),
        outputs=m.Outputs(parameters=[
            m.Parameter(name=name, global_name=name, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{name}"))
            for name in ("verdict", "regressions", "comparable")
        ]),
        labels={**LABELS, "app.kubernetes.io/component": "compare"},
    )
    with CronWorkflow(
        name="influence-nightly",
        namespace=s.namespace,
        labels=LABELS,
        schedules=[n.schedule],
        timezone=n.timezone,
        concurrency_policy="Forbid",
        successful_jobs_history_limit=n.successful_jobs_history_limit,
        failed_jobs_history_limit=n.failed_jobs_history_limit,
        starting_deadline_seconds=n.starting_deadline_seconds,
        entrypoint="nightly",
        service_account_name=s.service_account,
        arguments=run_arguments(s, n.model, n.dataset, n.overrides) + [
            Parameter(name="compare", value=str(n.compare).lower()),
            Parameter(name="baseline", value=n.baseline),
        ],
        **workflow_options(s),
        workflow_metadata=m.WorkflowMetadata(labels={**LABELS, "app.kubernetes.io/component": "nightly"}),
    ) as cron:
        with Steps(name="nightly", inputs=[Parameter(name=p) for p in (*RUN_INPUTS, "compare", "baseline")]):
            Step(name="diagnostic", template_ref=m.TemplateRef(name=s.name, template="main"),
                 arguments={p: inp(p) for p in RUN_INPUTS})
            compare(arguments={"image": inp("image"), "baseline": inp("baseline")},
                    when="{{inputs.parameters.compare}} == true")
    return cron


def build_submission(s: ClusterSettings, model: str | None = None, dataset: str | None = None,
                     overrides: str | None = None) -> Workflow:
    """A Workflow that runs the installed WorkflowTemplate with these arguments."""
    return Workflow(
        generate_name=f"{s.name}-",
        namespace=s.namespace,
        labels=LABELS,
        workflow_template_ref=m.WorkflowTemplateRef(name=s.name),
        arguments=run_arguments(s, model or s.model, dataset or s.dataset,
                                s.overrides if overrides is None else overrides),
    )


def build_trace_submission(s: ClusterSettings, spec: str, trace_name: str, overrides: str | None = None) -> Workflow:
    """A Workflow that runs the installed WorkflowTemplate's ``trace`` entrypoint on this specification's text."""
    return Workflow(
        generate_name=f"{s.name}-trace-",
        namespace=s.namespace,
        labels={**LABELS, "app.kubernetes.io/component": "trace"},
        workflow_template_ref=m.WorkflowTemplateRef(name=s.name),
        entrypoint="trace",
        arguments=run_arguments(s, s.model, s.dataset, s.overrides if overrides is None else overrides)
        + trace_arguments(spec, trace_name),
    )


def build_all(s: ClusterSettings) -> dict[str, object]:
    """The objects `influence-job render` writes, by file name."""
    objects = {"workflowtemplate.yaml": build_workflow_template(s)}
    if s.nightly.enabled:
        objects["cronworkflow.yaml"] = build_cron_workflow(s)
    return objects
