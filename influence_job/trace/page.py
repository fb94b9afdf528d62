"""trace.html: the diagnostic over training steps on one self-contained page (no network, like report.html) — the
per-prompt cosines and dots by category, RAW beside HINV, each module kind's share of the per-prompt dot, the
validation verdict and the costs, step by step; each step links to its own report.html."""

from __future__ import annotations

import html
import os
from pathlib import Path

from matplotlib.figure import Figure

from influence_job.maths.similarity import CATEGORIES
from influence_job.outputs.figures import HINV_COLOR, RAW_COLOR, png
from influence_job.outputs.number_format import format_rows
from influence_job.outputs.report_assets import CSS
from influence_job.trace.table import Trace

CATEGORY_STYLE = {"acc-acc": "-", "rej-rej": "--", "acc-rej": ":"}


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _steps(trace: Trace) -> list[int]:
    return [s.step for s in trace.steps]


def _values(values: list[float | None] | None, n: int, scale: float = 1.0) -> list[float]:
    """A series as matplotlib draws it: NaN (a gap) where a step has no value."""
    return [float("nan") if v is None else scale * v for v in (values or [None] * n)]


def _style(ax, title: str, ylabel: str, ncol: int = 1) -> None:
    """Every chart's axes alike; a legend only when there is a line to name (not when every step failed)."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, ncol=ncol)
    ax.spines[["top", "right"]].set_visible(False)


def _by_category(trace: Trace, what: str, ylabel: str) -> str:
    """RAW beside HINV: the per-prompt mean of ``what`` (dot or cos) by category over the steps."""
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (method, color) in zip(axes, (("raw", RAW_COLOR), ("hinv", HINV_COLOR)), strict=True):
        for category in CATEGORIES:
            values = trace.series.get(f"similarity.{method}.per_prompt.{category}.{what}.mean")
            if values is not None:
                ax.plot(_steps(trace), _values(values, len(trace.steps)), CATEGORY_STYLE[category], color=color,
                        marker="o", markersize=3, label=category)
        _style(ax, f"{method.upper()} per-prompt {what} mean", ylabel)
    fig.tight_layout()
    return png(fig)


def _shares(trace: Trace) -> str | None:
    """Each module kind's share of the acc-acc per-prompt dot over the steps, RAW beside HINV."""
    names = [n for n in trace.series if n.startswith("share.")]
    if not names:
        return None
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, method in zip(axes, ("raw", "hinv"), strict=True):
        for name in [n for n in names if n.startswith(f"share.{method}.acc-acc.")]:
            ax.plot(_steps(trace), _values(trace.series[name], len(trace.steps), 100), marker="o", markersize=3,
                    label=name.rsplit(".", 1)[1])
        _style(ax, f"{method.upper()} acc-acc per-prompt dot: share by module kind", "share, %", ncol=2)
    fig.tight_layout()
    return png(fig)


def _costs(trace: Trace) -> str:
    fig = Figure(figsize=(9, 2.8))
    ax = fig.add_subplot()
    for name, label in (("performance.wall_seconds", "wall"), ("performance.hessian_solve_seconds", "solves")):
        ax.plot(_steps(trace), _values(trace.series.get(name), len(trace.steps)), marker="o", markersize=3,
                label=label)
    for s in trace.steps:
        if not s.passed:
            ax.axvline(s.step, color="#c44e52", linewidth=0.8, alpha=0.6)
    _style(ax, "cost per step (red lines: a failed step or failed validation)", "seconds")
    fig.tight_layout()
    return png(fig)


def _table(trace: Trace, page_dir: Path) -> str:
    head = ["step", "status", "validation", "HINV acc-rej cos", "RAW acc-rej cos", "wall s", "report / why"]
    cos = {m: trace.series.get(f"similarity.{m}.per_prompt.acc-rej.cos.mean", [None] * len(trace.steps))
           for m in ("raw", "hinv")}
    wall = trace.series.get("performance.wall_seconds", [None] * len(trace.steps))
    numbers = format_rows([[cos["hinv"][k], cos["raw"][k], wall[k]] for k in range(len(trace.steps))])
    rows = []
    for k, s in enumerate(trace.steps):
        verdict = "—" if s.validation_passed is None else "passed" if s.validation_passed else "FAILED"
        report = Path(s.output) / "report.html"
        link = (f'<a href="{_e(os.path.relpath(report, page_dir))}">report.html</a>' if s.status != "failed"
                else _e(s.reason or "no result"))
        cells = [_e(s.label), _e(s.status), _e(verdict), *(_e(x) for x in numbers[k])]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{link}</td></tr>")
    return (f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>")


def render_trace(trace: Trace, page_dir: Path) -> str:
    """The page; links to the steps' reports are relative to ``page_dir``, where the page is written."""
    failed = [s.label for s in trace.steps if s.status == "failed"]
    invalid = [s.label for s in trace.steps if s.validation_passed is False]
    verdict = (f"{len(trace.steps)} steps, {len(trace.steps) - len(failed)} with a result"
               + (f"; failed: {', '.join(failed)}" if failed else "")
               + (f"; validation failed at: {', '.join(invalid)}" if invalid else ""))
    shares = _shares(trace)
    figures = [(_by_category(trace, "cos", "mean cosine"), "per-prompt mean cosine over steps"),
               (_by_category(trace, "dot", "mean dot"), "per-prompt mean dot over steps"),
               *([(shares, "module kind shares over steps")] if shares else []),
               (_costs(trace), "cost over steps")]
    body = ('<section id="verdict"><h1>Influence trace</h1>'
            f'<p class="badge"><span class="{"fail" if failed or invalid else "pass"}">{_e(verdict)}</span></p>'
            "</section>"
            '<section id="trends"><h2>Over training</h2>'
            + "".join(f'<img class="fig" src="{src}" alt="{_e(alt)}">' for src, alt in figures)
            + '</section><section id="steps"><h2>Steps</h2>' + _table(trace, page_dir) + "</section>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>influence-job trace</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>\n")
