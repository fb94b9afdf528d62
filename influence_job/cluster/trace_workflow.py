"""The influence trace on the cluster: the WorkflowTemplate's entrypoint ``trace``.

``expand`` reads the trace specification in a pod (where the checkpoints and batches are), names any missing one
and stops there, else lists the steps (``influence-job trace --list``); ``step`` fans the run template out over
them (Argo ``withParam``; at most ``trace_parallelism`` at once), each step a run exactly as ``main`` runs one —
the same retries, resume from its checkpoint, metrics sidecar and pushed summary — writing to
``/results/traces/<trace-name>/steps/<step>``, a failed step not stopping the others; ``gather`` then writes the
trace from the steps' outputs (``influence-job trace --collect``), names the steps without a result, and fails the
workflow when a step failed or failed validation. A resubmitted trace with the same name reuses every step whose
output already holds its result (``run --reuse``).
"""

from __future__ import annotations

from hera.workflows import Container, Parameter, Steps
from hera.workflows import models as m

from influence_job.cluster.pods import (
    LABELS,
    OUTPUTS_DIR,
    RUN_INPUTS,
    TRACE_INPUTS,
    TRACES_DIR,
    container_security,
    inp,
    small_resources,
    writable,
)
from influence_job.cluster.settings import ClusterSettings

SPEC_FILE = "/tmp/spec.yaml"
TRACE_OUTPUTS = {"steps": "trace-steps", "failed": "trace-failed", "failed-steps": "trace-failed-steps"}


def _trace_container(s: ClusterSettings, name: str, mode: str, outputs: dict[str, str | None]) -> Container:
    """A light pod that runs `influence-job trace` on the specification (written from its parameter to a file);
    ``outputs``: its output-parameter files and their global names (None: the workflow's own, not published)."""
    script = (f'set -eu\nprintf "%s\\n" "$SPEC" > {SPEC_FILE}\n'
              f'exec influence-job trace {SPEC_FILE} --output "$TRACE" {mode}\n')
    return Container(
        name=name,
        image=inp("image"),
        image_pull_policy=s.image_pull_policy,
        command=["sh", "-c", script],
        inputs=[Parameter(name="image"), *(Parameter(name=n) for n in TRACE_INPUTS)],
        **writable(env=[m.EnvVar(name="SPEC", value=inp("spec")),
                        m.EnvVar(name="TRACE", value=f"{TRACES_DIR}/{inp('trace-name')}"),
                        m.EnvVar(name="INFLUENCE_PUSHGATEWAY", value=s.pushgateway)],
                   mounts=[m.VolumeMount(name="data", mount_path="/data", read_only=True),
                           m.VolumeMount(name="results", mount_path="/results")]),
        security_context=container_security(s),
        resources=small_resources(),
        outputs=m.Outputs(parameters=[
            m.Parameter(name=file, global_name=global_name, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{file}"))
            for file, global_name in outputs.items()
        ]),
        labels={**LABELS, "app.kubernetes.io/component": f"trace-{name}"},
    )


def trace_steps(s: ClusterSettings, run: Container) -> Steps:
    """The ``trace`` entrypoint, inside the WorkflowTemplate's context, around the ``run`` template."""
    expand = _trace_container(s, "expand", f"--list {OUTPUTS_DIR}", {"steps": None, "count": "trace-steps-total"})
    gather = _trace_container(s, "gather", f"--collect --outputs {OUTPUTS_DIR}", TRACE_OUTPUTS)
    trace_args = {"image": inp("image"), **{n: inp(n) for n in TRACE_INPUTS}}
    with Steps(name="trace", inputs=[Parameter(name=n) for n in (*RUN_INPUTS, *TRACE_INPUTS)],
               parallelism=s.trace_parallelism) as steps:
        expand(arguments=trace_args)
        # Each item is one step: its checkpoint, batch, output and checkpoint directories, and its run's `--set`
        # words (the specification's job section and the step's metrics labels); the submitter's words come last.
        run(name="step", with_param="{{steps.expand.outputs.parameters.steps}}",
            arguments={"image": inp("image"), "gpus": inp("gpus"), "gpu-product": inp("gpu-product"),
                       "model": "{{item.model}}", "dataset": "{{item.dataset}}", "out": "{{item.out}}",
                       "checkpoint": "{{item.checkpoint}}",
                       "overrides": "{{item.overrides}} " + inp("overrides")},
            continue_on=m.ContinueOn(failed=True, error=True))
        gather(arguments=trace_args)
    return steps
