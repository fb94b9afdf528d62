"""The figures of report.html, drawn with matplotlib (Agg, no display, no pyplot state) and inlined as PNG.

Why matplotlib: the page must render with no network (clusters are often air-gapped) and stay small enough to
mail. matplotlib's PNGs need no JavaScript runtime (Plotly's embedded runtime alone is ~4 MB, Vega's ~1 MB)
and print as they look; the little interactivity the page has (hover values on the heatmaps, the cos/dot
switch, the response selector) reads the exact numbers embedded beside the figures.
"""

from __future__ import annotations

import base64
import io
import logging
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from influence_job.outputs.results import ModuleRecord, Similarity

log = logging.getLogger(__name__)

ACC, REJ = "#1b9e77", "#d95f02"  # accepted / rejected, everywhere on the page
RAW_COLOR, HINV_COLOR = "#4c72b0", "#c44e52"
DPI = 110


_CHECK_CLIPPING: ContextVar[bool] = ContextVar("check_clipping", default=False)


@contextmanager
def checking_clipping():
    """Within the block, every figure drawn is also checked for labels cut off at the image's edge (logged as a
    warning). The check draws each figure a second time, which a run should not pay for; the tests turn it on."""
    token = _CHECK_CLIPPING.set(True)
    try:
        yield
    finally:
        _CHECK_CLIPPING.reset(token)


