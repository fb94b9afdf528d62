"""Command line: `run` computes the diagnostic, `config` shows its configuration; `render`, `submit` and
`publish` are the cluster job's commands (the Argo objects, a run on an Argo server, the publish step).

Exit codes: influence_job/base/exit_codes.py (`influence-job --help` lists them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from influence_job.base.errors import DistributedError, InputError
from influence_job.base.exit_codes import ExitCode, help_text
from influence_job.inputs.config import check_run_words, dump_config, explain, load_config
from influence_job.run.stops import Stopped, signal_after_commit, stop_signals


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration (default: the built-in tiny-model run)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one field, e.g. --set curvature.source=response (repeatable; values are YAML)",
    )
    p.add_argument("--output", type=Path, help="output directory (same as --set output.dir=DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="influence-job",
        description="Gradient-similarity (RAW) and curvature-weighted (HINV) diagnostics between sampled "
        "responses of an RL-trained language model, with token influence rows.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the diagnostic and write the output directory")
    _config_args(run)
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    run.add_argument("--fresh", action="store_true",
                     help="ignore (and remove) this run's checkpoint instead of resuming from it")
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
    cfg = sub.add_parser("config", help="print the resolved configuration as YAML")
    _config_args(cfg)
    cfg.add_argument("--explain", action="store_true", help="list every field with its default and meaning")

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

    pre = sub.add_parser("preflight", help="check that the cluster has what a run needs: the WorkflowTemplate, "
                         "bound data and results PVCs, the Argo token Secret, a node with the GPUs",
                         description="Read the cluster through the Kubernetes API and print one line per check, "
                         "ok or FAIL with the fix. Exit 0 when every check passes, 2 otherwise.")
    _cluster_args(pre)
    pre.add_argument("--namespace", default="argo",
                     help="namespace of the workflow, where the chart is installed (default: argo)")
    _kube_args(pre)

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
    schema.add_argument("what", choices=["results"], help="results: results.json")

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
    return parser


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--values", type=Path, help="Helm-style values file (camelCase keys, as the chart's values.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one cluster setting, e.g. --set gpus=4 --set nightly.schedule='0 3 * * *'")


def _kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file for the Kubernetes API (default: in a pod its service "
                   "account, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _cluster(args) -> int:
    from influence_job.cluster.settings import ClusterSettings, load_settings
    from influence_job.cluster.workflows import build_all, build_submission

    if args.command == "render" and args.explain:
        print("\n".join(explain(ClusterSettings, alias=True)))
        return ExitCode.OK
    overrides = args.overrides + ([f"gpus={args.gpus}"] if getattr(args, "gpus", None) is not None else [])
    settings = load_settings(args.values, overrides)
    check_run_words(settings.overrides, settings.model, settings.dataset, "cluster value overrides")
    check_run_words(settings.nightly.overrides, settings.nightly.model, settings.nightly.dataset,
                    "cluster value nightly.overrides")
    if args.command == "render":
        docs = {name: obj.to_yaml() for name, obj in build_all(settings).items()}
        if args.out == "-":
            print("---\n".join(docs.values()), end="")
            return ExitCode.OK
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in docs.items():
            (out / name).write_text(text)
            print(out / name)
        return ExitCode.OK
    from influence_job.cluster.kube import api_client
    from influence_job.cluster.preflight import run_preflight

    if args.command == "preflight":
        run_preflight(settings, args.namespace, api=api_client(args.kubeconfig, args.context))
        return ExitCode.OK
    from influence_job.cluster.submit import submit

    if args.run_overrides is not None:
        check_run_words(args.run_overrides, args.model or settings.model, args.dataset or settings.dataset,
                        "submit --run-set")
    workflow = build_submission(settings, args.model, args.dataset, args.run_overrides)
    kube = None
    if not args.no_preflight:
        try:
            kube = api_client(args.kubeconfig, args.context)
        except InputError as exc:
            raise InputError(f"{exc} (submit checks the cluster first; --no-preflight skips that)") from None
        run_preflight(settings, args.namespace, api=kube)
    elif args.wait and (args.kubeconfig or args.context):
        kube = api_client(args.kubeconfig, args.context)
    timeout = args.timeout if args.timeout is not None else settings.workflow_deadline_seconds + 900
    return submit(workflow, args.argo_server, args.namespace, args.token_env, args.insecure, args.wait,
                  args.poll_seconds, timeout, kube)


def _resolve(args):
    cfg = load_config(args.config, args.overrides)
    if args.output is not None:  # a path as typed, not a YAML value ('~' or 'null' are names here)
        cfg.output.dir = args.output
    return cfg


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the moment the
    handler was made: a caller (or a test harness) may have replaced and closed that one since."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


@contextmanager
def _command_logging(quiet: bool):
    """The package's log lines to stderr for the duration of one command, leaving logging as it was found."""
    logger = logging.getLogger("influence_job")
    handler = _StderrHandler()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _command_logging(getattr(args, "quiet", False)), stop_signals():
        try:
            return _command(args)
        except InputError as exc:
            print(f"influence-job: error: {exc}", file=sys.stderr)
            return ExitCode.INPUT
        except DistributedError as exc:
            print(f"influence-job: error: {exc}", file=sys.stderr)
            return ExitCode.DISTRIBUTED
        except Stopped as stop:
            print(f"influence-job: {_stop_line(stop, args)}", file=sys.stderr)
            return stop.exit_code
        except BrokenPipeError:  # stdout closed early (e.g. `| head`): stop quietly, as other commands do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.PIPE
        except KeyboardInterrupt:  # a SIGINT outside the handlers' reach (another thread's command)
            print("influence-job: stopped by SIGINT", file=sys.stderr)
            return ExitCode.SIGINT
        except Exception as exc:  # noqa: BLE001 - one exit code for every unexpected failure, with its trace
            traceback.print_exc()
            print(f"influence-job: error: unexpected failure ({type(exc).__name__}: {exc}); see the traceback "
                  "above. Exit code 4 means a bug or the machine (memory, disk), not your input.",
                  file=sys.stderr)
            return ExitCode.FAILURE


