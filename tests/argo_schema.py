"""What Argo accepts, checked two ways against Argo's published JSON schema (read where it lives, the project's
``../shared/schemas/argo-workflows.schema.json``; ``ARGO_SCHEMA=PATH`` points elsewhere; the repository keeps no
copy of it):

- ``schema_errors``: the schema itself, with the in-memory patches its README describes (IntOrString accepts
  integers; every object definition that lists properties rejects unknown keys, so a misspelled key is an
  error). It stands for Argo's field names and nesting.
- ``decode_errors``: what Argo's strict decoder requires before any parameter is substituted, which the schema
  cannot tell (it types a Kubernetes quantity as a plain string). Argo decodes a template into Kubernetes' Go
  types first, so every value must already be of its field's type: a quantity parses with Kubernetes' quantity
  grammar (``kubernetes.utils.parse_quantity``), an integer field holds an integer, a boolean field a boolean, a
  string field a string. A templated ``{{...}}`` is a string, so it stands only where the type is a string (or
  IntOrString, which Argo substitutes itself). The schema supplies each field's Go type by its definition.

Where the schema is absent (a user's own clone without the project's shared folder) the tests that need it
skip and say why.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
from kubernetes.utils import parse_quantity

SCHEMA = Path(os.environ.get("ARGO_SCHEMA")
              or Path(__file__).resolve().parents[2] / "shared" / "schemas" / "argo-workflows.schema.json")
MISSING = (f"Argo's JSON schema is not at {SCHEMA} (the project's shared/schemas/ beside this checkout); set "
           "ARGO_SCHEMA to a copy of argo-workflows.schema.json to run these checks")
needs_schema = pytest.mark.skipif(not SCHEMA.is_file(), reason=MISSING)
KINDS = {
    "Workflow": "io.argoproj.workflow.v1alpha1.Workflow",
    "WorkflowTemplate": "io.argoproj.workflow.v1alpha1.WorkflowTemplate",
    "CronWorkflow": "io.argoproj.workflow.v1alpha1.CronWorkflow",
}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
REF = "#/definitions/"


@lru_cache(maxsize=1)
def _published() -> dict:
    return json.loads(SCHEMA.read_text())["definitions"]


@lru_cache(maxsize=1)
def _patched() -> dict:
    defs = copy.deepcopy(_published())
    defs[INT_OR_STRING] = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    for d in defs.values():
        if isinstance(d, dict) and "properties" in d and "additionalProperties" not in d:
            d["additionalProperties"] = False
    return defs


def schema_errors(obj: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator({"$ref": f"{REF}{KINDS[obj['kind']]}", "definitions": _patched()})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def decode_errors(obj: dict) -> list[str]:
    """Every value Argo's decoder would refuse, as ``path: why``."""
    out: list[str] = []
    _decode(obj, {"$ref": REF + KINDS[obj["kind"]]}, "", out)
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(value, schema: dict, path: str, out: list[str]) -> None:
    ref = schema.get("$ref", "")
    if ref:
        name = ref.removeprefix(REF)
        if name == QUANTITY:
            try:
                parse_quantity(value)
            except (ValueError, TypeError) as exc:
                out.append(f"{path}: {value!r} is not a Kubernetes quantity ({exc})")
            return
        if name == INT_OR_STRING:
            if not (_is_int(value) or isinstance(value, str)):
                out.append(f"{path}: {value!r} is neither an integer nor a string")
            return
        _decode(value, _published()[name], path, out)
        return
    kind = schema.get("type")
    checks = {"integer": _is_int, "boolean": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str),
              "number": lambda v: _is_int(v) or isinstance(v, float)}
    if kind in checks:
        if not checks[kind](value):
            out.append(f"{path}: {value!r} is not a{'n' if kind[0] == 'i' else ''} {kind}"
                       + (" (a templated value is a string)" if isinstance(value, str) and "{{" in value else ""))
        return
    if kind == "array" or "items" in schema:
        if not isinstance(value, list):
            out.append(f"{path}: {value!r} is not a list")
            return
        for i, item in enumerate(value):
            _decode(item, schema.get("items", {}), f"{path}[{i}]", out)
        return
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        if not isinstance(value, dict):
            out.append(f"{path}: {value!r} is not an object")
            return
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:  # an unknown key is the schema check's to report
                _decode(item, sub, f"{path}.{key}" if path else key, out)
