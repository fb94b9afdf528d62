"""Validation of Argo objects against Argo's JSON schema (tests/schemas/, a copy of the project's
shared/schemas/argo-workflows.schema.json), with the in-memory
patches its README describes: IntOrString accepts integers, and every object definition that lists
properties rejects unknown keys (so a misspelled key is an error)."""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema

# The copy in tests/schemas/ (so that any clone passes); ARGO_SCHEMA may point elsewhere.
BUNDLED = Path(__file__).resolve().parent / "schemas" / "argo-workflows.schema.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "argo-workflows.schema.json"
SCHEMA = Path(os.environ.get("ARGO_SCHEMA") or BUNDLED)
KINDS = {
    "Workflow": "io.argoproj.workflow.v1alpha1.Workflow",
    "WorkflowTemplate": "io.argoproj.workflow.v1alpha1.WorkflowTemplate",
    "CronWorkflow": "io.argoproj.workflow.v1alpha1.CronWorkflow",
}


@lru_cache(maxsize=1)
def _definitions() -> dict:
    if not SCHEMA.is_file():
        raise FileNotFoundError(f"Argo's schema is not at {SCHEMA}: set ARGO_SCHEMA to a copy of it")
    schema = json.loads(SCHEMA.read_text())
    defs = copy.deepcopy(schema["definitions"])
    defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    for d in defs.values():
        if isinstance(d, dict) and "properties" in d and "additionalProperties" not in d:
            d["additionalProperties"] = False
    return defs


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/definitions/{KINDS[kind]}", "definitions": _definitions()})


def errors(obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(obj["kind"]).iter_errors(obj)]
