"""Reading a data file's rows in either layout: JSON Lines with one prompt group per line, or flat rows (JSON
Lines or Parquet) with one response per row, grouped by prompt; columns are found by role (data.columns or the
usual names). Every error names the file and the line or row."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from influence_job.base.errors import InputError

log = logging.getLogger(__name__)


def where_in(path: Path, line: int) -> str:
    return f"{path}:{line}"


# Flat tables: the column each role is read from when data.columns does not name one, first match wins.
DEFAULT_COLUMNS = {
    "prompt": ("prompt", "input"),
    "response": ("response", "completion", "output"),
    "reward": ("reward", "score"),
    "prompt_id": ("prompt_id", "uid"),
    "response_id": ("response_id",),
    "accepted": ("accepted",),
    "prompt_token_ids": ("prompt_token_ids",),
    "response_token_ids": ("response_token_ids",),
}
PARQUET_SUFFIXES = (".parquet", ".pq")



def read_groups(path: Path, fmt: str, columns: dict, announce: bool = True):
    """(where, group in the native grouped form, per-response wheres or None) for every prompt group.

    ``fmt``: 'grouped', 'flat', or 'auto' (Parquet is flat; a JSON Lines file is grouped when its first object
    has 'responses', else flat). The log says which layout was read.
    """
    if path.suffix.lower() in PARQUET_SUFFIXES:
        if fmt == "grouped":
            raise InputError(f"data file {path} is Parquet, which holds flat rows; set data.format: flat or auto.")
        rows, wheres = _parquet_rows(path)
        layout = "flat"
    else:
        rows, wheres = _jsonl_objects(path)
        layout = fmt if fmt != "auto" else ("grouped" if rows and isinstance(rows[0], dict)
                                            and "responses" in rows[0] else "flat")
    if announce:
        log.info("data %s: %s layout (%s), %d %s", path, layout,
                 "one prompt group per line" if layout == "grouped" else "one response per row, grouped by prompt",
                 len(rows), ("line" if layout == "grouped" else "row") + ("" if len(rows) == 1 else "s"))
    if layout == "grouped":
        return [(w, obj, None) for w, obj in zip(wheres, rows, strict=True)]
    return group_flat_rows(rows, wheres, columns, path)


def _jsonl_objects(path: Path) -> tuple[list, list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist. Set data.path to a JSON Lines or Parquet file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"data file {path} cannot be read as UTF-8 text: {exc}") from None
    rows, wheres = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = where_in(path, lineno)
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            at = f"column {exc.colno}" if exc.msg.endswith(" at") else f"at column {exc.colno}"
            raise InputError(
                f"{where}: this line is not valid JSON: {exc.msg} {at}. Each line must be one JSON object "
                "(one prompt group, or one response of a flat table)."
            ) from None
        wheres.append(where)
    return rows, wheres


def _parquet_rows(path: Path) -> tuple[list, list[str]]:
    if not path.is_file():
        raise InputError(f"data file {path} does not exist. Set data.path to a JSON Lines or Parquet file.")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"data file {path} cannot be read as Parquet ({str(exc).strip()[:200]}).") from None
    return rows, [f"{path} row {i}" for i in range(1, len(rows) + 1)]


def _column(role: str, keys: set, columns: dict, where: str) -> str | None:
    """The column a role is read from: the configured one (which must exist), else the first default present."""
    name = columns.get(role)
    if name is not None:
        if name not in keys:
            raise InputError(
                f"{where}: data.columns.{role} is {name!r}, but the table has no such column (its columns: "
                f"{', '.join(sorted(keys))}). Fix data.columns.{role}."
            )
        return name
    return next((c for c in DEFAULT_COLUMNS[role] if c in keys), None)


def group_flat_rows(rows: list, wheres: list[str], columns: dict, path: Path):
    """Flat rows (one response each) → prompt groups in the native form, in order of first appearance."""
    if not rows:
        return []
    for row, where in zip(rows, wheres, strict=True):
        if not isinstance(row, dict):
            raise InputError(f"{where}: each row must be an object of columns, got {type(row).__name__}.")
    keys = set().union(*(r.keys() for r in rows))
    col = {role: _column(role, keys, columns, wheres[0]) for role in DEFAULT_COLUMNS}
    for role, alternative in (("prompt", "prompt_token_ids"), ("response", "response_token_ids"), ("reward", None)):
        if col[role] is None and (alternative is None or col[alternative] is None):
            raise InputError(
                f"{path}: no column for the {role} (looked for {', '.join(DEFAULT_COLUMNS[role])}"
                f"{', ' + alternative if alternative else ''}; the table has {', '.join(sorted(keys))}). "
                f"Name it with data.columns.{role}."
            )
    used = {c for c in col.values() if c is not None}
    groups: dict = {}
    for row, where in zip(rows, wheres, strict=True):
        prompt_key = col["prompt_token_ids"] if col["prompt_token_ids"] in row else col["prompt"]
        if col["prompt_id"] is not None and row.get(col["prompt_id"]) is not None:
            key = ("id", str(row[col["prompt_id"]]))
        else:
            key = ("prompt", json.dumps(row.get(prompt_key), sort_keys=True))
        if key not in groups:
            native = "prompt_token_ids" if prompt_key == col["prompt_token_ids"] else "prompt"
            groups[key] = {"where": where, "wheres": [], "obj": {
                "prompt_id": key[1] if key[0] == "id" else f"p{len(groups)}", native: row.get(prompt_key),
                "responses": []}}
        response = {k: v for k, v in row.items() if k not in used}
        for role in ("response", "response_token_ids", "reward", "accepted", "response_id"):
            if col[role] is not None and col[role] in row:
                response[role] = row[col[role]]
        if "reward" not in response:
            raise InputError(f"{where}: the reward column {col['reward']!r} is missing in this row.")
        groups[key]["obj"]["responses"].append(response)
        groups[key]["wheres"].append(where)
    return [(g["where"], g["obj"], g["wheres"]) for g in groups.values()]


