"""What each command does: the handlers behind the parser, with the heavy imports inside them so that a command
loads only what it needs (`config` never imports torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from influence_job.base.errors import InputError
from influence_job.base.exit_codes import ExitCode
from influence_job.inputs.config_files import check_run_words, dump_config, explain, load_config
from influence_job.run.stops import signal_after_commit


def command(args) -> int:
    """Run the parsed command; returns its exit code (errors propagate to main, which turns them into codes)."""
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
        from influence_job.outputs.regenerate import regenerate

        for path in regenerate(args.output, tuple(args.format or ("html", "md"))):
            print(path)
        return ExitCode.OK
    if args.command == "schema":
        import json

        from influence_job.outputs.results import results_schema
        from influence_job.trace.table import Trace

        print(json.dumps(results_schema() if args.what == "results" else Trace.model_json_schema(), indent=2))
        return ExitCode.OK
    if args.command == "plan":
        return _plan(args)
    if args.command == "trace":
        return _trace(args)
    if args.command == "config":
        if args.explain:
            print("\n".join(explain()))
        else:
            print(dump_config(resolve(args)), end="")
        return ExitCode.OK
    cfg = resolve(args)
    if args.keep_checkpoint:
        cfg.output.keep_checkpoint = True
    return _run(cfg, args.fresh, args.reuse)


def _check_data(cfg) -> None:
    """The data file's existence and shape, before the model and the heavy libraries load (seconds later)."""
    from influence_job.inputs.data import check_data_file, example_data_path

    check_data_file(cfg.data.path or example_data_path(), cfg.data.format,
                    cfg.data.columns.model_dump(exclude_none=True), cfg.data.accept_threshold)


def _plan(args) -> int:
    import json

    cfg = resolve(args)
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


def _trace(args) -> int:
    """Run a trace specification's steps (or list them, or collect their outputs, or gather existing outputs), then
    write the trace."""
    if (args.spec is None) == (args.gather is None):
        raise InputError("trace needs either a specification (influence-job trace SPEC --output DIR) or --gather "
                         "RUN_OUTPUT... (influence-job trace --gather DIR1 DIR2 --output DIR), not both or neither.")
    from influence_job.trace.outputs import gather, prepare_trace_dir, trace_of_outcomes, write_trace

    if args.gather:
        out_dir, trace = prepare_trace_dir(args.output), gather(args.gather)
    else:
        from influence_job.trace.spec import load_spec

        spec = load_spec(args.spec, args.overrides)
        if args.list:
            return _list_steps(spec, args.output, args.list)
        outcomes = _trace_steps(spec.job, spec.steps, args)
        if outcomes is None:
            return ExitCode.OK  # a torchrun rank other than 0: rank 0 writes the trace
        out_dir, trace = Path(args.output).resolve(), trace_of_outcomes(outcomes)
    page = write_trace(out_dir, trace)
    bad = [s for s in trace.steps if not s.passed]
    if args.outputs:
        _trace_parameters(args.outputs, trace, bad)
    print(f"trace: {len(trace.steps)} steps, {len(trace.steps) - len(bad)} with a result that passed validation"
          + "".join(f"\n  step {s.label}: " + (f"failed: {s.reason}" if s.status == "failed" else "validation FAILED")
                    for s in bad) + f"\nlook at: {page}")
    return ExitCode.CHECK_FAILED if bad else ExitCode.OK


def _trace_steps(job, steps, args):
    """The steps' outcomes: run here (every torchrun rank takes part; None on ranks other than 0), or collected from
    their outputs (--collect)."""
    from influence_job.trace.outputs import prepare_trace_dir
    from influence_job.trace.steps import collect_steps, run_steps

    if args.collect:
        return collect_steps(steps, prepare_trace_dir(args.output))
    from influence_job.run.distributed import init_comm

    comm = init_comm(job.compute.device, job.compute.timeout_seconds)
    out_dir = prepare_trace_dir(args.output) if comm.is_root else Path(args.output).resolve()
    try:
        outcomes = run_steps(job, steps, out_dir, comm, args.fresh)
    finally:
        comm.close()
    return outcomes if comm.is_root else None


