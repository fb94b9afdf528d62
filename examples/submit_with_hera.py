"""Start a run of the installed WorkflowTemplate from Python with Hera, without the CLI.

The project's builders make the Workflow (the same object `influence-job submit` sends) and Hera's
WorkflowsService sends it to the Argo server. The `--set` words are checked against the job's configuration
first, as the CLI does, so a typo fails here rather than in a pod.

    ARGO_TOKEN=... python examples/submit_with_hera.py https://argo.example:2746 ml
"""

from __future__ import annotations

import os
import sys

from hera.workflows import WorkflowsService

from influence_job.cluster.settings import load_settings
from influence_job.cluster.workflows import build_submission
from influence_job.inputs.config_files import check_run_words


def submit(server: str, namespace: str, token: str, model: str, dataset: str, overrides: str = "") -> str:
    """Returns the name of the created workflow."""
    settings = load_settings(None, [f"namespace={namespace}"])
    check_run_words(overrides, model, dataset, "overrides")
    workflow = build_submission(settings, model, dataset, overrides)
    workflow.workflows_service = WorkflowsService(host=server, token=token, namespace=namespace)
    return workflow.create().metadata.name


if __name__ == "__main__":
    server, namespace = sys.argv[1], sys.argv[2]
    name = submit(server, namespace, os.environ["ARGO_TOKEN"], "/data/models/qwen2.5-1.5b",
                  "/data/datasets/step_0224.jsonl", "--set curvature.source=response")
    print(f"submitted {name}")
