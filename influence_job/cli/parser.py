"""The command line's arguments: one parser, its commands grouped by what they are for."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from influence_job.base.exit_codes import help_text


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration (default: the built-in tiny-model run)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one field, e.g. --set curvature.source=response (repeatable; values are YAML)",
    )
    p.add_argument("--output", type=Path, help="output directory (same as --set output.dir=DIR)")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--values", type=Path, help="Helm-style values file (camelCase keys, as the chart's values.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one cluster setting, e.g. --set gpus=4 --set nightly.schedule='0 3 * * *'")


def _kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file for the Kubernetes API (default: in a pod its service "
                   "account, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="influence-job",
        description="Gradient-similarity (RAW) and curvature-weighted (HINV) diagnostics between sampled\n"
        "responses of an RL-trained language model, with token influence rows.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_run_commands, _cluster_commands, _review_commands, _service_commands):
        add(sub)
    return parser


def _run_commands(sub) -> None:
    """The commands that compute: run, plan, trace, config."""
    run = sub.add_parser("run", help="run the diagnostic and write the output directory")
    _config_args(run)
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    run.add_argument("--fresh", action="store_true",
                     help="ignore (and remove) this run's checkpoint instead of resuming from it")
    run.add_argument("--reuse", action="store_true",
                     help="do nothing when the output directory already holds this configuration's result (the same "
                     "fingerprint: settings, data, model files, version); the cluster's runs pass it, so a retried "
                     "or resubmitted step that finished is not computed again")
    run.add_argument("--keep-checkpoint", action="store_true",
                     help="keep the checkpoint directory after success (same as output.keep_checkpoint)")
    plan = sub.add_parser("plan", help="estimate a run's flops, memory and time per phase and rank, the route of "
                          "each module, and warn when it will not fit (reads the model's config and the data, "
                          "loads no weights)")
    _config_args(plan)
    plan.add_argument("--device", choices=["cpu", "h200", "h100"],
                      help="device profile: h200/h100 (rates from the original system's H200 measurements, "
                      "bench/RESULTS.md), or cpu (this machine's rates, measured now); default: h200 if "
                      "compute.device is cuda, else cpu")
    plan.add_argument("--ranks", type=int, default=None,
                      help="ranks (GPUs) the run uses; default: $WORLD_SIZE, else 1")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    trace = sub.add_parser(
        "trace", help="run the diagnostic over training steps (a checkpoint and a batch each) and write the trend",
        description="Run every step of a trace specification as an ordinary run (DIR/steps/<step>), reusing steps "
        "whose outputs already hold a result with the same fingerprint, then write DIR/trace/ (trace.json, "
        "trace.parquet, trace.html). With --gather, build the trace from existing run outputs instead. Exit 0 when "
        "every step has a result that passed validation, 1 when a step failed or failed validation (the trace names "
        "it), 2 bad input. The specification's format: docs/usage.md (Tracing a training run).")
    trace.add_argument("spec", type=Path, nargs="?", help="the trace specification (YAML)")
    trace.add_argument("--output", type=Path, required=True, help="the trace's directory")
    trace.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field of the steps' shared job configuration (repeatable)")
    trace.add_argument("--gather", type=Path, nargs="+", metavar="RUN_OUTPUT",
                       help="build the trace from these run output directories (step numbers from the digits their "
                       "names end with, else their order) instead of running a specification")
    trace.add_argument("--fresh", action="store_true", help="recompute every step, even one whose output matches")
    trace.add_argument("--list", type=Path, metavar="DIR",
                       help="only expand and check the steps: write DIR/steps (a JSON list, the cluster's fan-out "
                       "items) and DIR/count, run nothing")
    trace.add_argument("--collect", action="store_true",
                       help="run nothing: write the trace from the steps' outputs under --output (the cluster's "
                       "gather step, after each step ran in its own pod); a step without a result is named")
    trace.add_argument("--outputs", type=Path, metavar="DIR",
                       help="also write the verdict as Argo output-parameter files: steps, failed, failed-steps")
    trace.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    cfg = sub.add_parser("config", help="print the resolved configuration as YAML")
    _config_args(cfg)
    cfg.add_argument("--explain", action="store_true", help="list every field with its default and meaning")


def _cluster_commands(sub) -> None:
    """The cluster commands: render, submit, preflight."""
    render = sub.add_parser("render", help="write the Argo WorkflowTemplate and CronWorkflow as YAML")
    _cluster_args(render)
    render.add_argument("--out", default="rendered", help="output directory, or - for stdout (default: rendered)")
    render.add_argument("--explain", action="store_true",
                        help="list every cluster value (values-file name), its default and meaning")

    submit = sub.add_parser(
        "submit", help="start a run of the installed WorkflowTemplate on an Argo server",
        description="Check the cluster (as `influence-job preflight`, unless --no-preflight), then create a Workflow "
        "from the installed WorkflowTemplate through the Argo server. With --wait, follow it to its end and explain "
        "a failure. Exit codes: 0 submitted (or, with --wait, Succeeded), 1 the workflow failed, 2 bad input or a "
        "refused request, 124 --timeout ran out.")
    _cluster_args(submit)
    submit.add_argument("--argo-server", required=True, metavar="URL", help="e.g. https://argo.example:2746")
    submit.add_argument("--namespace", default="argo",
                        help="namespace of the workflow, where the chart is installed (default: argo)")
    submit.add_argument("--token-env", metavar="VAR",
                        help="environment variable holding the Argo server's bearer token (without it no token is "
                        "sent: for servers in client or SSO auth mode that let you in without one)")
    submit.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    submit.add_argument("--wait", action="store_true",
                        help="wait for the end; print the phase, the outputs and, on failure, why (from the pods' "
                        "status and events when Kubernetes credentials are available)")
    submit.add_argument("--poll-seconds", type=float, default=10.0,
                        help="status poll interval with --wait (default: 10)")
    submit.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="with --wait, give up after this long and exit 124 (default: the workflow's deadline, "
                        "workflowDeadlineSeconds, plus 15 minutes)")
    submit.add_argument("--no-preflight", action="store_true",
                        help="submit without checking the cluster first (see `influence-job preflight`)")
    _kube_args(submit)
    submit.add_argument("--model", help="model directory in the pod (default: the settings' model)")
    submit.add_argument("--dataset", help="data set in the pod (default: the settings' dataset)")
    submit.add_argument("--gpus", type=int, metavar="N",
                        help="GPUs of this run (same as --set gpus=N): the pod requests and limits N GPUs and torchrun "
                        "starts N ranks (default: the settings' gpus, 8)")
    submit.add_argument("--run-set", dest="run_overrides", metavar="WORDS",
                        help="extra `--set KEY=VALUE` words for the run, e.g. \"--set projection.factor=16\"")
    submit.add_argument("--trace", type=Path, metavar="SPEC",
                        help="submit an influence trace instead of one run: the specification's steps fan out over "
                        "the GPU pool (trace_parallelism at once), each a run; its paths must be absolute, as the "
                        "pods see them (docs/operations.md, Traces)")
    submit.add_argument("--trace-name", metavar="NAME",
                        help="the trace's directory on the results volume, /results/traces/NAME, and its metrics "
                        "instance; resubmitting the same name reuses the steps already done (default: the "
                        "specification's file name)")

    pre = sub.add_parser("preflight", help="check that the cluster has what a run needs: the WorkflowTemplate, "
                         "bound data and results PVCs, the Argo token Secret, a node with the GPUs",
                         description="Read the cluster through the Kubernetes API and print one line per check, "
                         "ok or FAIL with the fix. Exit 0 when every check passes, 2 otherwise.")
    _cluster_args(pre)
    pre.add_argument("--namespace", default="argo",
                     help="namespace of the workflow, where the chart is installed (default: argo)")
    _kube_args(pre)


def _review_commands(sub) -> None:
    """Reviewing finished runs: compare, baseline, report, schema."""
    cmp = sub.add_parser("compare", help="compare a run with a baseline: exit 0 pass, 1 regression, 2 bad input, "
                         "5 not comparable")
    cmp.add_argument("baseline", type=Path, help="baseline output directory (or its results.json)")
    cmp.add_argument("candidate", type=Path, help="candidate output directory (or its results.json)")
    cmp.add_argument("--tolerances", type=Path,
                     help="YAML file of tolerances and cost budgets, every key optional: numbers.{rtol, cos_atol, "
                     "dot_atol, matrix_rtol}, cost.{wall, hessian_solve, peak_gpu_memory, peak_host_memory, "
                     "wall_slack_seconds, hessian_solve_slack_seconds, memory_slack_bytes} (docs/usage.md, Comparing "
                     "runs)")
    cmp.add_argument("--format", choices=["text", "json", "markdown"], default="text", help="table format")
    cmp.add_argument("--outputs", type=Path, metavar="DIR", action="append", default=[],
                     help="also write verdict, regressions, comparable, compare.md and compare.json here "
                     "(repeatable)")
    cmp.add_argument("--promote-if-missing", action="store_true",
                     help="no baseline yet (first night): promote the candidate to BASELINE and pass")
    cmp.add_argument("--pushgateway", default=os.environ.get("INFLUENCE_PUSHGATEWAY") or None, metavar="URL",
                     help="push the verdict there (default: $INFLUENCE_PUSHGATEWAY; unset: no push)")
    cmp.add_argument("--job", default="influence_job", help="Pushgateway grouping label 'job'")
    cmp.add_argument("--instance", default="influence-nightly", help="Pushgateway grouping label 'instance'")

    base = sub.add_parser("baseline", help="manage baselines for compare")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    promote = base_sub.add_parser("promote", help="make a run's result the baseline (atomic; records who/when/which)")
    promote.add_argument("run", type=Path, help="the run's output directory")
    promote.add_argument("--to", type=Path, required=True, help="the baseline directory (replaced atomically)")
    promote.add_argument("--reason", default="promoted by hand", help="recorded in baseline.json")

    rep = sub.add_parser("report", help="write report.html and report.md again from an output directory's files "
                         "(an older run, or after an upgrade)")
    rep.add_argument("output", type=Path, help="the run's output directory")
    rep.add_argument("--format", choices=["html", "md"], action="append",
                     help="which report to write (repeatable; default both)")

    schema = sub.add_parser("schema", help="print the JSON Schema of an output file")
    schema.add_argument("what", choices=["results", "trace"], help="results: results.json; trace: trace.json")


def _service_commands(sub) -> None:
    """The commands the cluster job's containers run: exporter, publish."""
    exporter = sub.add_parser("exporter", help="serve /metrics for a run's multiprocess metrics directory")
    exporter.add_argument("--dir", type=Path, required=True, help="the prometheus-client multiprocess directory")
    exporter.add_argument("--port", type=int, default=9400, help="listening port (default 9400)")
    exporter.add_argument("--address", default="0.0.0.0", help="listening address (default all interfaces)")
    exporter.add_argument("--grace-seconds", type=float, default=60.0,
                          help="keep serving the final values this long after the job ends (default 60)")

    publish = sub.add_parser("publish", help="the workflow's publish step: outputs from a result directory")
    publish.add_argument("--results", type=Path, required=True, help="the run's output directory")
    publish.add_argument("--out", type=Path, required=True, help="directory for output-parameter files")
    publish.add_argument("--run-status", help="the run step's final status (Argo's steps.run.status)")
    publish.add_argument("--run-exit-code", help="the run step's exit code (Argo's steps.run.exitCode)")
    publish.add_argument("--workflow", help="also write the verdict as this Workflow's status: the ConfigMap "
                         "<workflow>-results and the labels influence-job/validation and influence-job/rows-emitted")
    publish.add_argument("--workflow-uid", help="the Workflow's uid (owner of the ConfigMap); needed with --workflow")
    publish.add_argument("--namespace", help="the Workflow's namespace; needed with --workflow")
    publish.add_argument("--results-claim", help="the results PVC, named in the status's results link")
    _kube_args(publish)
