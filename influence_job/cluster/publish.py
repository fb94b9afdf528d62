"""The workflow's `publish` step: read results.json, print the report's tables, write the key figures as
Argo output-parameter files and the report as an artifact, and exit non-zero when validation failed, so
that the workflow's status is the validation verdict."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from influence_job.base.errors import InputError
from influence_job.cluster.pods import FAILED_CHECKS
from influence_job.cluster.status import Verdict, publish_status
from influence_job.outputs.headline import HEADLINE
from influence_job.outputs.results import read_results


def _text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def publish(results_dir: Path, out_dir: Path, echo=print, run_status: str | None = None,
            run_exit_code: str | None = None, status_to: dict | None = None) -> int:
    """Returns the exit code: 0 when the run step succeeded and its results exist and passed validation, else 1.

    ``run_status``/``run_exit_code`` are the run step's (Argo's ``steps.run.status``/``exitCode``): a run that
    did not succeed fails publish whatever results.json says, since that file may be an earlier attempt's.
    ``status_to`` (workflow, uid, namespace; optionally claim, the results PVC, kubeconfig and context) also
    writes the verdict as the Workflow's Kubernetes status (cluster.status); a refusal there is an error, not a
    silent omission.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "results.json"
    try:
        results = read_results(path)  # through the typed model: a broken result fails here
    except InputError as exc:
        results = None
        echo(f"publish: no valid result at {path} ({exc}); the run step failed before writing its outputs "
             "(see the run step's logs).")
    run_ok = run_status in (None, "", "Succeeded")
    figures = {f.published: _text(None if results is None else f.value(results)) for f in HEADLINE if f.published}
    validation = None if results is None else results.validation
    checks = [] if validation is None else validation.checks
    failed = [c.name for c in checks if not c.passed]
    if not run_ok:  # the outputs carry this run's verdict, not a stale result's
        figures["validation-passed"] = "false"
        failed = [*failed, f"run-step-{str(run_status).lower()}"]
    for name, text in figures.items():
        (out_dir / name).write_text(text)
    (out_dir / FAILED_CHECKS).write_text(",".join(failed))
    summary = _copy_reports(results_dir, out_dir, echo)
    passed = validation is not None and validation.passed
    for check in checks:
        echo(f"check {check.name}: {'passed' if check.passed else 'FAILED'} ({check.detail})")
    if not run_ok:
        echo(f"publish: the run step ended {run_status} (exit code {run_exit_code or 'unknown'}); the results above "
             "may be an earlier attempt's and are not this run's verdict — see the run step's logs.")
    echo(f"validation: {'PASSED' if passed else 'FAILED'}" + ("" if run_ok else "; run step: FAILED"))
    verdict = passed and run_ok
    if status_to:
        rows = None if validation is None else validation.rows_emitted
        _write_status(status_to, Verdict(verdict, rows if run_ok else None, failed, summary, figures,
                                         _where(results_dir, status_to.get("claim"))), echo)
    return 0 if verdict else 1


def _copy_reports(results_dir: Path, out_dir: Path, echo) -> str:
    """report.md (printed) and report.html into the outputs, or a page saying there is none; returns the text."""
    report = results_dir / "report.md"
    if report.is_file():
        summary = report.read_text()
        shutil.copyfile(report, out_dir / "report.md")
        echo(summary)
    else:
        summary = f"No report: {results_dir / 'results.json'} was not written.\n"
        (out_dir / "report.md").write_text(summary)
    page = results_dir / "report.html"
    if page.is_file():
        shutil.copyfile(page, out_dir / "report.html")
    else:
        (out_dir / "report.html").write_text(
            f"<!DOCTYPE html><title>No report</title><p>{html.escape(summary)}</p>\n")
    return summary


def _where(results_dir: Path, claim: str | None) -> str:
    return f"pvc/{claim}:{results_dir}" if claim else str(results_dir)


def _write_status(status_to: dict, verdict: Verdict, echo) -> None:
    """The verdict as the Workflow's Kubernetes status: its results ConfigMap and labels."""
    from influence_job.cluster.kube import api_client

    publish_status(api_client(status_to.get("kubeconfig"), status_to.get("context")), verdict,
                   status_to["workflow"], status_to["uid"], status_to["namespace"])
    echo(f"status: ConfigMap {status_to['workflow']}-results and the Workflow's label influence-job/validation="
         f"{'passed' if verdict.passed else 'failed'} written")
