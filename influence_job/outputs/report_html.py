"""report.html: the run's result as one self-contained page — no script, style, font or image comes from the
network (clusters are often air-gapped); it opens in any current browser and prints.

Sections (their element ids): ``verdict`` (verdict, identity, key numbers), ``glance`` (sentences computed from
the numbers and the per-prompt cosines RAW beside HINV), ``heatmaps`` (N×N RAW and HINV, cos or dot, ordered by
prompt; aggregated into prompt × accepted/rejected blocks above ``AGGREGATE_ABOVE`` responses), ``distributions``,
``where`` (shares by module kind and by layer), ``tokens`` (each response's tokens coloured by score, with the
policy entropy as a second track; the batch's extreme tokens; skipped prompts and why), ``diagnostics``,
``performance``. The exact numbers behind the figures are embedded as JSON (``report-data``; matrices as
base64 float64), which the hover and selector scripts read and the tests compare with the output files.
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from influence_job.maths.similarity import cosine
from influence_job.outputs import figures
from influence_job.outputs.findings import findings, locate_token, module_shares
from influence_job.outputs.number_format import fmt, fmt_percent, fmt_seconds, format_rows
from influence_job.outputs.report import UNPROJECTED_HEADER, curvature_solve_split, resumed_note, unprojected_rows
from influence_job.outputs.report_assets import CSS, SCRIPT
from influence_job.outputs.results import Results

AGGREGATE_ABOVE = 512  # responses; above this the heatmaps show prompt × accepted/rejected block means
TOP_TOKENS = 10
CONTEXT = 20  # tokens of context each side of an extreme token (byte-level tokens are short)


def b64(a: np.ndarray) -> str:
    """A float64 array as base64 of its little-endian bytes (exact, and a third the size of decimal text)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in format_rows(rows))
    return f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in header)}</tr>{body}</table>"


def _img(src: str, alt: str, cls: str = "fig", extra: str = "") -> str:
    return f'<img class="{cls}" src="{src}" alt="{_e(alt)}"{extra}>'


# ---- sections ----------------------------------------------------------------------------------------------------

def _verdict(results: Results) -> str:
    val, cfg, env, perf = results.validation, results.config, results.environment, results.performance
    failed = [c.name for c in val.checks if not c.passed]
    badge = ('<span class="pass">Validation passed</span>' if val.passed else
             f'<span class="fail">Validation FAILED: {_e(", ".join(failed))}</span>')
    data = cfg["data"].get("path") or "bundled example data"
    kinds = ", ".join(dict.fromkeys(m.kind for m in results.modules))
    identity = (f"Model <b>{_e(results.model)}</b> · data {_e(data)} · {len(results.modules)} modules "
                f"({_e(kinds)}) · projection {_e(cfg['projection']['kind'])} factor {cfg['projection']['factor']} · "
                f"curvature {_e(cfg['curvature']['source'])}/{_e(cfg['curvature']['scope'])}, damping "
                f"{_e(cfg['curvature']['damping'])} · influence-job {_e(env.influence_job)}, torch "
                f"{_e(env.torch)}, transformers {_e(env.transformers)} · {_e(env.device)}")
    if results.finished_at:
        identity += f" · finished {_e(results.finished_at)}"
    key = (f"{results.n_prompts:,} prompts · {results.n_responses:,} responses ({results.n_accepted:,} "
           f"accepted, {results.n_rejected:,} rejected) · {results.n_response_tokens:,} response tokens · "
           f"wall {fmt_seconds(perf.wall_seconds)} · solves {fmt_seconds(perf.hessian_solve_seconds)} · "
           f"{val.rows_emitted:,} influence rows")
    resumed = resumed_note(results)
    if resumed:
        key += f" · {resumed}"
    return (f'<section id="verdict"><h1>Influence diagnostic report</h1><p class="badge">{badge}</p>'
            f'<p class="identity">{identity}</p><p class="key">{key}</p></section>')


def _glance(results: Results, rows, tokens) -> str:
    items = "".join(f"<li>{_e(s)}</li>" for s in findings(results, rows, tokens))
    return (f'<section id="glance"><h2>At a glance</h2><div class="row"><ul class="findings">{items}</ul>'
            f'{_img(figures.glance(results.similarity), "mean cosine by category, RAW and HINV", "fig small")}'
            "</div></section>")


