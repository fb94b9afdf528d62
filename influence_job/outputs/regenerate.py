"""`influence-job report`: an output directory's files read back, and its reports written again from them (an
older run, or after an upgrade)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from influence_job.base.errors import InputError
from influence_job.outputs.report import render_report
from influence_job.outputs.report_html import render_html
from influence_job.outputs.results import Results, read_results
from influence_job.outputs.writing import MARKER, atomic_write_bytes, is_own_output


def read_output(out_dir) -> tuple[Results, dict, dict | None, list[list[str]] | None]:
    """What render_html needs, read back from an output directory (for `influence-job report`)."""
    out_dir = Path(out_dir)
    results = read_results(out_dir)
    try:
        with np.load(out_dir / "similarity.npz") as z:
            sim = {k: z[k] for k in z.files}
        rows = tokens = None
        if (out_dir / "influence_rows.npz").is_file():
            with np.load(out_dir / "influence_rows.npz") as z:
                rows = {k: z[k] for k in z.files}
        if (out_dir / "influence_rows.parquet").is_file():
            column = pq.read_table(out_dir / "influence_rows.parquet", columns=["tokens"]).column("tokens")
            tokens = column.to_pylist() if column.null_count == 0 else None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{out_dir}: cannot read the output's arrays ({exc}); regenerate the output with "
                         "`influence-job run`.") from None
    return results, sim, rows, tokens


def regenerate(out_dir, formats: tuple[str, ...] = ("html", "md")) -> list:
    """Rewrite an output directory's reports from its files (an older run, or after an upgrade); each file is
    replaced atomically, and only in a directory that is an influence-job output."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise InputError(f"{out_dir} does not exist. Give the output directory a run wrote.")
    if not out_dir.is_dir() or not is_own_output(out_dir):
        raise InputError(f"{out_dir} is not an influence-job output directory (it needs the {MARKER} marker and "
                         "only the files a run writes). Give the directory a run wrote.")
    results, sim, rows, tokens = read_output(out_dir)
    written = []
    for fmt_name in formats:
        path = out_dir / f"report.{fmt_name}"
        text = render_html(results, sim, rows, tokens) if fmt_name == "html" else render_report(results)
        atomic_write_bytes(path, text.encode())
        written.append(path)
    return written