def _list_steps(spec, out_dir: Path, where: Path) -> int:
    """The expanded steps as the cluster's fan-out reads them: ``steps`` (a JSON list) and ``count``; the trace's
    directory is checked and marked here, before any step writes into it, and its size pushed."""
    import json

    from influence_job.monitoring.metrics import push_trace_steps, pushgateway_url
    from influence_job.outputs.writing import atomic_write_bytes
    from influence_job.trace.outputs import prepare_trace_dir
    from influence_job.trace.steps import step_items, trace_name

    where.mkdir(parents=True, exist_ok=True)
    out_dir = prepare_trace_dir(out_dir)
    items = step_items(spec, out_dir)
    if url := pushgateway_url(spec.job):
        push_trace_steps(url, len(items), spec.job.metrics.job, trace_name(out_dir))
    atomic_write_bytes(where / "steps", json.dumps(items).encode())
    atomic_write_bytes(where / "count", str(len(items)).encode())
    print(f"trace: {len(items)} steps ({', '.join(i['step'] for i in items)}), each checkpoint and batch found")
    return ExitCode.OK


def _trace_parameters(where: Path, trace, bad) -> None:
    """The trace's verdict as Argo output-parameter files: steps, failed (count) and failed-steps (their labels)."""
    from influence_job.outputs.writing import atomic_write_bytes

    where.mkdir(parents=True, exist_ok=True)
    for name, text in (("steps", str(len(trace.steps))), ("failed", str(len(bad))),
                       ("failed-steps", ",".join(s.label for s in bad))):
        atomic_write_bytes(where / name, text.encode())


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


def _run(cfg, fresh: bool = False, reuse: bool = False) -> int:
    """Run the job with live metrics; push the final summary when a Pushgateway is configured, whether
    the run succeeded, failed validation or stopped on an error."""
    import time

    _check_data(cfg)
    from influence_job.monitoring.metrics import JobMetrics, push_summary, pushgateway_url
    from influence_job.outputs.report import summary_lines
    from influence_job.run.distributed import init_comm
    from influence_job.run.pipeline import matching_result, run_job  # heavy imports only when running

    if reuse and not fresh and (done := matching_result(cfg)) is not None:
        print(f"influence-job: {cfg.output.dir} already holds this configuration's result (fingerprint "
              f"{done.fingerprint.run[:12]}, finished {done.finished_at}); nothing to do (--reuse).")
        return ExitCode.OK if done.validation.passed else ExitCode.CHECK_FAILED

    comm = init_comm(cfg.compute.device, cfg.compute.timeout_seconds)
    metrics = JobMetrics(cfg.metrics.dir, comm.rank, comm.world)
    t0, results = time.perf_counter(), None
    try:
        results = run_job(cfg, metrics=metrics, comm=comm, fresh=fresh).results
    finally:
        wall = time.perf_counter() - t0
        if comm.is_root:  # rank 0 holds the results and speaks for the run
            metrics.finished(results, wall)  # samples memory too
            url = pushgateway_url(cfg)
            if url:
                push_summary(url, results, wall, cfg.metrics.job, cfg.metrics.instance, cfg.metrics.trace_step)
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
    return ExitCode.OK if results.validation.passed else ExitCode.CHECK_FAILED


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
    workflow = (_trace_submission(settings, args) if args.trace is not None
                else build_submission(settings, args.model, args.dataset, args.run_overrides))
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


def _trace_submission(settings, args):
    """The trace's Workflow: its specification checked here as far as it can be without the cluster's files."""
    import re

    from influence_job.cluster.workflows import build_trace_submission
    from influence_job.trace.spec import cluster_spec

    if args.model or args.dataset:
        raise InputError("submit --trace takes each step's model and data from the specification; drop --model and "
                         "--dataset.")
    name = args.trace_name or re.sub(r"[^a-z0-9-]+", "-", args.trace.stem.lower()).strip("-")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or ""):
        raise InputError(f"--trace-name {name!r}: use lower-case letters, digits and '-' (it names a directory and "
                         "a metrics instance), e.g. --trace-name grpo-run-7.")
    return build_trace_submission(settings, cluster_spec(args.trace), name, args.run_overrides)


def resolve(args):
    cfg = load_config(args.config, args.overrides)
    if args.output is not None:  # a path as typed, not a YAML value ('~' or 'null' are names here)
        cfg.output.dir = args.output
    return cfg