def heatmap_data(sim: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The heatmaps' figures and the data their hover reads: full matrices, or block means when aggregated."""
    prompt_index, accepted = np.asarray(sim["prompt_index"]), np.asarray(sim["accepted"], dtype=bool)
    n = len(prompt_index)
    mats = {m: np.asarray(sim[m], dtype=float) for m in ("raw", "hinv")}
    cos = {m: cosine(mats[m]) for m in mats}
    figs: dict = {}
    if n <= AGGREGATE_ABOVE:
        order = figures.order_by_prompt(prompt_index, accepted)
        labels_p, labels_a = prompt_index[order], accepted[order]
        data = {"aggregated": False, "order": order.tolist(), "raw": b64(mats["raw"]), "hinv": b64(mats["hinv"])}
        view = {(m, k): (cos[m] if k == "cos" else mats[m])[np.ix_(order, order)] for m in mats for k in ("cos", "dot")}
    else:
        blocks = figures.groups(prompt_index, accepted)
        members = [b[2] for b in blocks]
        labels = [b[0] for b in blocks]
        labels_p = np.array([labels.index(label) for label in labels])  # equal for a label's two blocks
        labels_a = np.array([b[1] for b in blocks])
        view = {(m, k): figures.block_means(cos[m] if k == "cos" else mats[m], members)
                for m in mats for k in ("cos", "dot")}
        data = {"aggregated": True, "groups": [{"label": b[0], "accepted": b[1], "size": len(b[2])} for b in blocks],
                **{f"{m}_{k}": b64(view[(m, k)]) for m in mats for k in ("cos", "dot")}}
    for (m, k), matrix in view.items():
        figs[(m, k)] = figures.heatmap(matrix, labels_p, labels_a, f"{m.upper()} {k}", k)
    return figs, data


def _heatmaps(figs: dict, aggregated: bool, n: int) -> str:
    note = (f'<p class="note">{n:,} responses: each cell is the mean over a block of responses (one prompt\'s '
            "accepted or rejected ones, or those of a run of consecutive prompts when there are many; self-pairs "
            "left out), to keep the page small.</p>" if aggregated else "")
    panes = []
    for k in ("cos", "dot"):
        imgs = "".join(
            f'<figure>{_img(figs[(m, k)]["src"], f"{m.upper()} {k} heatmap", "heatmap", _extent(figs[(m, k)], m, k))}'
            "</figure>" for m in ("raw", "hinv"))
        panes.append(f'<div class="pane {k}"{"" if k == "cos" else " hidden"}>{imgs}</div>')
    return ('<section id="heatmaps"><h2>Every pair: RAW beside HINV</h2><div class="controls">Show '
            '<label><input type="radio" name="hm" value="cos" checked> cosine</label> '
            '<label><input type="radio" name="hm" value="dot"> dot</label></div>'
            '<p class="note">Responses ordered by prompt (black lines), accepted first; the strips mark accepted '
            f'<span class="sw acc"></span> and rejected <span class="sw rej"></span>. Hover a cell for its values.'
            f'</p>{note}<div class="row">{"".join(panes)}</div><div id="hover" class="hover"></div></section>')


def _extent(fig: dict, method: str, kind: str) -> str:
    return f' data-method="{method}" data-kind="{kind}" data-extent="{",".join(f"{v:.5f}" for v in fig["extent"])}"'


def _distributions(results: Results, sim: dict) -> str:
    prompt_index, accepted = np.asarray(sim["prompt_index"]), np.asarray(sim["accepted"], dtype=bool)
    raw, hinv = np.asarray(sim["raw"], dtype=float), np.asarray(sim["hinv"], dtype=float)
    cos_fig = figures.cos_distributions(figures.pair_values(cosine(raw), prompt_index, accepted),
                                        figures.pair_values(cosine(hinv), prompt_index, accepted))
    self_dots = {m: {"acc": np.diag(M)[accepted], "rej": np.diag(M)[~accepted]} for m, M in (("raw", raw),
                                                                                              ("hinv", hinv))}
    dot_fig = figures.dot_distributions(figures.pair_values(raw, prompt_index, accepted),
                                        figures.pair_values(hinv, prompt_index, accepted), self_dots)
    rows = [[m.upper(), s, c, cell.n, cell.cos.mean, cell.cos.std, cell.dot.mean, cell.dot.std]
            for m, stats in results.similarity.methods().items()
            for s, cells in stats.scopes().items() for c, cell in cells.cells().items()]
    return ('<section id="distributions"><h2>Distributions</h2>'
            f'{_img(cos_fig, "cosine distributions")}{_img(dot_fig, "dot distributions and self-dots")}'
            "<details><summary>The statistics as a table</summary>"
            + _table(["method", "scope", "pairs", "n", "cos mean", "cos std", "dot mean", "dot std"], rows)
            + "</details></section>")


def _where(results: Results) -> str:
    modules = results.modules
    if not modules or not all(m.contribution for m in modules):
        return ('<section id="where"><h2>Where in the model</h2><p class="note">This result does not record the '
                "modules' contributions (written by an older version); re-run to see them.</p></section>")
    kinds, by_kind = module_shares(modules, lambda m: m.kind)
    layers, by_layer = module_shares(modules, lambda m: m.layer)
    categories = list(by_kind["raw"])
    rows = [[k, *(by_kind[m][c][i] * 100 for m in ("raw", "hinv") for c in categories)] for i, k in enumerate(kinds)]
    return ('<section id="where"><h2>Where in the model</h2><p class="note">Each module kind\'s and each layer\'s '
            "share of the per-prompt mean dot (the sum over modules is the whole model's; a share can be negative)."
            f'</p>{_img(figures.shares([str(k) for k in kinds], by_kind, "module kind"), "shares by module kind")}'
            f'{_img(figures.shares([f"L{ly}" for ly in layers], by_layer, "layer"), "shares by layer")}'
            "<details><summary>Shares by module kind, %</summary>"
            + _table(["kind", *(f"{m.upper()} {c}" for m in ("raw", "hinv") for c in categories)], rows)
            + "</details></section>")


def skipped_reasons(rows: dict, enabled: bool) -> dict[str, str]:
    """prompt id → why its responses have no scores."""
    out = {}
    for p in dict.fromkeys(rows["prompt_index"].tolist()):
        sel = rows["prompt_index"] == p
        if not rows["skipped"][sel].all():
            continue
        pid = str(rows["prompt_id"][sel][0])
        n, acc = int(sel.sum()), int(rows["accepted"][sel].sum())
        out[pid] = ("influence is disabled (influence.enabled: false)" if not enabled else
                    f"all {n} responses accepted: no rejected response to contrast with" if acc == n else
                    f"all {n} responses rejected: no accepted response to contrast with")
    return out


def token_data(results: Results, rows: dict, tokens: list[list[str]] | None) -> dict:
    """What the token view draws (the page's script renders the selected response from it)."""
    from matplotlib import colormaps

    scores = np.asarray(rows["scores"], dtype=float)
    entropy = np.asarray(rows["entropy"], dtype=float)
    finite = np.abs(scores[np.isfinite(scores)])
    scale = float(np.quantile(finite, 0.99)) if finite.size else 1.0
    ent_max = float(np.nanmax(entropy)) if np.isfinite(entropy).any() else 1.0
    ent_min = float(np.nanmin(entropy)) if np.isfinite(entropy).any() else 0.0
    texts = ([t for r in tokens for t in r] if tokens is not None
             else [f"#{int(t)}" for t in rows["token_ids"]])
    anchors = np.linspace(0, 1, 11)
    return {
        "offsets": np.asarray(rows["token_offsets"]).tolist(), "text": texts, "scores": b64(scores),
        "entropy": b64(entropy), "response_id": [str(x) for x in rows["response_id"]],
        "prompt_id": [str(x) for x in rows["prompt_id"]], "reward": b64(np.asarray(rows["reward"], dtype=float)),
        "accepted": np.asarray(rows["accepted"], dtype=bool).tolist(),
        "score_sum": b64(np.asarray(rows["score_sum"], dtype=float)),
        "skipped": skipped_reasons(rows, results.influence.enabled),
        "scale": scale or 1.0, "entropy_min": ent_min, "entropy_max": ent_max,
        # The colour scales, sampled from matplotlib's (RdBu_r for scores, Greys for entropy); the script
        # interpolates linearly between these 11 stops.
        "score_colors": [[round(255 * c) for c in colormaps["RdBu_r"](a)[:3]] if a != 0.5 else [247, 247, 247]
                         for a in anchors],  # a neutral grey at 0, so a colour's hue is its score's sign
        "entropy_colors": [[round(255 * c) for c in colormaps["Greys"](0.15 + 0.85 * a)[:3]] for a in anchors],
    }


def _tokens(results: Results, rows: dict | None, tokens: list[list[str]] | None, data: dict | None) -> str:
    head = '<section id="tokens"><h2>Token influence</h2>'
    if rows is None or data is None:
        return head + '<p class="note">No influence rows in this output.</p></section>'
    scores = np.asarray(rows["scores"], dtype=float)
    reasons = data["skipped"]
    prompts = "".join(f'<option value="{_e(p)}">{_e(p)}{" (not scored)" if p in reasons else ""}</option>'
                      for p in dict.fromkeys(data["prompt_id"]))
    lo, hi = data["entropy_min"], data["entropy_max"]
    spread = (f"darker = higher, from {_e(fmt(lo))} to {_e(fmt(hi))} nats" if hi - lo > 1e-3 * max(abs(hi), 1e-12)
              else f"all ≈ {_e(fmt(hi))} nats in this batch: no contrast to show")
    legend = (f'<div class="legend"><span>score −{_e(fmt(data["scale"]))}</span><span class="grad"></span>'
              f'<span>+{_e(fmt(data["scale"]))}</span> · underline: policy entropy ({spread})</div>')
    skipped_list = "".join(f"<li><b>{_e(p)}</b>: {_e(w)}</li>" for p, w in reasons.items()) or "<li>none</li>"
    return (head + f'<p class="note">Aggregate {_e(results.influence.aggregate)}, the response\'s own '
            f'contribution {"excluded" if results.influence.exclude_self else "included"}. Colours are '
            "clipped at the 99th percentile of |score| over the batch; hover a token for its values.</p>"
            f'<div class="controls">Prompt <select id="prompt-select">{prompts}</select> Response '
            '<select id="response-select"></select></div>'
            f'{legend}<div id="response-view"></div>'
            f"{_extremes(rows, tokens, scores)}<h3>Skipped prompts</h3><ul>{skipped_list}</ul></section>")


def _extremes(rows: dict, tokens, scores: np.ndarray) -> str:
    ok = np.flatnonzero(np.isfinite(scores))
    if not ok.size:
        return ""
    order = ok[np.argsort(scores[ok], kind="stable")]
    parts = []
    for title, picks in (("Most positive tokens", order[::-1][:TOP_TOKENS]), ("Most negative tokens",
                                                                               order[:TOP_TOKENS])):
        items = []
        for flat in picks:
            r, k = locate_token(rows, int(flat))
            toks = tokens[r] if tokens is not None else [f"#{t}" for t in rows["token_ids"][
                rows["token_offsets"][r]:rows["token_offsets"][r + 1]]]
            before = "".join(toks[max(0, k - CONTEXT):k])
            after = "".join(toks[k + 1:k + 1 + CONTEXT])
            items.append(f"<tr><td>{_e(rows['response_id'][r])}</td><td>{_e(fmt(float(scores[flat])))}</td>"
                         f'<td class="ctx">…{_e(before)}<mark>{_e(toks[k])}</mark>{_e(after)}…</td></tr>')
        parts.append(f"<h3>{title}</h3><table><tr><th>response</th><th>score</th><th>context</th></tr>"
                     f"{''.join(items)}</table>")
    return "".join(parts)


def _diagnostics(results: Results) -> str:
    parts = ['<section id="diagnostics"><h2>Diagnostics</h2>']
    u = results.unprojected_comparison
    if u:
        rows = unprojected_rows(u)
        f = u.fidelity
        parts.append(f"<h3>Unprojected comparison: {_e(u.module)} (projected to k_in {u.k_in}, k_out "
                     f"{u.k_out} from {u.d_in}×{u.d_out})</h3>"
                     + _table(UNPROJECTED_HEADER, rows)
                     + '<p class="note">Projection fidelity: self-dot error '
                     f'{fmt_percent(f.self_dot_relative_error)} against a tolerance of '
                     f'±{fmt_percent(f.tolerance)} ({f.sigma:g} σ of this sketch); '
                     f'{"passed" if f.passed else "FAILED"}.</p>')
    else:
        parts.append('<p class="note">Unprojected comparison not run (diagnostics.unprojected_module is null).</p>')
    mats = {k: np.array(v.frobenius_cos_matrix, dtype=float)
            for k, v in results.curvature_similarity.items() if v.frobenius_cos_matrix}
    if mats:
        parts.append("<h3>Curvature similarity across prompts</h3><p class=\"note\">Cosine between prompts' "
                     "curvatures H_p (Frobenius), per module kind: near 1, prompts share one curvature.</p>"
                     + _img(figures.curvature_similarity(mats), "curvature similarity heatmaps"))
    return "".join(parts) + "</section>"


def _performance(results: Results) -> str:
    perf, env = results.performance, results.environment
    peaks = [("host (peak RSS)", perf.peak_host_mem_bytes, env.host_memory_bytes)]
    if perf.peak_gpu_mem_bytes:
        peaks.append(("GPU (peak allocated)", perf.peak_gpu_mem_bytes, env.gpu_memory_bytes))
    cs = perf.phase_seconds.get("curvature_solve")
    split = curvature_solve_split(perf) if cs is not None else {}
    note = ("" if cs is None else
            f"The curvature_solve phase ({fmt_seconds(cs)}) holds "
            + ", ".join(f"{name} {fmt_seconds(s)}" for name, s in split.items())
            + " (solves summed over modules; the rest builds curvature rows and moves data). The diagnostics "
            f"(unprojected comparison, curvature similarity: {fmt_seconds(perf.diagnostics_seconds)}) run "
            "interleaved with the solves, since they need each module's factors"
            + (", and are booked as their own phase." if "diagnostics" in perf.phase_seconds else "."))
    resumed = resumed_note(results)
    return ('<section id="performance"><h2>Performance</h2>'
            + (f'<p class="note"><b>{_e(resumed.capitalize())}</b>; the hatched bars below are the modules computed '
               'then, with the seconds they took then.</p>' if resumed else "")
            + _img(figures.timeline(perf.phase_seconds, split), "phase timeline")
            + f'<p class="note">{_e(note)}</p>'
            + _img(figures.solve_times(results.modules), "solve seconds per module")
            + _img(figures.memory(peaks), "peak memory") + "</section>")


# ---- the page ----------------------------------------------------------------------------------------------------

def render_html(results: Results, sim: dict[str, np.ndarray], rows: dict | None,
                tokens: list[list[str]] | None) -> str:
    """The page, from the typed results, similarity.npz's arrays and the influence rows (with token texts)."""
    figs, hm = heatmap_data(sim)
    n = len(sim["prompt_index"])
    toks = token_data(results, rows, tokens) if rows is not None and len(rows["response_index"]) else None
    data = {"n": n, "heatmap": hm, "tokens": toks,
            "response_id": [str(x) for x in rows["response_id"]] if rows else None,
            "prompt_index": np.asarray(sim["prompt_index"]).tolist(),
            "accepted": np.asarray(sim["accepted"], dtype=bool).tolist(), "similarity": results.similarity.as_json(),
            "contributions": [{"name": m.name, **(m.contribution.as_json() if m.contribution else {})}
                              for m in results.modules]}
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    body = "".join([_verdict(results), _glance(results, rows, tokens), _heatmaps(figs, hm["aggregated"], n),
                    _distributions(results, sim), _where(results), _tokens(results, rows, tokens, toks),
                    _diagnostics(results), _performance(results)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>influence-job report · '
            f'{_e(results.model)}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>{body}"
            f'<script type="application/json" id="report-data">{payload}</script><script>{SCRIPT}</script>'
            "</body></html>\n")