def _stop_line(stop: Stopped, args) -> str:
    """One line: what stopped where, and what state the output is in."""
    where = f" during [{stop.phase}]" if stop.phase else ""
    line = f"stopped by {stop.name}{where}"
    if args.command != "run":
        return line
    out = Path(getattr(args, "output", None) or _output_of(args))
    state = (f"nothing new was written: the previous output {out} is intact" if out.exists()
             else f"nothing was written to {out}")
    return f"{line}; {state}" + (f"; {stop.note}." if stop.note else ".")


def _output_of(args) -> Path:
    try:
        return _resolve(args).output.dir
    except InputError:
        return Path("influence-output")


def _command(args) -> int:
    if args.command in ("render", "submit", "preflight"):
        return _cluster(args)
    if args.command == "exporter":
        from influence_job.monitoring.exporter import serve

        return serve(args.dir, args.port, args.address, args.grace_seconds)
    if args.command == "publish":
        from influence_job.cluster.publish import publish

        status_to = None
        if args.workflow:
            if not (args.workflow_uid and args.namespace):
                raise InputError("publish --workflow needs --workflow-uid and --namespace (Argo's {{workflow.uid}} "
                                 "and {{workflow.namespace}}).")
            status_to = {"workflow": args.workflow, "uid": args.workflow_uid, "namespace": args.namespace,
                         "claim": args.results_claim, "kubeconfig": args.kubeconfig, "context": args.context}
        return publish(args.results, args.out, run_status=args.run_status, run_exit_code=args.run_exit_code,
                       status_to=status_to)
    if args.command == "compare":
        return _compare(args)
    if args.command == "baseline":
        from influence_job.review.baseline import promote

        record = promote(args.run, args.to, args.reason)
        print(f"baseline {args.to} is now {record['run']} ({record['promoted_by']}, {record['promoted_at']})")
        return ExitCode.OK
    if args.command == "report":
        from influence_job.outputs.report_html import regenerate

        for path in regenerate(args.output, tuple(args.format or ("html", "md"))):
            print(path)
        return ExitCode.OK
    if args.command == "schema":
        import json

        from influence_job.outputs.results import results_schema

        print(json.dumps(results_schema(), indent=2))
        return ExitCode.OK
    if args.command == "plan":
        return _plan(args)
    if args.command == "config":
        if args.explain:
            print("\n".join(explain()))
        else:
            print(dump_config(_resolve(args)), end="")
        return ExitCode.OK
    cfg = _resolve(args)
    if args.keep_checkpoint:
        cfg.output.keep_checkpoint = True
    return _run(cfg, args.fresh)