def png(fig: Figure) -> str:
    """A data: URI of the figure (no metadata, so the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    if _CHECK_CLIPPING.get():
        for name in clipped_texts(fig):
            log.warning("a figure's %r reaches beyond the image's edge and is cut off", name)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def clipped_texts(fig: Figure) -> list[str]:
    """What is drawn (axes with their tick labels and titles, legends, the figure's title) beyond the figure's
    edges, by the name of its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    out = []
    for artist in [*fig.axes, *fig.legends, *fig.texts]:
        ext = artist.get_tightbbox(renderer) if hasattr(artist, "get_tightbbox") else None
        if ext is None:
            continue
        if ext.x0 < box.x0 - 1 or ext.x1 > box.x1 + 1 or ext.y0 < box.y0 - 1 or ext.y1 > box.y1 + 1:
            name = artist.get_title() if hasattr(artist, "get_title") else getattr(artist, "get_text", str)()
            out.append(name or type(artist).__name__)
    return out


def order_by_prompt(prompt_index: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Responses grouped by prompt, accepted first within a prompt (stable otherwise)."""
    return np.lexsort((~accepted, prompt_index))


def groups(prompt_index: np.ndarray, accepted: np.ndarray, max_groups: int = 128) -> list[tuple[str, bool,
                                                                                                  np.ndarray]]:
    """(label, accepted, response indices) blocks in page order, for the aggregated heatmap: one prompt's accepted
    or rejected responses — or, when that would give more than ``max_groups`` blocks, those of a run of
    consecutive prompts (prompt ranks r with r·B // P equal, B = max_groups // 2 buckets)."""
    prompts = np.unique(prompt_index)
    buckets = max(1, max_groups // 2)
    rank = np.searchsorted(prompts, prompt_index)
    bucket = rank if len(prompts) <= buckets else rank * buckets // len(prompts)
    out = []
    for b in np.unique(bucket):
        members_of = prompts[np.unique(rank[bucket == b])]
        label = (f"prompt {members_of[0]}" if len(members_of) == 1
                 else f"prompts {members_of[0]}–{members_of[-1]}")
        for acc in (True, False):
            members = np.flatnonzero((bucket == b) & (accepted == acc))
            if len(members):
                out.append((label, acc, members))
    return out


def block_means(M: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Mean of M over each pair of blocks, leaving out the diagonal (self-pairs) inside a block."""
    G = len(blocks)
    out = np.full((G, G), np.nan)
    for a, ia in enumerate(blocks):
        for b, ib in enumerate(blocks):
            sub = M[np.ix_(ia, ib)]
            if a == b:
                if len(ia) < 2:
                    continue
                out[a, b] = (sub.sum() - np.trace(sub)) / (len(ia) * (len(ia) - 1))
            else:
                out[a, b] = sub.mean()
    return out


def heatmap(matrix: np.ndarray, labels_prompt: np.ndarray, labels_acc: np.ndarray, title: str, kind: str) -> dict:
    """A heatmap of an already ordered matrix; ``labels_*`` give each row's prompt and accepted flag.

    Returns the PNG and where the cells lie in it (fractions of the image: left, top, width, height), which the
    page's hover script uses to find the cell under the pointer.
    """
    n = matrix.shape[0]
    fig = Figure(figsize=(4.6, 4.6))
    ax = fig.add_axes((0.08, 0.04, 0.72, 0.78))
    if kind == "cos":
        vmax, cmap = 1.0, "RdBu_r"
    else:
        off = np.abs(matrix[~np.eye(n, dtype=bool)]) if n > 1 else np.abs(matrix.ravel())
        off = off[np.isfinite(off)]
        vmax, cmap = (float(np.quantile(off, 0.99)) if off.size else 1.0) or 1.0, "RdBu_r"
    image = ax.imshow(matrix, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    edges = np.flatnonzero(np.diff(labels_prompt)) + 0.5
    for e in edges:
        ax.axhline(e, color="black", linewidth=0.6)
        ax.axvline(e, color="black", linewidth=0.6)
    colors = np.where(labels_acc, ACC, REJ)
    left = fig.add_axes((0.045, 0.04, 0.03, 0.78), sharey=ax)
    top = fig.add_axes((0.08, 0.83, 0.72, 0.03), sharex=ax)
    for i, c in enumerate(colors):
        left.add_patch(_rect((0, i - 0.5), 1, 1, c))
        top.add_patch(_rect((i - 0.5, 0), 1, 1, c))
    left.set_xlim(0, 1)
    top.set_ylim(0, 1)
    for a in (left, top):
        a.set_axis_off()
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    bar = fig.add_axes((0.82, 0.04, 0.025, 0.78))
    fig.colorbar(image, cax=bar, format=FuncFormatter(lambda v, _: f"{v:.3g}"))  # 6e+04: short, whole
    bar.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10, y=0.975)
    pos = ax.get_position()
    return {"src": png(fig), "extent": [pos.x0, 1 - pos.y1, pos.width, pos.height]}


def _rect(xy, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, facecolor=color, edgecolor="none")


def glance(similarity: Similarity) -> str:
    """Per-prompt mean cosine by category, RAW beside HINV: the page's first picture."""
    cats = list(similarity.raw.per_prompt.cells())
    fig = Figure(figsize=(5.2, 2.6))
    ax = fig.add_subplot()
    x = np.arange(len(cats))
    for k, (method, color) in enumerate((("raw", RAW_COLOR), ("hinv", HINV_COLOR))):
        cells = similarity.methods()[method].per_prompt.cells()
        means = [_none_nan(cells[c].cos.mean) for c in cats]
        bars = ax.bar(x + (k - 0.5) * 0.38, means, 0.36, color=color, label=method.upper())
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, cats)
    ax.set_ylabel("mean cosine, same prompt")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png(fig)


def _none_nan(x):
    return np.nan if x is None else x


def pair_values(M: np.ndarray, prompt_index: np.ndarray, accepted: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    from influence_job.maths.similarity import pair_masks

    (i, j), masks = pair_masks(prompt_index, accepted)
    values = M[i, j]
    return {key: values[mask] for key, mask in masks.items()}


def _names(values: dict[tuple[str, str], np.ndarray]) -> tuple[list[str], list[str]]:
    """The scopes and categories of pair values keyed (scope, category), in their order."""
    return list(dict.fromkeys(s for s, _ in values)), list(dict.fromkeys(c for _, c in values))


def cos_distributions(raw_cos: dict, hinv_cos: dict) -> str:
    """Histograms of pair cosines per scope × category, RAW and HINV overlaid (same axis: cosines share one)."""
    scopes, categories = _names(raw_cos)
    fig = Figure(figsize=(9, 6.4))
    axes = fig.subplots(3, 3, sharex=True)
    bins = np.linspace(-1, 1, 41)
    for r, scope in enumerate(scopes):
        for c, cat in enumerate(categories):
            ax = axes[r, c]
            for values, color, name in ((raw_cos[(scope, cat)], RAW_COLOR, "RAW"),
                                        (hinv_cos[(scope, cat)], HINV_COLOR, "HINV")):
                values = values[np.isfinite(values)]
                if values.size:
                    ax.hist(values, bins=bins, histtype="step", color=color, linewidth=1.4, label=name,
                            density=True)
            ax.set_title(f"{scope} · {cat} (n={raw_cos[(scope, cat)].size})", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.spines[["top", "right"]].set_visible(False)
            ax.set_yticks([])
    from matplotlib.lines import Line2D

    proxies = [Line2D([], [], color=RAW_COLOR, label="RAW"), Line2D([], [], color=HINV_COLOR, label="HINV")]
    axes[0, 0].legend(handles=proxies, fontsize=7, frameon=False)  # also when that cell has no pairs
    for ax in axes[-1]:
        ax.set_xlabel("cosine", fontsize=8)
    fig.tight_layout()
    return png(fig)


def dot_distributions(raw_dot: dict, hinv_dot: dict, self_dots: dict) -> str:
    """Box plots of pair dots per scope and category (RAW and HINV each on its own scale), then self-dots."""
    scopes, categories = _names(raw_dot)
    fig = Figure(figsize=(9, 7.6))
    axes = fig.subplots(4, 2)
    for col, (name, values) in enumerate((("RAW", raw_dot), ("HINV", hinv_dot))):
        for r, scope in enumerate(scopes):
            ax = axes[r, col]
            data = [values[(scope, c)] for c in categories]
            ax.boxplot([d if d.size else [np.nan] for d in data], tick_labels=categories, showfliers=False,
                       widths=0.5)
            ax.set_title(f"{name} dot · {scope}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.axhline(0, color="grey", linewidth=0.5)
        ax = axes[3, col]
        sd = self_dots[name.lower()]
        box = ax.boxplot([sd["acc"], sd["rej"]], tick_labels=["accepted", "rejected"], showfliers=False,
                         widths=0.5, patch_artist=True)
        for patch, color in zip(box["boxes"], (ACC, REJ), strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_title(f"{name} self-dot " + ("g·g" if name == "RAW" else "g H⁻¹ g"), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png(fig)


def shares(by: list[str], contributions: dict[str, dict[str, list[float]]], title: str) -> str:
    """Grouped bars: each group's share (%) of the per-prompt mean dot, per category, RAW and HINV."""
    fig = Figure(figsize=(9, 3.0))
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(by))
    for ax, method in zip(axes, ("raw", "hinv"), strict=True):
        for k, (cat, color) in enumerate((("acc-acc", ACC), ("rej-rej", REJ), ("acc-rej", "#7570b3"))):
            values = 100 * np.asarray(contributions[method][cat], dtype=float)
            ax.bar(x + (k - 1) * 0.27, values, 0.26, color=color, label=cat)
        ax.set_xticks(x, by, fontsize=7, rotation=30 if len(by) > 8 else 0)
        ax.set_title(f"{method.upper()}: share of the per-prompt mean dot, by {title}", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("% of the total", fontsize=8)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return png(fig)


def curvature_similarity(matrices: dict[str, np.ndarray]) -> str:
    """The P×P cosine between prompts' curvatures, one panel per module kind."""
    kinds = list(matrices)
    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig = Figure(figsize=(2.3 * cols + 0.6, 2.3 * rows + 0.3))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    image = None
    for ax, kind in zip(axes, kinds, strict=False):
        image = ax.imshow(matrices[kind], vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(kind, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(kinds):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="cos(H_p, H_q)")
    return png(fig)


def timeline(phase_seconds: dict[str, float], split: dict[str, float]) -> str:
    """The phases in order as one bar, and under it the curvature_solve phase split into its parts."""
    fig = Figure(figsize=(9, 2.4))
    ax = fig.add_subplot()
    start, palette = 0.0, ["#8dd3c7", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9"]
    for k, (name, seconds) in enumerate(phase_seconds.items()):
        ax.barh(1, seconds, left=start, color=palette[k % len(palette)], edgecolor="white",
                label=f"{name} {seconds:.3g} s")
        if seconds > 0.1 * sum(phase_seconds.values()):  # narrower segments: the legend names them
            ax.text(start + seconds / 2, 1, f"{name}\n{seconds:.3g} s", ha="center", va="center", fontsize=7)
        if name == "curvature_solve":
            left = start
            colors = {"solves": "#e41a1c", "diagnostics": "#377eb8", "rest": "#999999"}
            for part, width in split.items():
                ax.barh(0, width, left=left, color=colors[part], edgecolor="white", label=f"{part} {width:.3g} s")
                left += width
        start += seconds
    ax.set_yticks([0, 1], ["curvature_solve\nsplit", "phases"], fontsize=7)
    ax.set_xlabel("seconds (rank 0)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.05), ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png(fig)


def solve_times(modules: list[ModuleRecord]) -> str:
    """Each module's solve seconds, ordered by layer then kind, coloured by kind, its route written above; a module
    a resumed run took from an earlier attempt's checkpoint is hatched."""
    kinds = list(dict.fromkeys(m.kind for m in modules))
    palette = dict(zip(kinds, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                               "#7f7f7f", "#bcbd22", "#17becf"] * 4, strict=False))
    ordered = sorted(modules, key=lambda m: (m.layer if m.layer is not None else -1, kinds.index(m.kind)))
    fig = Figure(figsize=(9, 2.8))
    ax = fig.add_subplot()
    x = np.arange(len(ordered))
    bars = ax.bar(x, [m.solve_seconds for m in ordered], color=[palette[m.kind] for m in ordered])
    for bar, m in zip(bars, ordered, strict=True):
        if m.resumed:  # computed by an earlier attempt: its seconds are that attempt's
            bar.set_hatch("////")
            bar.set_alpha(0.5)
    if len(ordered) <= 64:
        for xi, m in zip(x, ordered, strict=True):
            ax.text(xi, m.solve_seconds, m.solver, rotation=90, ha="center", va="bottom", fontsize=6)
    layers = [m.layer for m in ordered]
    ticks = [i for i in range(len(layers)) if i == 0 or layers[i] != layers[i - 1]]
    ax.set_xticks(ticks, [f"L{layers[i]}" for i in ticks], fontsize=7)
    handles = [_rect((0, 0), 1, 1, palette[k]) for k in kinds]
    ax.legend(handles, kinds, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.25)  # room above the bars for their route labels
    ax.set_ylabel("solve seconds", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png(fig)


def memory(peaks: list[tuple[str, float, float | None]]) -> str:
    """Peak memory against the device's size: (label, peak bytes, size bytes or None)."""
    fig = Figure(figsize=(9, 0.5 + 0.45 * len(peaks)))
    ax = fig.add_subplot()
    for y, (_, peak, size) in enumerate(peaks):
        if size:
            ax.barh(y, size / 2**30, color="#dddddd")
        ax.barh(y, peak / 2**30, color="#4c72b0", height=0.5)
        ax.text(peak / 2**30, y, f" {peak / 2**30:.3g} GiB" + (f" of {size / 2**30:.3g} GiB" if size else ""),
                va="center", fontsize=7)
    ax.set_yticks(range(len(peaks)), [p[0] for p in peaks], fontsize=7)
    ax.set_xlabel("GiB", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png(fig)
