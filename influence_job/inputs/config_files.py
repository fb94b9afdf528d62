"""Reading a configuration: YAML files, `--set KEY=VALUE` overrides, validation errors that name the field and
the fix, and the field reference `config --explain` and docs/configuration.md print.

The same readers serve the job's configuration (config.JobConfig), the cluster settings and compare's
tolerances: each is a pydantic model validated with overrides applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from influence_job.base.errors import InputError
from influence_job.inputs.config import JobConfig

CONFIG_DOCS = "`influence-job config --explain` (or docs/configuration.md)"


def _format_errors(err: ValidationError, origin: str, docs: str = CONFIG_DOCS, what: str = "configuration") -> str:
    lines = [f"invalid {what} ({origin}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; check its spelling against {docs}"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  - {field}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers, booleans and lists keep their type."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not KEY=VALUE; write e.g. --set projection.factor=16")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise InputError(f"override {text!r} has an empty key; write e.g. --set curvature.source=response")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return path, value


def _apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file and the fix."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}. Pass an existing YAML file.") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{what} {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{what} {path} must be a YAML mapping of sections, got {type(loaded).__name__}")
    return loaded


def validate_with_overrides(model: type[BaseModel], data: dict, overrides: list[str] | None, origin: str,
                            docs: str = CONFIG_DOCS, what: str = "configuration"):
    """Apply ``--set KEY=VALUE`` overrides to ``data`` and validate it as ``model``; ``docs`` says where
    the valid keys are documented (named in the message for an unknown key)."""
    for text in overrides or []:
        key, value = parse_override(text)
        _apply_override(data, key, value)
        origin += f" + --set {text}"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format_errors(exc, origin, docs, what)) from None


def check_run_words(words: str, model: str, dataset: str, what: str) -> JobConfig:
    """Check the `--set KEY=VALUE` words a cluster run will pass to `influence-job run`, here and now.

    The pod's shell splits them on white space (no quoting), after setting the model and data paths, so
    they are split and applied the same way and validated against the job's configuration model: a typo
    fails on the user's machine instead of inside a pod after its GPUs were scheduled.
    """
    tokens, overrides = words.split(), []
    while tokens:
        word = tokens.pop(0)
        if word == "--set" and tokens:
            overrides.append(tokens.pop(0))
        elif word.startswith("--set="):
            overrides.append(word.removeprefix("--set="))
        else:
            raise InputError(
                f"{what}: {word!r} is not part of a `--set KEY=VALUE` pair. Write e.g. "
                "\"--set projection.factor=16 --set curvature.source=response\" (values without spaces: the "
                "pod's shell splits on them)."
            )
    base = {"model": {"builtin": None, "path": model}, "data": {"path": dataset}}
    return validate_with_overrides(JobConfig, base, overrides, what)


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load YAML (or the built-in default when ``path`` is None), apply ``--set`` overrides, validate."""
    data = {} if path is None else read_yaml_mapping(path, "configuration")
    return validate_with_overrides(JobConfig, data, overrides, "built-in default" if path is None else str(path))


def dump_config(cfg: JobConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def explain(model: type[BaseModel] = JobConfig, prefix: str = "", alias: bool = False) -> list[str]:
    """Every field with its effective default in plain words and its documentation, one line each, for
    `config --explain` (and `render --explain`, with the values files' camelCase names)."""
    return [f"{key} (default {default}): {meaning}" for key, default, meaning in field_reference(model, prefix, alias)]


def field_reference(model: type[BaseModel] = JobConfig, prefix: str = "", alias: bool = False):
    """(dotted key, default in plain words, documentation) of every leaf field, in declaration order: what
    `config --explain` prints and docs/configuration.md tabulates."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias if alias and field.alias else name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from field_reference(ann, key + ".", alias)
            continue
        yield key, _plain_default(field), field.description or ""


def _plain_default(field) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ", ".join(str(v) for v in default)
    if isinstance(default, str) and default == "":
        return "empty"
    return str(default)