def _check_data(cfg) -> None:
    """The data file's existence and shape, before the model and the heavy libraries load (seconds later)."""
    from influence_job.inputs.data import check_data_file, example_data_path

    check_data_file(cfg.data.path or example_data_path(), cfg.data.format,
                    cfg.data.columns.model_dump(exclude_none=True), cfg.data.accept_threshold)


def _plan(args) -> int:
    import json

    cfg = _resolve(args)
    _check_data(cfg)
    from influence_job.planning.plan import make_plan
    from influence_job.planning.profiles import profile
    from influence_job.planning.render import as_dict, render
    from influence_job.planning.workload import workload

    ranks = args.ranks if args.ranks is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if ranks < 1:
        raise InputError(f"--ranks {ranks}: a run needs at least one rank.")
    device = args.device or ("h200" if cfg.compute.device == "cuda" else "cpu")
    plan = make_plan(cfg, workload(cfg), profile(device), ranks)
    print(json.dumps(as_dict(plan), indent=2) if args.json else render(plan))
    return ExitCode.OK


def _compare(args) -> int:
    from influence_job.review.baseline import promote
    from influence_job.review.compare import (
        Comparison,
        baseline_missing,
        check_inputs,
        compare,
        load_tolerances,
        push_verdict,
        render,
        write_outputs,
    )

    tolerances = load_tolerances(args.tolerances)
    if args.promote_if_missing and baseline_missing(args.baseline):
        record = promote(args.candidate, args.baseline, "first night: no baseline yet")
        cmp = Comparison(True, [], [],
                         note=f"first night: no baseline yet, {record['run']} promoted to {args.baseline}")
    else:
        check_inputs(args.baseline, args.candidate)
        cmp = compare(args.baseline, args.candidate, tolerances)
    print(render(cmp, args.format))
    for out in args.outputs:
        write_outputs(cmp, out)
    if args.pushgateway:
        push_verdict(args.pushgateway, cmp, args.job, args.instance)
    return cmp.exit_code


def _run(cfg, fresh: bool = False) -> int:
    """Run the job with live metrics; push the final summary when a Pushgateway is configured, whether
    the run succeeded, failed validation or stopped on an error."""
    import time

    _check_data(cfg)
    from influence_job.monitoring.metrics import JobMetrics, push_summary
    from influence_job.outputs.report import summary_lines
    from influence_job.run.distributed import init_comm
    from influence_job.run.pipeline import run_job  # heavy imports only when running

    comm = init_comm(cfg.compute.device, cfg.compute.timeout_seconds)
    metrics = JobMetrics(cfg.metrics.dir, comm.rank, comm.world)
    t0, results = time.perf_counter(), None
    try:
        results = run_job(cfg, metrics=metrics, comm=comm, fresh=fresh).results
    finally:
        wall = time.perf_counter() - t0
        if comm.is_root:  # rank 0 holds the results and speaks for the run
            metrics.finished(results, wall)  # samples memory too
            url = cfg.metrics.pushgateway or os.environ.get("INFLUENCE_PUSHGATEWAY")
            if url:
                push_summary(url, results, wall, cfg.metrics.job, cfg.metrics.instance)
        else:
            metrics.sample_memory()
        comm.close()
    if not comm.is_root:
        return ExitCode.OK
    print("\n".join(summary_lines(results, cfg.output.dir)))
    late = signal_after_commit()
    if late:
        print(f"influence-job: {late} arrived while the result was being written; the write finished first, "
              f"so the new result {cfg.output.dir} is complete.", file=sys.stderr)
    return ExitCode.OK if results["validation"]["passed"] else ExitCode.CHECK_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
